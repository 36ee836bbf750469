"""Bounded time and memory: the tokenize chunker (linear, exact ids), long prompts for generate
and embed (bounded tokenization, early refusal), and generate's fan-out (rows per batch)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpt2cli.inputs import ANY_VOCAB_SPLITS, GPT2_SPLITS, SplitRule, split_chunks
from gpt2cli.tokenizer import GPT2_MAX_TOKEN_BYTES, GPT2Tokenizer, HFTokenizer, _gpt2_ranks

GPT2CLI = str(Path(sys.executable).parent / "gpt2cli")

# Characters around which GPT-2's pre-tokenizer and BPE behave differently: ASCII and Unicode
# whitespace (some of it whitespace to Python only), the contraction quote, letters, digits,
# punctuation, a special token, and non-ASCII letters, numbers and symbols.
ADVERSARIAL = st.sampled_from(
    [" ", " ", "  ", "\n", "\n", "\n\n", "\t", "\r", "\r\n", "\x0b", "\x0c", "\x85", "\xa0",
     "\u3000", "\u2028", "\x1c", "\u200b", "\ufeff", "'", "'s", "'ll", "s", "a", "Z", "1", "42",
     "!", "?!", "<", ">", "|", "<|endoftext|>", "<|endoftext", "🤖", "🤖 ", "é", "e\u0301", "½",
     "²", "数", "ﬁ", "x"]
)
TEXTS = st.lists(ADVERSARIAL, min_size=1, max_size=40).map("".join)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


def _pieces(text: str, sizes: list[int]) -> list[str]:
    """`text` cut at arbitrary points, as the decoder hands it over."""
    pieces, at = [], 0
    for size in sizes:
        pieces.append(text[at : at + size])
        at += size
    return [p for p in [*pieces, text[at:]] if p]


_TOKENIZERS: dict[str, object] = {}


def _tiktoken(parse_special: bool = True) -> GPT2Tokenizer:
    key = f"tiktoken-{parse_special}"
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = GPT2Tokenizer(parse_special=parse_special)
    return _TOKENIZERS[key]  # type: ignore[return-value]


def _check_chunks(tokenizer, rule, text: str, chunk: int, sizes: list[int]) -> None:  # noqa: ANN001
    chunks = list(split_chunks(_pieces(text, sizes), chunk, rule))
    assert "".join(chunks) == text
    assert [i for c in chunks for i in tokenizer.encode(c)] == tokenizer.encode(text), chunks


@PROPERTY
@given(TEXTS, st.integers(1, 12), st.lists(st.integers(1, 9), max_size=8), st.booleans())
@example("x" + " " * 30 + "w", 4, [], True)
@example("x" + "\n" * 31 + "w", 4, [3, 5], True)
@example("🤖 " * 20, 3, [], True)
@example("a\n\n\n\n\n<|endoftext|>\n\n\nb", 2, [1, 1, 1], True)
@example("ab<|endoftext|>12", 1, [], True)
def test_chunks_encode_as_the_whole_text_tiktoken(text, chunk, sizes, parse_special):
    for rule in (GPT2_SPLITS, ANY_VOCAB_SPLITS):
        _check_chunks(_tiktoken(parse_special), rule, text, chunk, sizes)


@pytest.fixture(scope="module")
def hf_tokenizer(gpt2_vocab_dir: Path) -> HFTokenizer:
    """The model-side tokenizer (the `tokenizers` library) on GPT-2's vocab.json/merges.txt."""
    return HFTokenizer.from_dir(gpt2_vocab_dir)


@PROPERTY
@given(TEXTS, st.integers(1, 12), st.lists(st.integers(1, 9), max_size=8))
@example("x" + "\n" * 31 + "w", 4, [3, 5])
@example("a \n\n\n\n <|endoftext|> \n\n\nb", 2, [])
def test_chunks_encode_as_the_whole_text_hf(hf_tokenizer, text, chunk, sizes):
    rule = hf_tokenizer.split_rule()
    assert rule is not None
    for candidate in (rule, ANY_VOCAB_SPLITS):
        _check_chunks(hf_tokenizer, candidate, text, chunk, sizes)


def test_split_rules_match_the_vocabularies(hf_tokenizer):
    ranks = _gpt2_ranks()
    assert SplitRule.from_vocab(ranks, ("<|endoftext|>",)) == GPT2_SPLITS
    assert hf_tokenizer.split_rule() == GPT2_SPLITS
    assert max(map(len, ranks)) == GPT2_MAX_TOKEN_BYTES == hf_tokenizer.max_token_bytes
    # A vocabulary with runs of spaces: no split between two spaces, no pairing of them.
    rule = SplitRule.from_vocab([b" ", b"  ", b"    ", b"\n", b"a"])
    assert "  " in rule.joinable and rule.paired == ""
    assert SplitRule.from_vocab([b"\n", b"\n\n", b".\n\n"]).paired == ""


def test_other_pre_tokenizers_are_not_split(gpt2_vocab_dir: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(models.BPE.from_file(str(gpt2_vocab_dir / "vocab.json"),
                                         str(gpt2_vocab_dir / "merges.txt")))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert HFTokenizer(raw).split_rule() is None
    assert list(split_chunks(["a b " * 100], 8, None)) == ["a b " * 100]


# Long whitespace runs overflow tiktoken's regex stack when whole (item 6): compare chunked
# ids with the `tokenizers` library on the whole text, and time the chunker.
LONG_INPUTS = {
    "x and spaces": "x" + " " * 2_000_000,
    "x, spaces, w": "x" + " " * 2_000_000 + "w",
    "robots and spaces": "\N{ROBOT FACE} " * 700_000,
    "x, newlines, w": "x" + "\n" * 2_000_001 + "w",
    "x, CRLF lines": "x" + "\r\n" * 1_000_000 + "y",
    "no-break spaces": "x" + "\xa0" * 1_000_000 + "w",
}


@pytest.mark.parametrize("name", list(LONG_INPUTS))
def test_long_runs_chunk_in_linear_time(name, hf_tokenizer):
    text = LONG_INPUTS[name]
    pieces = _pieces(text, [1 << 20] * (len(text) >> 20))
    started = time.perf_counter()
    chunks = list(split_chunks(pieces, 1 << 16, GPT2_SPLITS))
    assert time.perf_counter() - started < 3.0  # 2 MB: ~0.1 s here; quadratic took 24-43 s
    assert "".join(chunks) == text
    ids = [i for c in chunks for i in _tiktoken().encode(c)]
    assert ids == hf_tokenizer.encode(text)


# --- generate's fan-out: rows per batch, output independent of batching -----------------------


def _gpt2cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([GPT2CLI, *args], input=stdin, capture_output=True, timeout=300)


def test_sequences_do_not_depend_on_the_batch_size(tiny_onnx_dir: Path):
    """A prompt's 20 sequences split over batches of 4 rows give the same bytes as one batch."""
    args = ("generate", "-m", str(tiny_onnx_dir), "--seed", "11", "--num-return-sequences", "20",
            "--do-sample", "--max-new-tokens", "4", "--format", "jsonl", "Hello",
            "Once upon a time")
    outputs = {size: _gpt2cli(*args, "-b", size) for size in ("4", "7", "32")}
    assert all(r.returncode == 0 and r.stderr == b"" for r in outputs.values())
    assert outputs["4"].stdout == outputs["7"].stdout == outputs["32"].stdout
    records = [json.loads(line) for line in outputs["4"].stdout.splitlines()]
    assert [(r["index"], len(r["sequences"])) for r in records] == [(0, 20), (1, 20)]


def test_rows_per_batch(tiny_onnx_dir: Path):
    from gpt2cli.decoding import GenerationParams, Prompt, plan_rows

    tokenizer = HFTokenizer.from_dir(tiny_onnx_dir)
    params = GenerationParams(do_sample=True, num_return_sequences=5, max_new_tokens=3)
    prompts = [Prompt("a"), Prompt("b c"), Prompt("d")]
    batches = list(plan_rows(tokenizer, prompts, params, 1024, rows=4))
    assert [len(b) for b in batches] == [4, 4, 4, 3]
    flat = [(s.prompt_index, s.sequence_index) for b in batches for s in b]
    assert flat == [(p, s) for p in range(3) for s in range(5)]


# --- long prompts: bounded tokenization, peak RSS --------------------------------------------

GNU_TIME = Path("/usr/bin/time")


def _peak_rss_mb(args: list[str], stdin_path: Path) -> tuple[int, int, float]:
    """Exit code, peak RSS (MB, GNU time) and seconds of the console script on a file's bytes."""
    rss = stdin_path.with_suffix(".rss")
    started = time.monotonic()
    with open(stdin_path, "rb") as stdin:
        proc = subprocess.run([str(GNU_TIME), "-f", "%M", "-o", str(rss), GPT2CLI, *args],
                              stdin=stdin, capture_output=True, timeout=600)
    seconds = time.monotonic() - started
    return proc.returncode, int(rss.read_text().split()[-1]) // 1024, seconds


@pytest.mark.skipif(not GNU_TIME.exists(), reason="needs GNU time for the peak RSS")
def test_long_prompt_memory_scales_with_the_text_not_its_tokens(tiny_onnx_dir, tmp_path):
    """Refusing a long prompt reads it (about 2 bytes of RSS per input byte, the text in
    memory) but encodes only its first chunk: 5 MB and 20 MB differ by the text alone. Measured
    by hand: 100 MB stdin refused by generate in 0.9 s at 319 MB peak RSS (embed: 244 MB), kept
    as its tail by --truncate left in 20 s at 415 MB; before, 20 MB took 3.1 GB and 51 s."""
    peaks = {}
    for mb in (5, 20):
        path = tmp_path / f"{mb}.txt"
        path.write_bytes((b"hello world " * (mb * 100_000))[: mb * 1_000_000])
        code, peaks[mb], seconds = _peak_rss_mb(
            ["generate", "-m", str(tiny_onnx_dir), "--max-new-tokens", "4"], path
        )
        assert code == 2 and seconds < 30
    # Tokens would cost ~150 bytes each per input byte; the text alone costs ~2.
    assert peaks[20] - peaks[5] < 3 * 15, peaks
    assert peaks[20] < 500, peaks
