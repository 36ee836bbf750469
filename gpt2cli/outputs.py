"""Writing results: stdout or an atomic `-o` file, JSON, colour detection, and stderr logging."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import re
import secrets
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gpt2cli.errors import CliError, InputError

if TYPE_CHECKING:
    from types import TracebackType


class Settings:
    """Process-wide output settings, set once from the global options."""

    quiet: bool = False
    debug: bool = False
    interrupted: int = 0  # the signal (SIGINT, SIGTERM) that asked the process to stop, if any
    # Standard descriptors the process was started without (`>&-`); /dev/null holds their
    # numbers so that no file opened later takes them.
    closed_descriptors: frozenset[int] = frozenset()


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


# ------------------------------------------------------------------- records and progress

FORMATS = ("text", "json", "jsonl")


class RecordWriter:
    """The one writer of results, one record (a dict) per input. `json`: one document, an array
    of the records, streamed so that memory stays bounded; `jsonl`: one object per line, flushed
    as written; `text`: `render(record)` (a string, its newline included)."""

    def __init__(
        self,
        out: IO[str],
        output_format: str,
        render: Callable[[dict[str, Any]], str] | None = None,
    ) -> None:
        if output_format not in FORMATS:
            raise ValueError(f"unknown format {output_format!r}")
        if output_format == "text" and render is None:
            raise ValueError("text output needs a render function")
        self.out = out
        self.format = output_format
        self.render = render
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        if self.format == "jsonl":
            self.out.write(to_json(record) + "\n")
            self.out.flush()
        elif self.format == "json":
            self.out.write(("[\n" if self.count == 0 else ",\n") + to_json(record))
        else:
            assert self.render is not None
            self.out.write(self.render(record))
        self.count += 1

    def close(self) -> None:
        """End the document (`json`: `[]` when there were no records)."""
        if self.format == "json":
            self.out.write("\n]\n" if self.count else "[]\n")
        self.out.flush()


class Progress:
    """One progress bar on stderr, with rate and ETA, for any long job. Shown only where
    show_progress() allows (a terminal, no --quiet, escape codes allowed); otherwise every
    call does nothing. Use as a context manager; the bar is erased when it ends."""

    def __init__(self, description: str, total: int | None = None, unit: str = "tokens") -> None:
        self._bar: Any = None
        self._task: Any = None
        if not show_progress():
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s")

        self._bar = RichProgress(
            TextColumn("gpt2cli: {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self._task = self._bar.add_task(escape_controls(description), total=total)
        self._bar.start()

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def advance(self, amount: float = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
    ) -> None:
        if self._bar is not None:
            kwargs: dict[str, Any] = {}
            if completed is not None:
                kwargs["completed"] = completed
            if total is not None:
                kwargs["total"] = total
            if description is not None:
                kwargs["description"] = escape_controls(description)
            self._bar.update(self._task, **kwargs)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# ------------------------------------------------------------------------------- -o files

NAME_MAX = 255  # bytes in one file name (Linux file systems)
# Paths that name one of this process's open descriptors: written to that descriptor, as the
# shell's `>&N` would, never opened anew, created or replaced.
_STD_STREAMS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_FD_PATH = re.compile(r"/(?:dev/fd|proc/self/fd|proc/thread-self/fd|proc/(\d+)/fd)/(\d+)")
_SYMLINKS_FOLLOWED = 40  # the kernel's own limit


@dataclass(frozen=True)
class OutputTarget:
    """What `-o PATH` writes to, decided from what PATH is now."""

    shown: str  # the path as given, for messages
    file: Path  # the regular file to create or replace (with --force, a symlink's target)
    exists: bool = False  # a regular file that --force replaces
    through: bool = False  # a character device or FIFO: opened and written, never replaced
    descriptor: int | None = None  # /dev/stdout, /proc/self/fd/N: written to that descriptor


def check_output(path: str | Path | None, force: bool) -> None:
    """The early check of `-o PATH` (None or '-' is stdout), before any input is read or any
    model loads; the write itself checks again and commits without clobbering."""
    if path is not None and str(path) != "-":
        check_writable(path, force)


def check_writable(path: str | Path, force: bool) -> OutputTarget:
    """Where `-o PATH` may write: a new file in a writable directory, a regular file (or a
    symlink to one) with --force, a character device or FIFO, or a /dev/stdout-style path.
    Directories, other special files, dangling symlinks and existing files without --force
    are refused."""
    shown = os.fspath(path)
    if not shown:
        raise InputError("-o: the path is empty")
    descriptor = _descriptor(shown)
    if descriptor is not None:
        _check_descriptor(shown, descriptor)
        return OutputTarget(shown, Path(shown), descriptor=descriptor)
    if shown.endswith("/") or os.path.basename(shown) in (".", ".."):
        if os.path.isdir(shown):
            raise InputError(f"{shown}: is a directory")
        raise InputError(f"{shown}: names a directory (ends in '/'); -o takes a file name")
    directory = os.path.dirname(shown) or "."
    try:
        mode = os.lstat(shown).st_mode
    except FileNotFoundError:
        check_directory(shown, directory)
        return OutputTarget(shown, Path(shown))
    except NotADirectoryError:
        raise InputError(f"{directory}: not a directory") from None
    except OSError as exc:
        raise InputError(f"{shown}: {_reason(exc)}") from None
    file = Path(shown)
    if stat.S_ISLNK(mode):
        try:
            mode = os.stat(shown).st_mode
        except FileNotFoundError:
            raise InputError(
                f"{shown}: is a symlink to a missing file ({os.readlink(shown)}); "
                "-o writes only through a link to an existing file (with --force)"
            ) from None
        except OSError as exc:
            raise InputError(f"{shown}: {_reason(exc)}") from None
        file = Path(os.path.realpath(shown))
    if stat.S_ISDIR(mode):
        raise InputError(f"{shown}: is a directory")
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return OutputTarget(shown, file, through=True)
    if not stat.S_ISREG(mode):
        kind = "a socket" if stat.S_ISSOCK(mode) else "a block device" if stat.S_ISBLK(mode) \
            else "a special file"
        raise InputError(
            f"{shown}: is {kind}; -o writes regular files, character devices and FIFOs"
        )
    if not force:
        raise InputError(f"{shown}: already exists (pass --force to overwrite)")
    check_directory(shown, str(file.parent))
    return OutputTarget(shown, file, exists=True)


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower() if exc.errno != errno.EACCES else "permission denied"


def _descriptor(path: str) -> int | None:
    """The descriptor number a /dev/stdout, /dev/fd/N or /proc/self/fd/N path (or a symlink
    to one) stands for, or None."""
    for _ in range(_SYMLINKS_FOLLOWED):
        absolute = os.path.abspath(path)
        if absolute in _STD_STREAMS:
            return _STD_STREAMS[absolute]
        match = _FD_PATH.fullmatch(absolute)
        if match and match.group(1) in (None, str(os.getpid())):
            return int(match.group(2))
        try:
            link = os.readlink(path)
        except OSError:
            return None
        path = os.path.join(os.path.dirname(path), link)
    return None


def _check_descriptor(shown: str, descriptor: int) -> None:
    if descriptor in Settings.closed_descriptors:
        raise InputError(f"{shown}: descriptor {descriptor} is not open")
    try:
        flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
    except OSError:
        raise InputError(f"{shown}: descriptor {descriptor} is not open") from None
    if flags & os.O_ACCMODE == os.O_RDONLY:
        raise InputError(f"{shown}: descriptor {descriptor} is open only for reading")


def check_directory(shown: str, directory: str) -> None:
    """`directory` exists and new files can be created in it."""
    try:
        mode = os.stat(directory).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{directory}: no such directory") from None
    except OSError as exc:
        raise InputError(f"{shown}: {_reason(exc)}") from None
    if not stat.S_ISDIR(mode):
        raise InputError(f"{directory}: not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        read_only = os.statvfs(directory).f_flag & os.ST_RDONLY
        reason = "read-only file system" if read_only else "permission denied"
        raise InputError(f"{shown}: {reason} (cannot create files in {directory})")


def temp_name(name: str, suffix: str = ".tmp") -> str:
    """A hidden, unique name for a file or directory being written beside `name`; at most
    NAME_MAX bytes, so that any valid name gets one (a long name's stem is shortened)."""
    tail = f".{secrets.token_hex(8)}{suffix}"
    stem = name
    while len(os.fsencode(f".{stem}{tail}")) > NAME_MAX:
        stem = stem[:-1]
    return f".{stem}{tail}"


def write_error(shown: str, exc: OSError) -> CliError:
    """A failed write (full disk, quota, I/O error) as one line naming the output path."""
    return CliError(f"{shown}: cannot write: {_reason(exc)}")


class _OutputFile(io.RawIOBase):
    """The raw file under an `-o` stream. A write error names the path, and later writes are
    dropped (the buffers' final flush then stays quiet). It has no fileno(), so numpy writes
    through it, not around it ("19200 requested and 992 written")."""

    def __init__(self, fd: int, shown: str) -> None:
        super().__init__()
        self.fd = fd
        self.shown = shown
        self.failed = False

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def write(self, data: Any) -> int:
        if self.failed:
            return memoryview(data).nbytes
        try:
            return os.write(self.fd, data)
        except BrokenPipeError:  # a FIFO or pipe whose reader left: quiet, as for stdout
            self.failed = True
            raise
        except OSError as exc:
            self.failed = True
            raise write_error(self.shown, exc) from None

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            self.failed = True
            raise write_error(self.shown, exc) from None

    def close(self) -> None:
        if self.closed:
            return
        try:
            os.close(self.fd)
        except OSError as exc:
            if not self.failed:
                raise write_error(self.shown, exc) from None
        finally:
            super().close()


def _stream(raw: _OutputFile, binary: bool) -> IO:
    buffered = io.BufferedWriter(raw, buffer_size=1 << 16)
    if binary:
        return buffered
    return io.TextIOWrapper(buffered, encoding="utf-8", line_buffering=raw.isatty())


def _discard(raw: _OutputFile, stream: IO) -> None:
    """Close after a failure: what is still buffered is dropped, and nothing more is raised."""
    raw.failed = True
    with suppress(OSError, CliError):
        stream.close()


def _open_error(shown: str, directory: Path, exc: OSError) -> CliError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(f"{shown}: {_reason(exc)} (cannot create files in {directory})")
    return write_error(shown, exc)


@contextmanager
def atomic_file(path: str | Path, force: bool = False, binary: bool = False) -> Iterator[IO]:
    """Write `-o PATH`: a regular file through a temporary file beside it, put in place only
    on success and never over a file that appeared meanwhile (only --force replaces one); a
    character device or FIFO is written directly, a /dev/stdout-style path to its descriptor."""
    target = check_writable(path, force)  # again: the path may have changed since the early check
    if target.through or target.descriptor is not None:
        with _write_through(target, binary) as stream:
            yield stream
        return
    real = target.file
    # Named before it exists, so that an interrupt at any moment after creation can remove it:
    # the open itself is inside the try (an interrupt may land as it returns).
    tmp = real.parent / temp_name(real.name)
    fd = -1
    raw: _OutputFile | None = None
    stream: IO | None = None
    try:
        try:
            # 0o666 less the umask, as for any new file; a replaced file's mode is kept.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise _open_error(target.shown, real.parent, exc) from None
        raw = _OutputFile(fd, target.shown)
        stream = _stream(raw, binary)
        if target.exists:
            with suppress(OSError):
                os.fchmod(fd, stat.S_IMODE(os.stat(real).st_mode))
        yield stream
        stream.flush()
        raw.sync()
        if Settings.interrupted:
            # The interrupt's exception was swallowed (Python only prints one raised in a
            # finalizer or weakref callback): still never commit the output.
            raise KeyboardInterrupt
        stream.close()
        _commit(tmp, target, force)
    except BaseException as exc:
        if raw is not None and stream is not None:
            _discard(raw, stream)
        elif fd >= 0:
            with suppress(OSError):
                os.close(fd)
        if fd >= 0 or not isinstance(exc, CliError):  # not when the open itself failed
            tmp.unlink(missing_ok=True)
        raise


def _commit(tmp: Path, target: OutputTarget, force: bool) -> None:
    """Put the finished temporary file in place: without --force only where nothing exists
    (a hard link fails if the name was taken meanwhile); with --force over a regular file."""
    real = target.file
    try:
        if force:
            with suppress(FileNotFoundError):
                if not stat.S_ISREG(os.lstat(real).st_mode):
                    raise InputError(f"{target.shown}: is no longer a regular file; not replaced")
            os.replace(tmp, real)
            return
        try:
            os.link(tmp, real)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                raise
            # No hard links on this file system (FAT, some network ones): claim the name
            # exclusively, then replace the claim.
            os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            os.replace(tmp, real)
        else:
            tmp.unlink()
    except FileExistsError:
        raise InputError(
            f"{target.shown}: already exists (it appeared while this command ran; "
            "pass --force to overwrite)"
        ) from None
    except OSError as exc:
        raise write_error(target.shown, exc) from None


@contextmanager
def _write_through(target: OutputTarget, binary: bool) -> Iterator[IO]:
    """A character device, FIFO or open descriptor, written as `cmd > PATH` would write it."""
    if target.descriptor is not None:
        _check_descriptor(target.shown, target.descriptor)
        fd = os.dup(target.descriptor)
    else:
        try:  # no O_CREAT: a path that vanished meanwhile is not created as a regular file
            fd = os.open(target.file, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            raise _open_error(target.shown, target.file.parent, exc) from None
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            os.close(fd)
            raise InputError(f"{target.shown}: is no longer a device or FIFO; not written")
    raw = _OutputFile(fd, target.shown)
    stream = _stream(raw, binary)
    try:
        yield stream
        stream.flush()
        stream.close()
    except BaseException:
        _discard(raw, stream)
        raise


@contextmanager
def output_stream(
    path: str | Path | None, force: bool = False, binary: bool = False
) -> Iterator[IO]:
    """stdout, or the `-o PATH` file (`-` means stdout): see atomic_file."""
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
