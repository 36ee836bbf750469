"""The README's examples run: every `$ ...` line inside a fenced code block that contains `gpt2cli`
is executed against the test models, and must exit 0 without an error line; where the README
shows output under the command, ours must have the same shape.

How a README line becomes a test run (all of it explicit below):
- `$ CMD \\` continues on the next line (joined, as the shell would).
- Models: the value of `-m/--model` (and `--kl-base`), and export-onnx's MODEL, is looked up in
  MODELS (Hub ids and the README's export names -> a test model fixture). A name missing there
  fails the test: add it to MODELS.
- REWRITES change what the test models can't do as written (the tiny models have 2 layers).
- The command runs in a fresh temporary directory holding FILES (the inputs the examples read;
  `../shared/...` lands beside it). Lines with no shell syntax but `< FILE` and `> FILE` run
  in this process (fast); lines with pipes or `$` run through `bash -c` with `gpt2cli` (this
  tree's) on PATH.
- A line that can't run here ends with a marker comment, `# needs: network` (or `gpu`), and is
  skipped; other trailing `# ...` comments are just comments.
- Output shape: a JSON line or block is compared by its keys; for commands that load no model
  (tokenize) every shown line must match with numbers masked; for model commands (whose text
  depends on the weights) the first line's tab-separated fields must match as numbers or text.
  A shown line `...` means "more lines follow": only the lines above it are compared.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.clirun import run_in_process

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# README model name -> conftest fixture that stands in for it.
MODELS = {
    "gpt2": "tiny_model_dir",
    "distilgpt2": "tiny_model_dir",
    "gpt2-medium": "tiny_model_dir",
    "gpt2-large": "tiny_model_dir",
    "gpt2-xl": "tiny_model_dir",
    "openai-community/gpt2": "tiny_model_dir",
    "gpt2-onnx": "tiny_onnx_dir",
    "model-onnx": "tiny_onnx_dir",
    "gpt2-int8": "tiny_onnx_int8_dir",
    "emotion-gpt2": "tiny_classifier_dir",
}
# (README text, what runs instead, why).
REWRITES = [
    ("--layer 6", "--layer 1", "the test models have 2 layers"),
]
MARKER = re.compile(r"#\s*needs:\s*(?P<needs>[\w ,-]+?)\s*$")
AVAILABLE = {"torch", "export"}  # what `# needs:` may name that the test environment has

WIKI = (
    " = Robert Boulter = \n\n Robert Boulter is an English film , television and theatre actor . "
    "He had a guest @-@ starring role on the television series The Bill in 2000 . \n"
)
# Inputs the README's examples read, by the path they use (relative to the working directory).
FILES = {
    "prompt.txt": "Once upon a time, there was a lighthouse keeper.\n",
    "prompts.txt": "Hello, I'm a language model,\nOnce upon a time,\n",
    "notes.txt": "Meeting notes: the export works.\nNext: score the int8 model.\n",
    "a.txt": "The quick brown fox jumps over the lazy dog.\n",
    "b.txt": "Hello world\n",
    "lines.txt": "The first sentence.\nThe second sentence.\n",
    "sentences.txt": "The cat sat on the mat.\nMat the on sat cat the.\nA fine day.\n",
    "long.txt": "A text longer than the model's context. " * 300,
    "essay.txt": "Language models assign probabilities to text. " * 8 + "\n",
    "suspicious.txt": "This text may or may not have been written by a model.\n",
    "lambada.jsonl": '{"context": "The capital of France is", "continuation": " Paris"}\n'
    '{"context": "One, two, three,", "continuation": " four"}\n',
    "pairs.jsonl": '{"context": "The capital of France is", "continuation": " Paris"}\n',
    "request.json": '{"inputs": "Hello", "parameters": {"max_new_tokens": 5}}\n',
    "../shared/data/wikitext-2-raw-test.txt": WIKI * 4,
}

MODEL_VALUE = re.compile(
    r"(?P<flag>(?:^|\s)(?:-m|--model|--kl-base)(?:\s+|=))(?P<name>[^\s'\"|<>;]+)"
)
EXPORT_SOURCE = re.compile(r"(?P<flag>\bexport-onnx\s+)(?P<name>[^\s'\"|<>;-][^\s'\"|<>;]*)")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
SHELL_SYNTAX = set("|&;<>()`$")


@dataclass
class Example:
    line: int  # 1-based line number in README.md
    command: str  # without the "$ ", continuation lines joined
    output: list[str] = field(default_factory=list)  # the lines shown under it

    @property
    def needs(self) -> set[str]:
        found = MARKER.search(self.command)
        return set(re.split(r"[,\s]+", found["needs"])) if found else set()

    @property
    def uses_model(self) -> bool:
        return bool(MODEL_VALUE.search(self.command) or EXPORT_SOURCE.search(self.command))


def examples(text: str) -> list[Example]:
    """The `$ ` lines that run gpt2cli, in fenced code blocks, with the output shown under each."""
    found: list[Example] = []
    current: Example | None = None
    in_block = False
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        raw = lines[index]
        index += 1
        if raw.lstrip().startswith("```"):
            in_block, current = not in_block, None
        elif in_block and raw.startswith("$ "):
            number, command = index, raw[2:]
            while command.endswith("\\") and index < len(lines):
                command = command[:-1].rstrip() + " " + lines[index].strip()
                index += 1
            current = Example(number, command.strip())
            if "gpt2cli" in command:
                found.append(current)
        elif in_block and current is not None and raw.strip():
            current.output.append(raw)
    return found


README_EXAMPLES = examples(README.read_text(encoding="utf-8"))


def _prepare(example: Example, request: pytest.FixtureRequest) -> str:
    """The command with test models and rewrites in place."""
    command = example.command
    for old, new, _why in REWRITES:
        command = command.replace(old, new)

    def model(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in MODELS:
            pytest.fail(f"README:{example.line}: no test model for {name!r}: add it to MODELS")
        return match["flag"] + shlex.quote(str(request.getfixturevalue(MODELS[name])))

    command = MODEL_VALUE.sub(model, command)
    return EXPORT_SOURCE.sub(model, command)


def _write_files(work: Path) -> None:
    for name, content in FILES.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")


@dataclass
class InProcess:
    """A command line that needs no shell: its arguments and any `< FILE` / `> FILE`."""

    args: list[str]
    stdin: str | None = None
    stdout: str | None = None


def in_process(command: str) -> InProcess | None:
    """How to run a command line in this process, or None when it needs bash (pipes, `$`)."""
    if "$" in command or "`" in command:
        return None
    lexer = shlex.shlex(command, posix=True, punctuation_chars="|&;<>()")
    lexer.whitespace_split = True
    words = list(lexer)  # a trailing `# comment` is dropped
    if not words or words[0] != "gpt2cli":
        return None
    plan = InProcess([])
    rest = iter(words[1:])
    for word in rest:
        if word in ("<", ">"):
            target = next(rest, None)
            if target is None or set(target) <= SHELL_SYNTAX:
                return None
            setattr(plan, "stdin" if word == "<" else "stdout", target)
        elif word and set(word) <= SHELL_SYNTAX:
            return None
        else:
            plan.args.append(word)
    return plan


def _run(command: str, work: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    plan = in_process(command)
    if plan is not None:
        monkeypatch.chdir(work)
        stdin = (work / plan.stdin).read_bytes() if plan.stdin else None
        result = run_in_process(*plan.args, input=stdin)
        if plan.stdout:
            (work / plan.stdout).write_bytes(result.stdout)
            return result.returncode, "", result.err
        return result.returncode, result.out, result.err
    bin_dir = work.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "gpt2cli"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m gpt2cli "$@"\n')
    script.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "NO_COLOR": "1",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        ["bash", "-c", command],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _keys(value: object) -> tuple[str, list[str]] | None:
    if isinstance(value, dict):
        return "object", sorted(value)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "array", sorted(value[0])
    return None


def shape(line: str, uses_model: bool) -> object:
    """What must agree between a shown output line and ours."""
    keys = _keys(_json(line))
    if keys is not None:
        return keys
    if uses_model:
        return tuple("0" if NUMBER.fullmatch(f.strip()) else "a" for f in line.split("\t"))
    return NUMBER.sub("0", line)


def check_output(example: Example, out: str) -> None:
    shown = example.output
    if not shown:
        return
    block = _keys(_json("\n".join(shown)))
    if block is not None and len(shown) > 1:  # a pretty-printed JSON document
        assert _keys(_json(out)) == block, out
        return
    ours = out.splitlines()
    compared = shown[: shown.index("...")] if "..." in shown else shown
    if example.uses_model:
        compared = compared[:1]
    elif "..." not in shown:
        assert len(ours) == len(shown), (shown, ours)
    assert len(ours) >= len(compared), (shown, ours)
    for theirs, mine in zip(compared, ours, strict=False):
        assert shape(mine, example.uses_model) == shape(theirs, example.uses_model), (theirs, mine)


@pytest.mark.parametrize(
    "example", README_EXAMPLES, ids=[f"README:{e.line} {e.command[:60]}" for e in README_EXAMPLES]
)
def test_readme_example_runs(
    example: Example,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = example.needs - AVAILABLE
    if missing:
        pytest.skip(f"needs {', '.join(sorted(missing))}")
    command = _prepare(example, request)
    work = tmp_path / "work"
    work.mkdir()
    _write_files(work)
    code, out, err = _run(command, work, monkeypatch)
    assert code == 0, f"README:{example.line}: {command}\nexit {code}\n{err}"
    assert "gpt2cli: error:" not in err, f"README:{example.line}: {command}\n{err}"
    check_output(example, out)


def test_the_parser_finds_examples_continuations_and_output() -> None:
    text = (
        "Intro\n$ gpt2cli not-in-a-block\n"
        "```console\n"
        "$ gpt2cli tokenize hi\n"
        "5303\n"
        "$ echo '{\"a\": 1}' \\\n"
        "    | gpt2cli generate -m gpt2 --request -   # needs: network\n"
        "$ python -c 'print(1)'\n"
        "1\n"
        "```\n"
    )
    found = examples(text)
    assert [(e.line, e.command, e.output) for e in found] == [
        (4, "gpt2cli tokenize hi", ["5303"]),
        (
            6,
            "echo '{\"a\": 1}' | gpt2cli generate -m gpt2 --request -   # needs: network",
            [],
        ),
    ]
    assert found[1].needs == {"network"} and found[1].uses_model
    assert in_process(found[0].command) == InProcess(["tokenize", "hi"])
    assert in_process(found[1].command) is None
    assert in_process('gpt2cli score --pairs < x.jsonl > o  # {"context": ...}') == InProcess(
        ["score", "--pairs"], stdin="x.jsonl", stdout="o"
    )
    assert in_process('gpt2cli tokenize "a | b"  # comment') == InProcess(["tokenize", "a | b"])
    assert in_process("gpt2cli tokenize a | head -1") is None


def test_shapes() -> None:
    assert shape("15496 11 314", uses_model=False) == shape("1 2 3", uses_model=False)
    assert shape("1523\ta.txt", uses_model=False) != shape("1523\tb.txt", uses_model=False)
    assert shape("3.5\tHello there", uses_model=True) == shape("12\tBye", uses_model=True)
    assert shape('{"index": 0, "text": "x"}', uses_model=True) == ("object", ["index", "text"])


def test_the_readme_has_examples_for_every_command() -> None:
    from typer.main import get_command

    from gpt2cli.cli import app

    used = {word for e in README_EXAMPLES for word in e.command.split()}
    commands = set(get_command(app).commands)
    assert not commands - used, f"no `$ gpt2cli` example for {sorted(commands - used)}"
