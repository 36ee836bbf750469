"""Writing results: stdout or an atomic `-o` file, JSON, colour detection, and stderr logging."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from gpt2cli.errors import InputError


class Settings:
    """Process-wide output settings, set once from the global options."""

    quiet: bool = False
    debug: bool = False
    interrupted: int = 0  # the signal (SIGINT, SIGTERM) that asked the process to stop, if any


def color_allowed() -> bool:
    """False with NO_COLOR set (to anything) or TERM=dumb: then no escape codes at all."""
    return "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def use_color(stream: IO[str] | None = None) -> bool:
    """Colour only on a terminal, never with NO_COLOR set or TERM=dumb."""
    stream = stream or sys.stdout
    if not color_allowed():
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


# Line breaks and terminal controls (C0, DEL, C1, and Unicode's line and paragraph separators):
# diagnostics quote file names, model directories and JSON keys, which may hold any of them.
# Lone surrogates stand for bytes that were not UTF-8 (a file name given as raw bytes).
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# In a view of the text itself, line breaks and tabs are layout and stay.
_CONTROL_CHARS_BUT_LAYOUT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    return repr(match.group())[1:-1]


def escape_controls(text: str) -> str:
    """`text` on one line, its control characters shown as escapes (ESC as \\x1b, newline
    as \\n), so that no user-controlled name can move the cursor or retitle the terminal."""
    return _CONTROL_CHARS.sub(_escaped, text)


def visible_controls(text: str) -> str:
    """`text` for display: controls other than newline and tab shown as escapes."""
    return _CONTROL_CHARS_BUT_LAYOUT.sub(_escaped, text)


def log(message: str) -> None:
    """A diagnostic line on stderr, unless --quiet; control characters shown escaped."""
    if not Settings.quiet and sys.stderr is not None:
        print(f"gpt2cli: {escape_controls(message)}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr, unless --quiet."""
    log(f"warning: {message}")


def show_progress() -> bool:
    """Progress displays only on an interactive stderr, without --quiet, and where escape codes
    are allowed (progress lines redraw themselves with them)."""
    if Settings.quiet or not color_allowed():
        return False
    return sys.stderr is not None and sys.stderr.isatty()


def to_json(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False)


def check_writable(path: str | Path, force: bool) -> Path:
    """Refuse an output path that exists (unless --force) or whose directory is missing."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory")
    if path.exists() and not force:
        raise InputError(f"{path}: already exists (pass --force to overwrite)")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such directory")
    return path


@contextmanager
def atomic_file(path: str | Path, force: bool = False, binary: bool = False) -> Iterator[IO]:
    """Write to a temporary file beside `path`, renamed into place only on success."""
    target = check_writable(path, force)
    # Named before it exists, so that an interrupt at any moment after creation can remove it.
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    try:
        # 0o666 less the umask, as for any new file; an overwritten file keeps its mode.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if target.exists():
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if Settings.interrupted:
            # The interrupt's exception was swallowed (Python only prints one raised in a
            # finalizer or weakref callback): still never commit the output.
            raise KeyboardInterrupt
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def output_stream(
    path: str | Path | None, force: bool = False, binary: bool = False
) -> Iterator[IO]:
    """stdout, or an atomically written file when `-o PATH` is given (`-` means stdout)."""
    if path is None or str(path) == "-":
        yield sys.stdout.buffer if binary else sys.stdout
        (sys.stdout.buffer if binary else sys.stdout).flush()
    else:
        with atomic_file(path, force=force, binary=binary) as f:
            yield f


def escape_piece(piece: bytes) -> str:
    """A token piece as a quoted string: readable, and unambiguous for partial UTF-8 bytes."""
    out = ['"']
    text = piece.decode("utf-8", errors="surrogateescape")
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
