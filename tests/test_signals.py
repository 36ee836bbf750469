"""Unix manners, through the real console script: closed pipes, Ctrl-C and SIGTERM (exit codes, no
traceback, no half-written -o file), colour and progress only where escape codes are allowed, and
--quiet. (Refusing to overwrite without --force is in the bad-input matrix.)"""

from __future__ import annotations

import array
import fcntl
import os
import pty
import shutil
import signal
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gpt2cli.outputs import Settings, atomic_file

GPT2CLI = str(Path(sys.executable).parent / "gpt2cli")
SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test.txt"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM")}
    return {**env, "HF_HUB_OFFLINE": "1", "TERM": "xterm-256color", **extra}


@pytest.fixture(scope="module")
def big_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 4 MB of prose: far more output than a pipe buffer holds."""
    if SHARED_TEXT.exists():
        base = SHARED_TEXT.read_text(encoding="utf-8")
    else:
        base = "The quick brown fox jumps over the lazy dog, again and again.\n" * 20_000
    path = tmp_path_factory.mktemp("big") / "big.txt"
    path.write_text(base * (4_000_000 // len(base) + 1), encoding="utf-8")
    return path


def _unread_bytes(pipe) -> int:  # noqa: ANN001
    """Bytes written to a pipe that its reader has not read yet (Linux: FIONREAD on either end)."""
    count = array.array("i", [0])
    fcntl.ioctl(pipe.fileno(), termios.FIONREAD, count)
    return count[0]


def _wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ------------------------------------------------------------------------------- closed pipes


@pytest.mark.parametrize(
    ("args", "head"),
    [
        (["tokenize", "-f", "{big}"], ["head", "-c", "100"]),  # one text: one long line
        (["tokenize", "--lines", "-f", "{big}"], ["head", "-1"]),
        (["tokenize", "--jsonl", "--lines", "-f", "{big}"], ["head", "-1"]),
        (["tokenize", "--tokens", "--lines", "-f", "{big}"], ["head", "-1"]),
    ],
    ids=lambda a: " ".join(a),
)
def test_head_closing_the_pipe_ends_the_command_quietly(
    args: list[str], head: list[str], big_text: Path
) -> None:
    command = [GPT2CLI, *(a.replace("{big}", str(big_text)) for a in args)]
    producer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    consumer = subprocess.Popen(head, stdin=producer.stdout, stdout=subprocess.PIPE)
    producer.stdout.close()  # only head holds the read end, as in a shell pipeline
    shown, _ = consumer.communicate(timeout=120)
    stderr = producer.stderr.read()
    producer.wait(timeout=120)
    assert consumer.returncode == 0 and shown
    assert stderr == b""
    assert producer.returncode == 1  # EPIPE: not killed by a signal, no traceback


def test_decode_into_a_closed_pipe_is_quiet() -> None:
    ids = ("15496 11 314 1101 257 3303 2746 11\n" * 50_000).encode()
    shell = f"{GPT2CLI} tokenize --decode --lines | head -c 10 >/dev/null; echo $PIPESTATUS >&2"
    result = subprocess.run(["bash", "-c", shell], input=ids, capture_output=True, env=_env())
    assert result.stderr == b"1\n"


# ------------------------------------------------------------------------------------ signals


def _interrupt_while_reading_stdin(signum: int) -> subprocess.CompletedProcess:
    """Start `tokenize --lines` on an open stdin pipe, wait until it has read some input (so it
    is past start-up and inside the command), then send `signum`."""
    proc = subprocess.Popen(
        [GPT2CLI, "tokenize", "--lines"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    proc.stdin.write(b"Hello world\n" * 5)
    proc.stdin.flush()
    _wait_until(lambda: _unread_bytes(proc.stdin) == 0, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_exits_130_without_a_traceback() -> None:
    result = _interrupt_while_reading_stdin(signal.SIGINT)
    assert result.returncode == 130
    assert result.stderr == b""


def test_sigterm_exits_143_without_a_traceback() -> None:
    result = _interrupt_while_reading_stdin(signal.SIGTERM)
    assert result.returncode == 128 + signal.SIGTERM
    assert result.stderr == b""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_tokenize_of_a_big_file_stops_quietly(signum: int, big_text: Path) -> None:
    proc = subprocess.Popen(
        [GPT2CLI, "tokenize", "-f", str(big_text)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout.read(1)  # started writing ids: well inside the command
    proc.send_signal(signum)
    proc.stdout.close()
    stderr = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode in (128 + signum, 1)  # 1: the closed stdout won the race
    assert stderr == b""


@pytest.mark.parametrize(
    ("signum", "existing"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGINT", "SIGINT with --force over an old file", "SIGTERM"],
)
def test_interrupted_generate_leaves_no_partial_output(
    signum: int, existing: bool, tiny_onnx_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    if existing:
        out.write_text("the previous results\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\nHello world\nThe end\nAnd again\n")
    args = ["generate", "-m", str(tiny_onnx_dir), "--greedy", "--max-new-tokens", "1000"]
    args += ["--lines", "-f", str(prompts), "--format", "jsonl", "-o", str(out), "--force"]
    proc = subprocess.Popen(
        [GPT2CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=tmp_path
    )
    # The temporary file beside the target exists once the model is loaded and writing began.
    _wait_until(lambda: any(tmp_path.glob(".out.jsonl.*.tmp")), proc, timeout=120)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    assert stderr == b"" and stdout == b""
    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert remaining == sorted(["prompts.txt"] + ["out.jsonl"] * existing)
    if existing:
        assert out.read_text() == "the previous results\n"


# ------------------------------------------------------------------------- terminals, colour


def run_on_pty(args: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run with stdout and stderr on a pseudo-terminal; returns (exit code, all bytes shown)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [GPT2CLI, *args], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return proc.wait(timeout=60), shown


SHOW = ["tokenize", "--show", "Hello world"]


def test_show_colours_a_terminal() -> None:
    code, shown = run_on_pty(SHOW, _env())
    assert code == 0
    assert b"\x1b[" in shown  # the control case: colour is on when nothing turns it off


@pytest.mark.parametrize(
    "args",
    [
        SHOW,
        ["--help"],
        ["tokenize", "--help"],
        ["tokenize", "--bogus-option"],
        ["tokenize", "-f", "/nonexistent"],
    ],
    ids=["tokenize --show", "--help", "tokenize --help", "usage error", "input error"],
)
@pytest.mark.parametrize("variable", [{"NO_COLOR": "1"}, {"NO_COLOR": ""}, {"TERM": "dumb"}])
def test_no_color_means_no_escape_codes_on_a_terminal(args: list[str], variable: dict) -> None:
    _, shown = run_on_pty(args, _env(**variable))
    assert b"\x1b" not in shown, shown[:200]


@pytest.mark.parametrize("args", [SHOW, ["--help"], ["tokenize", "--help"]])
def test_pipes_get_no_escape_codes(args: list[str]) -> None:
    result = subprocess.run([GPT2CLI, *args], capture_output=True, env=_env())
    assert result.returncode == 0
    assert b"\x1b" not in result.stdout + result.stderr
    if args == SHOW:
        assert result.stdout == b"Hello| world\n"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("The lighthouse keeper climbed the spiral stairs every evening at dusk.\n")
    return path


def test_model_commands_colour_and_show_progress_on_a_terminal(
    tiny_onnx_dir: Path, text_file: Path
) -> None:
    # The control case for the test below: on a plain terminal there is colour and progress.
    code, shown = run_on_pty(
        ["score", "-m", str(tiny_onnx_dir), "--show", "-f", str(text_file)], _env()
    )
    assert code == 0 and b"\x1b[" in shown
    code, shown = run_on_pty(["score", "-m", str(tiny_onnx_dir), "-f", str(text_file)], _env())
    assert code == 0 and b"scored " in shown


@pytest.mark.parametrize(
    "args",
    [
        ["score", "--show", "-f", "{text}"],
        ["score", "-f", "{text}"],  # progress on stderr
        ["generate", "--greedy", "--max-new-tokens", "8", "--stream", "Hello"],
    ],
    ids=["score --show", "score progress", "generate --stream"],
)
def test_model_commands_write_no_escape_codes_under_no_color(
    args: list[str], tiny_onnx_dir: Path, text_file: Path
) -> None:
    args = [
        args[0],
        "-m",
        str(tiny_onnx_dir),
        *(a.replace("{text}", str(text_file)) for a in args[1:]),
    ]
    code, shown = run_on_pty(args, _env(NO_COLOR="1"))
    assert code == 0, shown
    assert b"\x1b" not in shown, shown
    assert b"scored " not in shown  # no progress display without escape codes


# ---------------------------------------------------------------------------------- --quiet


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_keeps_errors(where: str) -> None:
    args = ["tokenize", "-f", "/nonexistent"]
    args = ["--quiet", *args] if where == "before" else [*args, "--quiet"]
    result = subprocess.run([GPT2CLI, *args], capture_output=True, env=_env())
    assert result.returncode == 2
    assert result.stderr == b"gpt2cli: error: /nonexistent: no such file\n"


@pytest.fixture(scope="module")
def model_without_tokenizer(tiny_onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ONNX model minus its tokenizer files: loading it warns that the built-in one is
    used."""
    directory = tmp_path_factory.mktemp("no-tokenizer") / "model"
    shutil.copytree(tiny_onnx_dir, directory)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        (directory / name).unlink(missing_ok=True)
    return directory


def test_quiet_silences_warnings_but_not_results(model_without_tokenizer: Path) -> None:
    args = ["generate", "-m", str(model_without_tokenizer), "--greedy", "--max-new-tokens", "3"]
    chatty = subprocess.run([GPT2CLI, *args, "Hello"], capture_output=True, env=_env())
    quiet = subprocess.run([GPT2CLI, *args, "--quiet", "Hello"], capture_output=True, env=_env())
    assert chatty.returncode == quiet.returncode == 0
    assert b"warning: " in chatty.stderr  # the control case: there is something to silence
    assert quiet.stderr == b""
    assert quiet.stdout == chatty.stdout and quiet.stdout.startswith(b"Hello")


# ------------------------------------------------------------------------------ -o files


def test_atomic_file_never_commits_after_an_interrupt(tmp_path: Path) -> None:
    """Python swallows an interrupt raised in a finalizer; the flag set by the signal handler
    still stops the output from being committed."""
    target = tmp_path / "out.txt"
    try:
        Settings.interrupted = signal.SIGINT
        with pytest.raises(KeyboardInterrupt), atomic_file(target) as f:
            f.write("complete, but the user pressed Ctrl-C")
    finally:
        Settings.interrupted = 0
    assert list(tmp_path.iterdir()) == []


def test_output_files_get_the_usual_permissions(tmp_path: Path) -> None:
    fresh, kept = tmp_path / "fresh.txt", tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o640)
    umask = os.umask(0o022)
    try:
        for path in (fresh, kept):
            with atomic_file(path, force=True) as f:
                f.write("new")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # not mkstemp's 0o600
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    assert kept.read_text() == "new"
