"""Where texts come from: arguments, files (`-` is stdin), or piped stdin.

Every subcommand reads its input through this module, so that errors (missing files, invalid
UTF-8, NUL bytes, empty input) read the same everywhere.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from gpt2cli.errors import InputError

READ_BLOCK = 1 << 20
# Commands that hold all of their input in memory refuse more than this; `tokenize` streams instead.
MAX_IN_MEMORY_BYTES = 512 << 20
STDIN = "-"


@dataclass(frozen=True)
class Text:
    """One input text and a human-readable name for where it came from."""

    text: str
    source: str


@dataclass(frozen=True)
class Source:
    """A place to read from: an argument string, a file path, or stdin."""

    name: str
    path: str | None = None
    value: str | None = None

    def open(self) -> BinaryIO:
        if self.path == STDIN:
            if sys.stdin is None:  # started with stdin closed (`<&-`)
                raise InputError(f"{self.name}: stdin is closed")
            return sys.stdin.buffer
        assert self.path is not None
        try:
            return open(self.path, "rb")  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            raise InputError(f"{self.name}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{self.name}: is a directory, not a file") from None
        except PermissionError:
            raise InputError(f"{self.name}: permission denied") from None
        except OSError as exc:
            raise InputError(f"{self.name}: cannot open: {exc.strerror}") from None


def resolve_sources(texts: Iterable[str] | None, files: Iterable[str] | None) -> list[Source]:
    """Name the sources for the given arguments, falling back to piped stdin."""
    sources = [Source(f"argument {i}", value=t) for i, t in enumerate(texts or (), 1)]
    files = list(files or ())
    if files.count(STDIN) > 1:
        raise InputError("'-' (stdin) can be given only once")
    sources += [Source("<stdin>" if f == STDIN else f, path=f) for f in files]
    if not sources:
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("no input: give TEXT arguments, -f FILE, or pipe text on stdin")
        sources.append(Source("<stdin>", path=STDIN))
    return sources


def _check_block(block: bytes, source: str, offset: int) -> None:
    nul = block.find(b"\0")
    if nul >= 0:
        raise InputError(
            f"{source}: NUL byte at byte offset {offset + nul}: this looks like binary"
        )


def iter_decoded(source: Source, replace_invalid: bool = False) -> Iterator[str]:
    """Yield the decoded text of `source` in pieces of arbitrary length, with bounded memory."""
    if source.value is not None:
        if "\0" in source.value:
            raise InputError(f"{source.name}: contains a NUL character")
        yield source.value
        return
    decoder = codecs.getincrementaldecoder("utf-8")("replace" if replace_invalid else "strict")
    stream = source.open()
    offset = 0
    try:
        while True:
            try:
                block = stream.read(READ_BLOCK)
            except IsADirectoryError:
                raise InputError(f"{source.name}: is a directory, not a file") from None
            except OSError as exc:
                raise InputError(f"{source.name}: read failed: {exc.strerror}") from None
            _check_block(block or b"", source.name, offset)
            # The decoder holds back an incomplete character; error positions count from it.
            pending = len(decoder.getstate()[0])
            try:
                piece = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                at = offset - pending + exc.start
                raise InputError(
                    f"{source.name}: invalid UTF-8 at byte offset {at} "
                    "(pass --replace-invalid to substitute U+FFFD)"
                ) from None
            if piece:
                yield piece
            if not block:
                return
            offset += len(block)
    finally:
        if source.path != STDIN:
            stream.close()


def _read_all(source: Source, replace_invalid: bool) -> str:
    parts: list[str] = []
    size = 0
    for piece in iter_decoded(source, replace_invalid):
        size += len(piece)
        if size > MAX_IN_MEMORY_BYTES:
            raise InputError(f"{source.name}: input is over {MAX_IN_MEMORY_BYTES >> 20} MiB")
        parts.append(piece)
    return "".join(parts)


def _empty_error(name: str, text: str) -> InputError:
    what = "empty" if not text else "only whitespace"
    return InputError(f"{name}: input is {what}")


def iter_lines(pieces: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Split decoded pieces into (line number, line) pairs, without line terminators."""
    pending = ""
    number = 0
    for piece in pieces:
        pending += piece
        *complete, pending = pending.split("\n")
        for line in complete:
            number += 1
            yield number, line.removesuffix("\r")
    if pending:
        yield number + 1, pending.removesuffix("\r")


def iter_texts(
    texts: Iterable[str] | None,
    files: Iterable[str] | None,
    *,
    lines: bool = False,
    replace_invalid: bool = False,
) -> Iterator[Text]:
    """Yield every input text. With `lines`, each non-blank line is its own text (streamed)."""
    produced = 0
    for source in resolve_sources(texts, files):
        if lines:
            for number, line in iter_lines(iter_decoded(source, replace_invalid)):
                if line.strip():
                    produced += 1
                    yield Text(line, f"{source.name}:{number}")
        else:
            text = _read_all(source, replace_invalid)
            if not text.strip():
                raise _empty_error(source.name, text)
            produced += 1
            yield Text(text, source.name)
    if not produced:
        raise InputError("input has no non-blank lines")


def read_texts(
    texts: Iterable[str] | None,
    files: Iterable[str] | None,
    *,
    lines: bool = False,
    replace_invalid: bool = False,
) -> list[Text]:
    """All input texts in memory, for commands that batch them."""
    return list(iter_texts(texts, files, lines=lines, replace_invalid=replace_invalid))


def _safe_split(buffer: str, limit: int) -> int:
    """The last index <= limit where GPT-2's pre-tokenizer splits anyway, or -1.

    A split before a space or newline that follows a letter, digit or printable ASCII
    character is safe: no pre-token pattern spans from a non-space into a whitespace run,
    and the regex has no look-behind, so matching restarts identically there.
    """
    end = min(limit, len(buffer) - 1)
    while end > 0:
        space = max(buffer.rfind(" ", 0, end + 1), buffer.rfind("\n", 0, end + 1))
        if space <= 0:
            return -1
        before = buffer[space - 1]
        if "!" <= before <= "~" or before.isalnum():
            return space
        end = space - 1
    return -1


def iter_safe_chunks(
    source: Source, chunk_chars: int, replace_invalid: bool = False
) -> Iterator[str]:
    """Yield the text of `source` in chunks that tokenize exactly as the whole text would."""
    buffer = ""
    yielded = False
    for piece in iter_decoded(source, replace_invalid):
        buffer += piece
        while len(buffer) > chunk_chars:
            cut = _safe_split(buffer, chunk_chars)
            if cut <= 0:
                # No safe point in this window: look further, or keep the piece whole.
                cut = _safe_split(buffer, len(buffer))
                if cut <= 0:
                    break
            yield buffer[:cut]
            yielded = True
            buffer = buffer[cut:]
    if not yielded and not buffer.strip():
        raise _empty_error(source.name, buffer)
    if buffer:
        yield buffer
