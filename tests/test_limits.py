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
