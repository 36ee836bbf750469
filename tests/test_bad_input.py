"""The bad-input matrix: every case runs the real console script in a subprocess and must fail with
the right exit code and one clear stderr line (no traceback), changing no file and leaving no
half-written one. A few rows are inputs that look hostile but are valid, and must just work."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import rows_cli, rows_limits, rows_models, rows_outputs, rows_scoring
from tests.badinput import Case, remove, request, truncate
from tests.clirun import Result, assert_one_line_error

GPT2CLI = str(Path(sys.executable).parent / "gpt2cli")
ONE_LINE_MB = 50


def _write_one_line(work: Path) -> None:
    words = (ONE_LINE_MB * 1_000_000 - len("hello world")) // len(" hello world")
    with open(work / "line.txt", "w", encoding="utf-8") as f:
        f.write("hello world" + " hello world" * words + "\n")


# "hello" " world" (" hello" " world")*N "\n"
ONE_LINE_TOKENS = 2 + 2 * ((ONE_LINE_MB * 1_000_000 - 11) // 12) + 1

INPUT_CASES = [
    Case("empty stdin", ("tokenize",), 2, "<stdin>: input is empty"),
    Case("empty stdin --lines", ("tokenize", "--lines"), 2, "input has no non-blank lines"),
    Case(
        "only whitespace",
        ("tokenize", "-f", "blank.txt"),
        2,
        "blank.txt: input is only whitespace",
        files={"blank.txt": b" \n\t\r\n  \n"},
    ),
    Case(
        "only whitespace --lines",
        ("tokenize", "--lines", "-f", "blank.txt"),
        2,
        "input has no non-blank lines",
        files={"blank.txt": b" \n\t\r\n  \n"},
    ),
    Case(
        "invalid UTF-8 file",
        ("tokenize", "-f", "latin1.txt"),
        2,
        "latin1.txt: invalid UTF-8 at byte offset 20 (pass --replace-invalid",
        files={"latin1.txt": "Déjà vu, café".encode() + b" caf\xe9\n"},
    ),
    Case(
        "invalid UTF-8 stdin",
        ("tokenize", "--lines"),
        2,
        "<stdin>: invalid UTF-8 at byte offset 3",
        stdin=b"ok\n\xc3(\n",
    ),
    Case(
        "truncated UTF-8 at the end",
        ("tokenize",),
        2,
        "<stdin>: invalid UTF-8 at byte offset 5",
        stdin="hello€".encode()[:-1],
    ),
    Case(
        "NUL byte",
        ("tokenize", "-f", "binary.bin"),
        2,
        "binary.bin: NUL byte at byte offset 3: this looks like binary",
        files={"binary.bin": b"abc\x00def"},
    ),
    Case(
        "NUL byte on stdin",
        ("tokenize", "--lines"),
        2,
        "<stdin>: NUL byte at byte offset 6",
        stdin=b"hello\n\x00\n",
    ),
    Case(
        f"{ONE_LINE_MB} MB single line, counted",
        ("tokenize", "--count", "-f", "line.txt"),
        0,
        prepare=_write_one_line,
        stdout=f"{ONE_LINE_TOKENS}\n".encode(),
        max_rss_mb=300,
    ),
    Case(
        f"{ONE_LINE_MB} MB single line, ids",
        ("tokenize", "-f", "line.txt"),
        0,
        prepare=_write_one_line,
        max_rss_mb=300,
    ),
    Case("nonexistent file", ("tokenize", "-f", "missing.txt"), 2, "missing.txt: no such file"),
    Case(
        "directory",
        ("tokenize", "-f", "{work}"),
        2,
        ": is a directory, not a file",
    ),
    Case(
        "no read permission",
        ("tokenize", "-f", "secret.txt"),
        2,
        "secret.txt: permission denied",
        files={"secret.txt": b"top secret\n"},
        unreadable=("secret.txt",),
    ),
    Case(
        "file name with a line break and an escape code",
        ("tokenize", "-f", "a\nb\x1b[31m.txt"),
        2,
        "a\\nb\\x1b[31m.txt: no such file",  # shown escaped: one line, no terminal control
    ),
    Case("stdin twice", ("tokenize", "-f", "-", "-f", "-"), 2, "'-' (stdin) can be given only"),
    Case("unknown option", ("tokenize", "--frobnicate"), 2, "No such option: --frobnicate"),
    Case("threads 0", ("tokenize", "--threads", "0", "x"), 2, "--threads: must be from 1 to"),
    Case("exclusive formats", ("tokenize", "--json", "--jsonl", "x"), 2, "given together"),
    Case(
        "decode id = vocabulary size",
        ("tokenize", "--decode", "15496 50257"),
        2,
        "token id 50257 is outside the vocabulary (0..50256)",
    ),
    Case(
        "decode huge id",
        ("tokenize", "--decode", "99999999999999999999"),
        2,
        "is outside the vocabulary (0..50256)",
    ),
    Case("decode negative id", ("tokenize", "--decode", "--", "-1"), 2, "token id -1 is outside"),
    Case(
        "decode non-integer",
        ("tokenize", "--decode", "15496 11.5"),
        2,
        "expected token ids (integers), got '15496 11.5'",
    ),
    Case(
        "decode JSON with a float",
        ("tokenize", "--decode", "[15496, 1e3]"),
        2,
        "expected token ids (integers)",
    ),
    Case("decode words", ("tokenize", "--decode", "-f", "-"), 2, "expected token ids", stdin=b"hi"),
]


# Rows whose outcome does not depend on the backend use the ONNX model: it starts in about a
# second, against several for anything that imports torch.
GENERATE = ("generate", "-m", "{model}")
OLD_OUTPUT = {"out.txt": b"results of an earlier run\n"}
MODEL_CASES = [
    Case(
        "request: malformed JSON",
        (*GENERATE, "--request", "req.json"),
        2,
        "req.json: not valid JSON (line 1, column 21: Expecting value)",
        files=request('{"input_data": ["a",]}'),
        model="tiny_onnx_dir",
    ),
    Case(
        "request: wrong shape",
        (*GENERATE, "--request", "req.json"),
        2,
        "req.json: inputs: expected an object with 'input_string'",
        files=request('{"inputs": {"text": ["My name is"]}}'),
        model="tiny_onnx_dir",
    ),
    Case(
        "request: prompts not strings",
        (*GENERATE, "--request", "-"),
        2,
        "<stdin>: input_data[1]: expected a string, got the number 3",
        stdin=b'{"input_data": ["a", 3]}',
        model="tiny_onnx_dir",
    ),
    Case(
        "request: unknown parameter",
        (*GENERATE, "--request", "req.json"),
        2,
        "req.json: params.beam_width: unknown parameter",
        files=request('{"input_data": ["Once"], "params": {"beam_width": 4}}'),
        model="tiny_onnx_dir",
    ),
    Case(
        "request: unknown parameter with control characters in its name",
        (*GENERATE, "--request", "-"),
        2,
        "<stdin>: params.x\\ny\\x1b[2J: unknown parameter",
        stdin=b'{"input_data": ["a"], "params": {"x\\ny\\u001b[2J": 1}}',
        model="tiny_onnx_dir",
    ),
    Case(
        "request: parameter of the wrong type",
        (*GENERATE, "--request", "req.json"),
        2,
        'req.json: parameters.max_length: expected an integer, got the string "30"',
        files=request('{"inputs": {"input_string": ["a"]}, "parameters": {"max_length": "30"}}'),
        model="tiny_onnx_dir",
    ),
    Case(
        "request: empty stdin",
        (*GENERATE, "--request", "-"),
        2,
        "<stdin>: input is empty",
        model="tiny_onnx_dir",
    ),
    Case(
        "unknown model id while offline",
        ("generate", "-m", "no-such-org/no-such-model", "Hello"),
        1,
        "no-such-org/no-such-model: not in the local Hub cache and the Hugging Face Hub cannot be "
        "reached",
    ),
    Case(
        "truncated model.safetensors",
        (*GENERATE, "Hello"),
        1,
        "cannot load the weights",
        model="tiny_model_dir",
        prepare=truncate("model.safetensors"),
    ),
    Case(
        "missing config.json",
        (*GENERATE, "Hello"),
        1,
        "no config.json; not a model directory, or incomplete",
        model="tiny_model_dir",
        prepare=remove("config.json"),
    ),
    # Options that the model's config can refute fail before its weights load: these weights are
    # broken, so reaching them would give exit 1 and "cannot load the weights" instead.
    Case(
        "top-p checked before the weights load",
        (*GENERATE, "--do-sample", "--top-p", "2", "Hello"),
        2,
        "--top-p: must be in (0, 1], got 2.0",
        model="tiny_model_dir",
        prepare=truncate("model.safetensors"),
    ),
    Case(
        "request parameters checked before the weights load",
        (*GENERATE, "--request", "req.json"),
        2,
        "req.json: params.top_k: ",
        files=request('{"input_data": ["a"], "params": {"top_k": -3}}'),
        model="tiny_model_dir",
        prepare=truncate("model.safetensors"),
    ),
    Case(
        "embed layer checked before the weights load",
        ("embed", "-m", "{model}", "--layer", "40", "Hello"),
        2,
        "--layer: 40 is out of range",
        model="tiny_model_dir",
        prepare=truncate("model.safetensors"),
    ),
    Case(
        "score window checked before the weights load",
        ("score", "-m", "{model}", "--ctx", "5000", "Hello"),
        2,
        "--ctx: 5000 is longer than the model's context",
        model="tiny_model_dir",
        prepare=truncate("model.safetensors"),
    ),
    Case(
        "temperature 0 while sampling",
        (*GENERATE, "--do-sample", "--temperature", "0", "Hello"),
        2,
        "--temperature: must be a strictly positive number, got 0.0",
        model="tiny_onnx_dir",
    ),
    Case(
        "negative temperature while sampling",
        (*GENERATE, "--do-sample", "--temperature", "-0.5", "Hello"),
        2,
        "--temperature: must be a strictly positive number",
        model="tiny_model_dir",
    ),
    Case(
        "temperature 0 in a sampling request",
        (*GENERATE, "--request", "req.json"),
        2,
        "req.json: params.temperature: must be a strictly positive number",
        files=request('{"input_data": ["a"], "params": {"temperature": 0, "do_sample": true}}'),
        model="tiny_onnx_dir",
    ),
    Case(
        "top-p above 1",
        (*GENERATE, "--do-sample", "--top-p", "1.5", "Hello"),
        2,
        "--top-p: must be in (0, 1], got 1.5",
        model="tiny_onnx_dir",
    ),
    Case(
        "top-p 0",
        (*GENERATE, "--do-sample", "--top-p", "0", "Hello"),
        2,
        "--top-p: must be in (0, 1], got 0.0",
        model="tiny_onnx_dir",
    ),
    Case(
        "negative max-new-tokens",
        (*GENERATE, "--max-new-tokens", "-1", "Hello"),
        2,
        "--max-new-tokens: must be >= 1, got -1",
        model="tiny_onnx_dir",
    ),
    Case(
        "-o onto an existing file without --force",
        (*GENERATE, "--max-new-tokens", "2", "-o", "out.txt", "Hello"),
        2,
        "out.txt: already exists (pass --force to overwrite)",
        files=OLD_OUTPUT,
        model="tiny_onnx_dir",
    ),
    Case(
        "-o --force, then a failure: the old file stays",
        (*GENERATE, "--max-new-tokens", "-1", "-o", "out.txt", "--force", "Hello"),
        2,
        "--max-new-tokens: must be >= 1",
        files=OLD_OUTPUT,
        model="tiny_onnx_dir",
    ),
    Case(
        "-o into a missing directory",
        (*GENERATE, "-o", "no/such/dir/out.txt", "Hello"),
        2,
        "no such directory",
        model="tiny_onnx_dir",
    ),
]

TEXT = {"text.txt": b"The quick brown fox jumps over the lazy dog.\n"}
SCORE = ("score", "-m", "{model}")
EMBED = ("embed", "-m", "{model}")
OTHER_COMMAND_CASES = [
    Case(
        "score: stride larger than the context",
        (*SCORE, "--ctx", "16", "--stride", "32", "-f", "text.txt"),
        2,
        "--stride: must be between 1 and 16, got 32 (it cannot exceed --ctx)",
        files=TEXT,
        model="tiny_onnx_dir",
    ),
    Case(
        "score: window longer than the model's context",
        (*SCORE, "--ctx", "2048", "-f", "text.txt"),
        2,
        "--ctx: 2048 is longer than the model's context (1024 tokens)",
        files=TEXT,
        model="tiny_onnx_dir",
    ),
    Case(
        "score: --pairs line that is not JSON",
        (*SCORE, "--pairs", "-f", "pairs.jsonl"),
        2,
        "pairs.jsonl:2: not JSON",
        files={"pairs.jsonl": b'{"context": "a", "continuation": " b"}\n{context: 1}\n'},
        model="tiny_onnx_dir",
    ),
    Case(
        "score: -o onto an existing file",
        (*SCORE, "--json", "-o", "out.txt", "-f", "text.txt"),
        2,
        "out.txt: already exists (pass --force to overwrite)",
        files={**TEXT, **OLD_OUTPUT},
        model="tiny_onnx_dir",
    ),
    Case(
        "embed: layer index too high",
        (*EMBED, "--layer", "3", "Hello"),
        2,
        "--layer: 3 is out of range: this model has hidden states 0..2 (or -3..-1)",
        model="tiny_onnx_dir",
    ),
    Case(
        "embed: negative layer index too low",
        (*EMBED, "--layer", "-4", "Hello"),
        2,
        "--layer: -4 is out of range",
        model="tiny_onnx_dir",
    ),
    Case(
        "embed: -o onto an existing file",
        (*EMBED, "--format", "npy", "-o", "out.txt", "Hello"),
        2,
        "out.txt: already exists (pass --force to overwrite)",
        files=OLD_OUTPUT,
        model="tiny_onnx_dir",
    ),
    Case(
        "embed: unknown model id while offline",
        ("embed", "-m", "gpt2", "Hello"),
        1,
        "gpt2: not in the local Hub cache and the Hugging Face Hub cannot be reached",
    ),
    Case(
        "truncated model.onnx (generate)",
        (*GENERATE, "Hello"),
        1,
        "model.onnx: cannot load the ONNX model",
        model="tiny_onnx_dir",
        prepare=truncate("model.onnx"),
    ),
    Case(
        "truncated model.onnx (score)",
        (*SCORE, "-f", "text.txt"),
        1,
        "model.onnx: cannot load the ONNX model",
        files=TEXT,
        model="tiny_onnx_dir",
        prepare=truncate("model.onnx"),
    ),
    Case(
        "truncated model.onnx_data (the external weights)",
        (*EMBED, "Hello"),
        1,
        "model.onnx: cannot load the ONNX model",
        model="tiny_onnx_dir",
        prepare=truncate("model.onnx_data"),
    ),
    Case(
        "missing model.onnx_data",
        (*GENERATE, "Hello"),
        1,
        "model.onnx: cannot load the ONNX model",
        model="tiny_onnx_dir",
        prepare=remove("model.onnx_data"),
    ),
    Case(
        "ONNX directory without config.json",
        (*EMBED, "--backend", "onnx", "Hello"),
        1,
        "no config.json; not a model directory, or incomplete",
        model="tiny_onnx_dir",
        prepare=remove("config.json"),
    ),
    Case(
        "export-onnx: existing OUTDIR without --force",
        ("export-onnx", "{model}", "out"),
        2,
        "out: already exists (pass --force to replace it)",
        files={"out/model.onnx": b"an earlier export"},
        model="tiny_model_dir",
    ),
    Case(
        "export-onnx: truncated model.safetensors, nothing written",
        ("export-onnx", "{model}", "out"),
        1,
        "ONNX export failed",
        model="tiny_model_dir",
        prepare=truncate("model.safetensors"),
    ),
    Case(
        "export-onnx: source without config.json",
        ("export-onnx", "{model}", "out"),
        1,
        "no config.json; not a model directory, or incomplete",
        model="tiny_model_dir",
        prepare=remove("config.json"),
    ),
    Case(
        "export-onnx: unknown model id while offline",
        ("export-onnx", "distilgpt2", "out"),
        1,
        "distilgpt2: not in the local Hub cache",
    ),
]

CASES = (
    INPUT_CASES
    + MODEL_CASES
    + OTHER_COMMAND_CASES
    + rows_outputs.CASES
    + rows_limits.CASES
    + rows_models.CASES
    + rows_cli.CASES
    + rows_scoring.CASES
)


def _snapshot(directory: Path) -> dict[str, str]:
    """Every entry below `directory` (hidden and temporary ones included): a file's content hash,
    a symlink's target, or the kind of a directory, FIFO or device."""
    files = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            files[name] = "symlink to " + os.readlink(path)
        elif stat.S_ISREG(mode):
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except PermissionError:
                digest = "unreadable"
            files[name] = digest
        elif stat.S_ISDIR(mode):
            files[name + "/"] = "dir"
        else:
            files[name] = f"special file, mode {stat.S_IFMT(mode):o}"
    return files


GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None
# Root reads any file; for the no-permission row it runs without that override.
DROP_FILE_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _can_drop_file_override() -> bool:
    if os.geteuid() != 0:
        return True
    try:
        return subprocess.run([*DROP_FILE_OVERRIDE, "true"], capture_output=True).returncode == 0
    except OSError:
        return False


@dataclass
class Outcome:
    result: Result
    rss_mb: int  # the command's own peak RSS, where GNU time can measure it
    seconds: float  # wall-clock time of the command
    before: dict[str, str]  # the work directory before and after
    after: dict[str, str]


def _prepare(case: Case, root: Path, model: Path | None) -> tuple[Path, dict[str, str]]:
    """The case's work directory (inputs, a model copy, damage applied) and environment."""
    work = root / "work"
    work.mkdir()
    for name, content in case.files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(content)
    if model:
        shutil.copytree(model, work / "model")
    if case.prepare:
        case.prepare(work)
    for name in case.unreadable:
        (work / name).chmod(0)
    hf_home = root / "hf-home"  # empty: no model is cached
    hf_home.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GPT2CLI"))},
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "NO_COLOR": "1",
        **case.env,
    }
    return work, env


def _execute(case: Case, root: Path, model: Path | None) -> Outcome:
    """Run the case through the console script."""
    work, env = _prepare(case, root, model)
    before = _snapshot(work)

    def fill(arg: str) -> str:
        return arg.replace("{work}", str(work)).replace("{model}", str(work / "model"))

    args = [fill(a) for a in case.args]
    prefix = DROP_FILE_OVERRIDE if case.unreadable and os.geteuid() == 0 else []
    rss_file = root / "rss-kb"
    if case.max_rss_mb and GNU_TIME:
        # A child of this (large) test process would count its pre-exec pages in its peak RSS;
        # GNU time starts it from a small process and reports its own peak.
        prefix = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *prefix]
    command = [*prefix, GPT2CLI, *args]
    if case.shell is not None:
        command = ["bash", "-c", fill(case.shell)]
        env = {**env, "GPT2CLI": GPT2CLI}
    started = time.monotonic()
    proc = subprocess.run(
        command, input=case.stdin, capture_output=True, cwd=work, env=env, timeout=case.timeout
    )
    seconds = time.monotonic() - started
    rss_mb = int(rss_file.read_text().split()[-1]) // 1024 if rss_file.exists() else 0
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    return Outcome(result, rss_mb, seconds, before, _snapshot(work))


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Outcome]]]:
    """Every selected case, run two at a time: most of each is a subprocess importing torch."""
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_bad_input"
        and item.module.__name__ == __name__
    ]
    runnable = _can_drop_file_override()
    with ThreadPoolExecutor(2) as pool:
        futures = {
            case.id: pool.submit(
                _execute,
                case,
                tmp_path_factory.mktemp("case"),
                request.getfixturevalue(case.model) if case.model else None,
            )
            for case in selected
            if runnable or not case.unreadable
        }
        yield futures


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] * bool(c.xfail)
        )
        for c in CASES
    ],
)
def test_bad_input(case: Case, outcomes: dict[str, Future[Outcome]]) -> None:
    if case.id not in outcomes:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE")
    outcome = outcomes[case.id].result()
    result = outcome.result
    if case.code == 0:
        assert result.returncode == 0 and result.stderr == b"", (result.returncode, result.err)
        if case.stdout is not None:
            assert result.stdout == case.stdout
    else:
        line = assert_one_line_error(result, case.code)
        assert case.message in line, line
        assert len(line) < 600, "one clear line, not a dump"
    if case.max_rss_mb and GNU_TIME:
        assert 0 < outcome.rss_mb < case.max_rss_mb, f"peak RSS {outcome.rss_mb} MB"
    if case.max_seconds is not None:
        assert outcome.seconds < case.max_seconds, f"took {outcome.seconds:.1f} s"
    expected = dict(outcome.before)
    for name, content in case.writes.items():
        if content is None:
            assert name in outcome.after, f"{name} was not written"
            expected[name] = outcome.after[name]
        else:
            expected[name] = hashlib.sha256(content).hexdigest()
    assert outcome.after == expected, "files were changed or left behind"
