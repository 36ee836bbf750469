"""Run `gpt2cli serve` as a real subprocess on a free 127.0.0.1 port, for tests.

    with running_server(model_dir, "--slots", "2") as server:
        httpx.get(server.url + "/health")

The server is stopped (SIGTERM, then SIGKILL after a bound) when the block ends; its stderr is
kept in `server.stderr()`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0  # seconds for the model to load and /health to answer 200
STOP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    """A started server: its base URL, process and stderr file."""

    url: str
    port: int
    process: subprocess.Popen
    stderr_path: Path
    final_stderr: str | None = None  # kept once the server has stopped

    def stderr(self) -> str:
        if self.final_stderr is not None:
            return self.final_stderr
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send `sig` and wait for the exit code (SIGKILL after `timeout`)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        return self.process.returncode


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = START_TIMEOUT) -> None:
    """Poll GET /health until 200 (bounded); fail fast if the process exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gpt2cli serve exited with {process.returncode} before /health")
        try:
            if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"gpt2cli serve: /health not 200 within {timeout:g} s")


@contextmanager
def running_server(
    model: str | Path, *args: str, env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Iterator[RunningServer]:
    """`gpt2cli serve -m MODEL ARGS...` on a free 127.0.0.1 port until the block ends."""
    port = free_port()
    environ = {**os.environ, **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), environ.get("PYTHONPATH", "")) if p
    )
    with tempfile.TemporaryDirectory(prefix="gpt2cli-serve-") as tmp:
        stderr_path = Path(tmp) / "stderr.log"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "gpt2cli", "serve", "-m", str(model),
                 "--host", "127.0.0.1", "--port", str(port), *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=environ,
            )
        server = RunningServer(f"http://127.0.0.1:{port}", port, process, stderr_path)
        try:
            try:
                wait_healthy(server.url, process, timeout)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n{server.stderr()}") from None
            yield server
        finally:
            server.stop()
            server.final_stderr = server.stderr()
