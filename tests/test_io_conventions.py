"""The output convention for tokenize and embed: every --format, to stdout and to -o, gives the
same bytes; json is one array of per-input records, jsonl one record per line, and records use
only the shared field names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clirun import run_in_process

FIELDS = {
    "index", "source", "text", "ids", "pieces", "piece_bytes", "offsets", "token_count",
    "truncated_tokens", "embedding",
}  # fmt: skip
TEXTS = ("Hello world", "naïve 🤖")

TOKENIZE = {
    "ids": ("tokenize",),
    "pieces and offsets": ("tokenize", "--tokens", "--offsets"),
    "count": ("tokenize", "--count"),
    "truncate": ("tokenize", "--truncate", "1"),
}


def _check_records(fmt: str, out: bytes, count: int) -> None:
    if fmt == "json":
        records = json.loads(out)
        assert isinstance(records, list)
    elif fmt == "jsonl":
        records = [json.loads(line) for line in out.decode().splitlines()]
    else:
        return
    assert [r["index"] for r in records] == list(range(count))
    for record in records:
        assert set(record) <= FIELDS and "token_count" in record
        assert "tokens" not in record and "count" not in record and "truncated" not in record


def _same_through_o(args: tuple[str, ...], tmp_path: Path, fmt: str) -> bytes:
    """The command's stdout; -o PATH gets the same bytes and prints nothing."""
    on_stdout = run_in_process(*args, "--format", fmt, *TEXTS)
    assert on_stdout.returncode == 0, on_stdout.err
    target = tmp_path / f"out.{fmt}"
    to_file = run_in_process(*args, "--format", fmt, "-o", str(target), *TEXTS)
    assert to_file.returncode == 0, to_file.err
    assert to_file.stdout == b"" and target.read_bytes() == on_stdout.stdout
    return on_stdout.stdout


@pytest.mark.parametrize("fmt", ["text", "json", "jsonl"])
@pytest.mark.parametrize("mode", list(TOKENIZE))
def test_tokenize_formats_and_output_file(tmp_path: Path, mode: str, fmt: str) -> None:
    args = TOKENIZE[mode]
    if mode == "pieces and offsets" and fmt == "text":
        args = ("tokenize", "--tokens")  # the two together need a JSON format
    out = _same_through_o(args, tmp_path, fmt)
    _check_records(fmt, out, len(TEXTS))


@pytest.mark.parametrize("fmt", ["text", "json", "jsonl", "npy"])
def test_embed_formats_and_output_file(tiny_model_dir: Path, tmp_path: Path, fmt: str) -> None:
    args = ("embed", "-m", str(tiny_model_dir))
    if fmt == "npy":
        target = tmp_path / "v.npy"
        result = run_in_process(*args, "--format", fmt, "-o", str(target), *TEXTS)
        assert result.returncode == 0 and result.stdout == b""
        assert target.read_bytes().startswith(b"\x93NUMPY")
        return
    out = _same_through_o(args, tmp_path, fmt)
    _check_records(fmt, out, len(TEXTS))
    if fmt == "text":
        assert len(out.decode().splitlines()) == len(TEXTS)
