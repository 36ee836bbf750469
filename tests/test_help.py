"""Help screens and usage errors: plain metavars (no Typer `<int>`, `<list[str]>`), the default
model shown, nothing heavy imported to print help, and unknown options that suggest the option
meant (a synonym from llama.cpp, OpenAI or transformers, an abbreviation, a near spelling)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import assert_one_line_error, run_in_process

ROOT = Path(__file__).resolve().parent.parent

# Renders the root's and every command's --help (200 columns) in one fresh process, then lists
# the heavy modules that printing them imported.
HELP_SCRIPT = """
import contextlib, io, json, sys
from typer.main import get_command
from gpt2cli import cli
names = [""] + list(get_command(cli.app).commands)
screens = {}
for name in names:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.run([name, "--help"] if name else ["--help"])
    screens[name] = (code, out.getvalue())
heavy = {"torch", "transformers", "onnxruntime", "optimum"}
print(json.dumps({"screens": screens,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}))
"""

# A Python type as Typer shows it: <bool>, <int>, <list[str]>, <auto|torch|onnx>, <int range>.
# `<|endoftext|>` is text, not a metavar.
TYPE_METAVAR = re.compile(r"<(?!\|endoftext\|>)[^<>\n]*>")
# What a metavar may be: none (a flag), UPPER words (N, TEXT, PATH, ID=BIAS), or [a|b|c] choices.
PLAIN_METAVAR = re.compile(r"(|[A-Z][A-Z0-9_=:,.-]*(\.\.\.)?|\[[a-z0-9_.-]+(\|[a-z0-9_.-]+)*\])")


@pytest.fixture(scope="module")
def help_run() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _app_commands() -> dict[str, Any]:
    from typer.main import get_command

    from gpt2cli.cli import app

    return {"": get_command(app), **get_command(app).commands}


def test_every_help_screen_renders(help_run: dict[str, Any]) -> None:
    screens = help_run["screens"]
    assert set(screens) == set(_app_commands())
    for name, (code, text) in screens.items():
        assert code == 0, name
        assert f"Usage: gpt2cli {name}".rstrip() in text, name


def test_no_python_type_metavars_in_help(help_run: dict[str, Any]) -> None:
    found = {
        name: TYPE_METAVAR.findall(text)
        for name, (_, text) in help_run["screens"].items()
        if TYPE_METAVAR.search(text)
    }
    assert not found, found


def test_every_parameter_has_a_plain_metavar() -> None:
    for name, command in _app_commands().items():
        from typer import Context

        ctx = Context(command)
        for param in command.get_params(ctx):
            metavar = param.metavar if param.metavar is not None else "<unset>"
            assert PLAIN_METAVAR.fullmatch(metavar), (name, param.name, metavar)
            if getattr(param, "is_flag", False):
                assert metavar == "", (name, param.name)


def test_help_shows_the_default_model(help_run: dict[str, Any]) -> None:
    screens = help_run["screens"]
    with_model = [name for name in ("generate", "embed", "score", "info") if name in screens]
    assert len(with_model) >= 3
    for name in with_model:
        assert "[default: gpt2]" in screens[name][1], name


def test_help_imports_no_heavy_modules(help_run: dict[str, Any]) -> None:
    # tests/test_tokenize.py checks the root's --help alone; this covers every command's.
    assert help_run["heavy"] == []


def test_bracketed_help_text_is_shown_literally(help_run: dict[str, Any]) -> None:
    # Typer reads help as Rich markup, where "[default: gpt2]" was a (swallowed) style tag.
    from gpt2cli.cli import _escape_markup

    assert _escape_markup("spans [start, end]") == "spans \\[start, end]"
    assert _escape_markup(_escape_markup("[x]")) == "\\[x]"


# ------------------------------------------------------------------------- unknown options

# (arguments, what the one error line says after "No such option: OPTION"). None: nothing more.
TYPOS: list[tuple[tuple[str, ...], str | None]] = [
    (("generate", "--max-tokens", "3"), "(did you mean --max-new-tokens?)"),  # OpenAI
    (("generate", "--maxnewtokens", "3"), "(did you mean --max-new-tokens?)"),
    (("generate", "--max-new", "3"), "(did you mean --max-new-tokens?)"),  # abbreviated
    (("generate", "--repeat-penalty", "1.1"), "(did you mean --repetition-penalty?)"),  # llama.cpp
    (("generate", "--seeed", "1"), "(did you mean --seed?)"),
    (("generate", "--tmp", "0.5"), "(did you mean --temperature?)"),
    (("generate", "--mix-length", "3"), "(did you mean --min-length or --max-length?)"),
    (("score", "--ctx-len", "8"), r"\(did you mean (--ctx|--ctx-size)\?\)"),
    (("score", "--per-tokn"), "(did you mean --per-token?)"),
    (("embed", "--ouput", "x.json"), "(did you mean --output?)"),
    (("embed", "--normalise"), "(did you mean --normalize?)"),  # British spelling
    (("generate", "--jsn"), "(did you mean --format json"),
    (("tokenize", "--temperature", "1"), "(--temperature is an option of generate, batch)"),
    (("tokenize", "--max-new-tokens", "1"), "(--max-new-tokens is an option of generate, batch)"),
    (("--verison",), "(did you mean --version?)"),
    (("generate", "--hepl"), "(did you mean --help?)"),
    (("generate", "--frobnicate"), None),
    (("tokenize", "--zzz"), None),
]


@pytest.mark.parametrize(("args", "hint"), TYPOS, ids=[" ".join(a) for a, _ in TYPOS])
def test_unknown_option_suggests_the_option_meant(args: tuple[str, ...], hint: str | None) -> None:
    line = assert_one_line_error(run_in_process(*args, "Hello"), 2)
    typo = next(a for a in args if a.startswith("-"))
    prefix = f"gpt2cli: error: No such option: {typo}"
    assert line.startswith(prefix), line
    rest = line.removeprefix(prefix).strip()
    if hint is None:
        assert rest == "", line
    elif hint.startswith("\\("):
        assert re.fullmatch(hint, rest), line
    else:
        assert rest.startswith(hint), line
    assert "--stop" not in rest and "--stream" not in rest, line  # the old difflib guesses


def test_no_suggestion_is_a_hidden_option_or_help_for_a_near_miss() -> None:
    # Click's own difflib over "--"-prefixed names suggested --stop for --json, --help for --temp.
    from gpt2cli.cli import suggest_option

    commands = _app_commands()
    for typo in ("--json", "--jsonl", "--temp", "--n-predict", "--ctx-size"):
        hint = suggest_option(typo, commands["generate"], commands[""]) or ""
        assert "--help" not in hint and "--stop" not in hint, (typo, hint)


def test_underscore_spellings_are_the_dashed_options() -> None:
    # transformers' names with underscores (HfArgumentParser accepts both): --top_p is --top-p.
    result = run_in_process("tokenize", "--no_parse_special", "<|endoftext|>")
    assert result.returncode == 0, result.err
    assert result.out != "50256\n"
    line = assert_one_line_error(run_in_process("generate", "--top_p", "nope", "Hi"), 2)
    assert "'--top-p'" in line
