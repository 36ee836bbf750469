"""Property tests for the parsers that see untrusted input: whatever comes in, they return a
correct result or raise the tool's own clean errors (CliError), nothing else.

Case counts: `pytest tests/test_fuzz.py --hypothesis-show-statistics`.
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpt2cli import inputs
from gpt2cli.commands.tokenize import parse_ids
from gpt2cli.errors import CliError, InputError
from gpt2cli.request_formats import PARAMETER_TYPES, parse_request

FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Bytes that exercise UTF-8 edge cases: ASCII, whitespace, NUL, continuation bytes, lead bytes of
# 2-, 3- and 4-byte sequences, bytes never valid in UTF-8, and whole valid multi-byte characters.
UTF8_PIECES = st.one_of(
    st.sampled_from(
        [
            b"a",
            b" ",
            b"\n",
            b"\r",
            b"\t",
            b"\x00",
            b"\x80",
            b"\xbf",
            b"\xc3",
            b"\xe2",
            b"\xf0",
            b"\xc0",
            b"\xf5",
            b"\xff",
            b"\xed\xa0\x80",
        ]
    ),
    st.text(min_size=1, max_size=3).map(str.encode),
)
RAW_BYTES = st.one_of(st.binary(max_size=64), st.lists(UTF8_PIECES, max_size=24).map(b"".join))


@contextmanager
def stdin_bytes(data: bytes) -> Iterator[None]:
    """Swap sys.stdin for a pipe-like stream of `data` (not a TTY)."""
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    try:
        yield
    finally:
        sys.stdin = saved


@contextmanager
def read_block(size: int) -> Iterator[None]:
    """Read in blocks of `size` bytes, so that characters and errors straddle block edges."""
    saved = inputs.READ_BLOCK
    inputs.READ_BLOCK = size
    try:
        yield
    finally:
        inputs.READ_BLOCK = saved


def _first_utf8_error(data: bytes) -> int | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return None


@FUZZ
@given(data=RAW_BYTES, block=st.integers(1, 9), replace=st.booleans())
@example(data="hello€".encode()[:-1], block=4, replace=False)
def test_decoding_is_exact_or_a_clean_error(data: bytes, block: int, replace: bool) -> None:
    source = inputs.Source("<stdin>", path=inputs.STDIN)
    try:
        with stdin_bytes(data), read_block(block):
            text = "".join(inputs.iter_decoded(source, replace_invalid=replace))
    except InputError as exc:
        offset = int(re.search(r"byte offset (\d+)", exc.message).group(1))
        if "NUL byte" in exc.message:
            assert data[offset] == 0
        else:
            assert not replace
            assert offset == _first_utf8_error(data)
            assert b"\x00" not in data[: offset + 1]
        return
    assert b"\x00" not in data
    assert text == data.decode("utf-8", errors="replace" if replace else "strict")


@FUZZ
@given(data=RAW_BYTES, lines=st.booleans(), block=st.integers(1, 9))
def test_texts_from_stdin_are_exact_or_a_clean_error(data: bytes, lines: bool, block: int) -> None:
    try:
        with stdin_bytes(data), read_block(block):
            texts = list(inputs.iter_texts(None, ["-"], lines=lines, replace_invalid=True))
    except InputError:
        decoded = data.decode("utf-8", errors="replace")
        assert "\x00" in decoded or not decoded.strip()
        return
    decoded = data.decode("utf-8", errors="replace")
    if lines:
        expected = [line.removesuffix("\r") for line in decoded.split("\n")]
        assert [t.text for t in texts] == [line for line in expected if line.strip()]
        assert all(re.fullmatch(r"<stdin>:\d+", t.source) for t in texts)
    else:
        assert [t.text for t in texts] == [decoded]


@FUZZ
@given(text=st.text(), cuts=st.lists(st.integers(0, 200), max_size=8))
def test_lines_do_not_depend_on_how_the_text_arrives(text: str, cuts: list[int]) -> None:
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    whole = [line for _, line in inputs.iter_lines([text])]
    assert [line for _, line in inputs.iter_lines(pieces)] == whole
    assert "".join(f"{line}\n" for line in whole) == "".join(
        f"{line.removesuffix(chr(13))}\n" for line in text.split("\n")[: len(whole)]
    )


@FUZZ
@given(
    texts=st.lists(st.text(max_size=20), max_size=4),
    files=st.lists(st.sampled_from(["-", "/nonexistent/x", "/", "/dev/null"]), max_size=3),
)
def test_sources_resolve_or_fail_cleanly(texts: list[str], files: list[str]) -> None:
    try:
        with stdin_bytes(b"piped text"):
            got = inputs.read_texts(texts, files)
    except InputError:
        return
    assert len(got) == len(texts) + len(files) or (not texts and not files and len(got) == 1)


# --------------------------------------------------------------------- token ids (--decode)

ID_TEXT = st.one_of(
    st.text(),
    st.text(alphabet="0123456789 ,\n\t-+[]e.", max_size=40),
    st.lists(st.integers(), max_size=6).map(str),
    st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=3), st.none()), max_size=4).map(
        repr
    ),
)


@FUZZ
@given(body=ID_TEXT)
def test_token_id_parser_returns_ints_or_a_clean_error(body: str) -> None:
    try:
        ids = parse_ids(inputs.Text(body, "<arg>"))
    except CliError as exc:
        assert exc.message.startswith("<arg>: expected token ids")
        return
    assert all(type(i) is int for i in ids)


def test_token_id_parser_rejects_deeply_nested_json_cleanly() -> None:
    with pytest.raises(CliError):
        parse_ids(inputs.Text("[" * 100_000, "<arg>"))


# ------------------------------------------------------------------ generate --request bodies

# Integers stay within 64 bits and nesting stays shallow here: the xfail tests below cover the
# huge-number and deep-nesting cases, which the request parser does not handle cleanly yet.
FIELD_NAMES = st.sampled_from(
    ["inputs", "input_string", "input_data", "parameters", "params", *PARAMETER_TYPES]
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(),
    st.text(max_size=12),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(FIELD_NAMES, st.text(max_size=8)), inner, max_size=4)
    ),
    max_leaves=16,
)
PROMPTS = st.one_of(st.lists(st.text(max_size=12), max_size=3), JSON_VALUES)
PARAMETERS = st.dictionaries(
    st.one_of(st.sampled_from(sorted(PARAMETER_TYPES)), st.text(max_size=8)),
    JSON_VALUES,
    max_size=4,
)


def _check_request(body: str) -> None:
    """Parse `body`; a parsed request must hold what the formats promise."""
    try:
        request = parse_request(body, "req.json")
    except CliError as exc:
        # (Control characters it quotes from the body are escaped by cli.run: one stderr line.)
        assert exc.message.startswith("req.json: ")
        return
    assert request.shape in ("A", "B", "HF")
    assert request.prompts and all(isinstance(p, str) and p.strip() for p in request.prompts)
    for name, value in request.parameters.items():
        expected = PARAMETER_TYPES[name]
        if name == "stop":
            assert isinstance(value, tuple) and all(isinstance(s, str) for s in value)
        else:
            assert type(value) is expected, (name, value)


@FUZZ
@given(body=st.one_of(st.text(), JSON_VALUES.map(json.dumps)))
def test_any_request_body_parses_or_fails_cleanly(body: str) -> None:
    _check_request(body)


@FUZZ
@given(shape=st.sampled_from("ABH"), prompts=PROMPTS, parameters=PARAMETERS, extra=JSON_VALUES)
def test_requests_of_every_shape_parse_or_fail_cleanly(
    shape: str, prompts: object, parameters: dict, extra: object
) -> None:
    if shape == "A":
        body = {"inputs": {"input_string": prompts}, "parameters": parameters}
    elif shape == "H":  # the Inference API's: a string or a list of strings
        body = {"inputs": prompts, "parameters": parameters}
    else:
        body = {"input_data": prompts, "params": parameters}
    if isinstance(extra, dict):
        body.update(extra)  # stray or clashing top-level fields
    _check_request(json.dumps(body))


@FUZZ
@given(data=st.data(), shape=st.sampled_from("AB"))
def test_mangled_requests_parse_or_fail_cleanly(data: st.DataObject, shape: str) -> None:
    body = json.dumps(
        {"inputs": {"input_string": ["Once upon a time,"]}, "parameters": {"max_length": 30}}
        if shape == "A"
        else {"input_data": ["Long ago"], "params": {"top_p": 0.9, "do_sample": True}}
    )
    at = data.draw(st.integers(0, len(body)))
    cut = data.draw(st.integers(0, 3))
    insert = data.draw(st.text(alphabet='{}[]",:0123456789.-etruflasn ', max_size=3))
    _check_request(body[:at] + insert + body[at + cut :])


def test_request_with_a_huge_number_for_a_float_parameter_fails_cleanly() -> None:
    with pytest.raises(CliError):
        parse_request('{"input_data": ["a"], "params": {"temperature": 1' + "0" * 400 + "}}")


def test_request_with_a_5000_digit_integer_fails_cleanly() -> None:
    with pytest.raises(CliError):
        parse_request('{"input_data": ["a"], "params": {"top_k": 1' + "0" * 5000 + "}}")


def test_deeply_nested_request_fails_cleanly() -> None:
    with pytest.raises(CliError):
        parse_request('{"input_data": ' + "[" * 100_000 + "]" * 100_000 + "}")
