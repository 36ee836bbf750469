"""The bad-input matrix's row type and the helpers rows use to prepare their work directory.

Rows live in tests/test_bad_input.py and in tests/rows_*.py (one file per area), all collected by
tests/test_bad_input.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Case:
    """One row. `args` may name {work} (the case's own directory) and {model} (a copy there of
    the model fixture named by `model`)."""

    id: str
    args: tuple[str, ...]
    code: int
    message: str = ""  # a substring of the one error line; success rows have none
    stdin: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)
    model: str | None = None  # a conftest fixture giving a model directory
    prepare: Callable[[Path], None] | None = None  # damage or add files in the work directory
    stdout: bytes | None = None  # the exact output of a success row
    max_rss_mb: int | None = None
    unreadable: tuple[str, ...] = ()  # chmod 000 these and run without root's file override
    xfail: str = ""  # a known failure in another part of the tool, with who was told
    env: dict[str, str] = field(default_factory=dict)  # added to the command's environment
    # Files the command is expected to create or change, with their exact content (None: any
    # content); every other file must stay as it was.
    writes: dict[str, bytes | None] = field(default_factory=dict)
    # A bash command line instead of `args`: "$GPT2CLI" is the console script, {work} and
    # {model} are substituted; the exit code is the line's. For pipes and closed descriptors.
    shell: str | None = None
    max_seconds: float | None = None  # the command's wall-clock time must stay under this
    timeout: float = 600


def truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def prepare(work: Path) -> None:
        path = work / "model" / name
        with open(path, "r+b") as f:
            f.truncate(int(path.stat().st_size * keep))

    return prepare


def remove(name: str) -> Callable[[Path], None]:
    return lambda work: (work / "model" / name).unlink()


def request(body: str) -> dict[str, bytes]:
    return {"req.json": body.encode()}
