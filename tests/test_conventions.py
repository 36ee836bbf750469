"""One convention for every command (README, "Conventions"): a table of command x format x
output checks what each prints.

- `--format text|json|jsonl`; text is the default (embed's is jsonl). json is ONE document:
  an array of one record per input for commands that read texts (extra records, such as
  score's total, carry `"index": null`), one object for commands about one model (info,
  export-onnx). jsonl is the same records, one object per line.
- Every output ends with a newline; json and jsonl end with exactly one.
- `-o PATH` writes exactly the bytes stdout would get, and prints nothing on stdout; an existing
  PATH is refused (exit 2) without `--force`, and replaced with it.
- Field names: a per-input record has `index` (0-based, in input order), `source` and
  `token_count`; no record anywhere has a `tokens` key (it meant pieces in one command and a
  count in another).
- The hidden `--json`/`--jsonl` give the same bytes as `--format json`/`--format jsonl`.

export-onnx writes a directory (OUTDIR); what it prints is a summary (text: the validation
figure; json: the manifest), so it takes no `-o` and no jsonl, and it is exported once per
format here because an export is slow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import Result, run_cli, run_in_process

TEXTS = ("Hello world", "The second text.")
EVAL_DATA = Path(__file__).resolve().parent / "data" / "eval"


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]  # "{model}" is replaced by the fixture `model`'s directory
    model: str | None = None  # a conftest fixture
    per_input: bool = True  # records per input text, else one object about one model
    formats: tuple[str, ...] = ("text", "json", "jsonl")
    default: str = "text"  # the format without --format


COMMANDS = [
    Command("tokenize", ("tokenize", *TEXTS)),
    # embed's default stays jsonl: vectors are read by programs (README: embed).
    Command("embed", ("embed", "-m", "{model}", *TEXTS), "tiny_model_dir", default="jsonl"),
    Command("score", ("score", "-m", "{model}", *TEXTS), "tiny_model_dir"),
    Command(
        "generate",
        ("generate", "-m", "{model}", "--greedy", "--max-new-tokens", "2", *TEXTS),
        "tiny_model_dir",
    ),
    Command("info", ("info", "-m", "{model}"), "tiny_onnx_dir", per_input=False),
    Command("classify", ("classify", "-m", "{model}", *TEXTS), "tiny_classifier_dir"),
    # one record per task (two tasks here, as two texts above)
    Command(
        "eval",
        ("eval", "-m", "{model}", "--tasks", "text8,lambada_openai",
         "--data", f"text8={EVAL_DATA / 'text8.txt'}",
         "--data", f"lambada_openai={EVAL_DATA / 'lambada_openai.txt'}"),
        "tiny_model_dir",
    ),  # fmt: skip
]
CASES = [(c, fmt) for c in COMMANDS for fmt in c.formats]


def _args(command: Command, request: pytest.FixtureRequest) -> list[str]:
    model = str(request.getfixturevalue(command.model)) if command.model else ""
    return [model if a == "{model}" else a for a in command.args]


def _ok(result: Result) -> Result:
    assert result.returncode == 0, result.err
    return result


def _keys_anywhere(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys_anywhere(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys_anywhere(v)}
    return set()


def check_records(command: Command, records: list[Any]) -> None:
    """The records of one run follow the field conventions."""
    assert records and all(isinstance(r, dict) for r in records), records
    assert "tokens" not in _keys_anywhere(records), "`tokens` is ids, pieces or token_count"
    if not command.per_input:
        return
    per_input = [r for r in records if r.get("index") is not None]
    assert [r["index"] for r in per_input] == list(range(len(TEXTS))), records
    assert all(r.get("index", None) is None for r in records if r not in per_input)
    for record in per_input:
        assert {"index", "source", "token_count"} <= set(record), sorted(record)
        assert isinstance(record["token_count"], int) and record["token_count"] > 0


def parse(command: Command, fmt: str, out: str) -> list[Any] | None:
    """The records of an output in `fmt` (None for text), checking its framing."""
    assert out.endswith("\n"), repr(out[-80:])
    if fmt == "text":
        assert out.strip(), "no output"
        return None
    assert not out.endswith("\n\n"), repr(out[-80:])
    if fmt == "json":
        document = json.loads(out)  # ONE document
        if command.per_input:
            assert isinstance(document, list), "json is an array of records, even for one"
            return document
        assert isinstance(document, dict), "a command about one model prints one object"
        return [document]
    lines = out.splitlines()
    records = [json.loads(line) for line in lines]  # one object per line
    if not command.per_input:
        assert len(records) == 1
    return records


@pytest.mark.parametrize(("command", "fmt"), CASES, ids=[f"{c.name}-{f}" for c, f in CASES])
def test_format_to_stdout_and_to_a_file(
    command: Command, fmt: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    args = _args(command, request)
    shown = _ok(run_in_process(*args, "--format", fmt))
    records = parse(command, fmt, shown.out)
    if records is not None:
        check_records(command, records)
    target = tmp_path / f"out.{fmt}"
    written = _ok(run_in_process(*args, "--format", fmt, "-o", str(target)))
    assert written.stdout == b"", "with -o, nothing on stdout"
    assert target.read_bytes() == shown.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_the_default_format(command: Command, request: pytest.FixtureRequest) -> None:
    args = _args(command, request)
    default = _ok(run_in_process(*args)).stdout
    assert default == _ok(run_in_process(*args, "--format", command.default)).stdout


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_hidden_json_aliases(command: Command, request: pytest.FixtureRequest) -> None:
    args = _args(command, request)
    for alias, fmt in (("--json", "json"), ("--jsonl", "jsonl")):
        if fmt in command.formats:
            by_alias = _ok(run_in_process(*args, alias)).stdout
            assert by_alias == _ok(run_in_process(*args, "--format", fmt)).stdout, alias


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_output_file_needs_force(
    command: Command, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    args = _args(command, request)
    target = tmp_path / "out.txt"
    target.write_text("keep me\n")
    refused = run_in_process(*args, "-o", str(target))
    assert refused.returncode == 2, refused.err
    assert "already exists" in refused.err and refused.stdout == b""
    assert target.read_text() == "keep me\n"
    _ok(run_in_process(*args, "-o", str(target), "--force"))
    assert target.read_bytes() == _ok(run_in_process(*args)).stdout


def test_every_command_is_in_the_table() -> None:
    from typer.main import get_command

    from gpt2cli.cli import app

    # export-onnx writes a directory (its formats are tested below); serve prints no results
    # (its JSON is HTTP bodies, tested in test_serve.py)
    # finetune writes a model directory (tested in test_finetune.py); batch writes a directory
    # and prints a summary (its formats: tests/test_batch.py).
    expected = {c.name for c in COMMANDS} | {"export-onnx", "serve", "finetune", "batch"}
    assert set(get_command(app).commands) == expected


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_export_onnx_formats(fmt: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    command = Command("export-onnx", (), per_input=False)
    outdir = tmp_path / "export"
    args = ("export-onnx", "-m", str(tiny_model_dir), str(outdir), "--format", fmt)
    result = _ok(run_cli(*args))  # a real process: what it prints depends on its stdout
    assert (outdir / "model.onnx").is_file()
    records = parse(command, fmt, result.out)
    if records is not None:
        check_records(command, records)
