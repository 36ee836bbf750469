"""Run the real console entry point in a subprocess, as a shell user would."""

from __future__ import annotations

import os
import subprocess
import sys
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


def assert_one_line_error(result: Result, code: int = 2) -> str:
    """The command failed with `code` and said so in one line, without a traceback."""
    assert result.returncode == code, (result.returncode, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    assert lines[0].startswith("gpt2cli: error: ")
    return lines[0]
