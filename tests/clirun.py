"""Run the CLI as a user would: `run_cli` in a subprocess (the real console entry point), or
`run_in_process` through `cli.run` in this process (models and imports load once per session).
Both return a `Result`, and `cli.run` is the one place that maps errors to exit codes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8")


def run_cli(
    *args: str,
    input: bytes | str | None = None,  # noqa: A002 - mirrors subprocess.run
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 600,
) -> Result:
    """`gpt2cli ARGS...` in a subprocess; stdin is empty (not a TTY) unless `input` is given."""
    full_env = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    if isinstance(input, str):
        input = input.encode()
    proc = subprocess.run(
        [sys.executable, "-m", "gpt2cli", *args],
        input=input if input is not None else b"",
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_in_process(*args: str, input: bytes | str | None = None) -> Result:  # noqa: A002
    """`gpt2cli ARGS...` through `cli.run` here, with stdin, stdout and stderr swapped for
    in-memory streams (stdin is empty and not a TTY unless `input` is given). Global flags are
    taken as `cli.main` takes them; the process-wide output settings are restored afterwards."""
    from gpt2cli import cli
    from gpt2cli.outputs import Settings

    if isinstance(input, str):
        input = input.encode()
    saved = {name: getattr(Settings, name) for name in ("quiet", "debug", "interrupted")}
    try:
        with _standard_streams(input or b"") as (stdout, stderr):
            code = cli.run(cli._take_global_flags(list(args)))
        return Result(code, stdout.getvalue(), stderr.getvalue())
    finally:
        for name, value in saved.items():
            setattr(Settings, name, value)


class _Buffer(io.BytesIO):
    """Kept open when its text wrapper is closed or collected, so it can still be read."""

    def close(self) -> None:
        pass


@contextmanager
def _standard_streams(stdin: bytes) -> Iterator[tuple[io.BytesIO, io.BytesIO]]:
    saved = sys.stdin, sys.stdout, sys.stderr
    stdout, stderr = _Buffer(), _Buffer()
    sys.stdin = io.TextIOWrapper(_Buffer(stdin), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(stdout, encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(
        stderr, encoding="utf-8", errors="backslashreplace", write_through=True
    )
    try:
        yield stdout, stderr
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdin, sys.stdout, sys.stderr = saved


def assert_one_line_error(result: Result, code: int = 2) -> str:
    """The command failed with `code` and said so in one line, without a traceback."""
    assert result.returncode == code, (result.returncode, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    assert lines[0].startswith("gpt2cli: error: ")
    return lines[0]
