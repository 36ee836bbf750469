"""Where texts come from: arguments, files (`-` is stdin), or piped stdin.

Every subcommand reads its input through this module, so that errors (missing files, invalid
UTF-8, NUL bytes, empty input) read the same everywhere.
"""

from __future__ import annotations

import codecs
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
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
                    reason=f"invalid UTF-8 at byte offset {at}",
                    hint="pass {replace_invalid} to substitute U+FFFD",
                    where=source.name,
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
    pending: list[str] = []  # the current line's pieces: a long line is joined once
    number = 0
    for piece in pieces:
        *complete, rest = piece.split("\n")
        for line in complete:
            number += 1
            yield number, ("".join(pending) + line if pending else line).removesuffix("\r")
            pending = []
        if rest:
            pending.append(rest)
    if pending:
        yield number + 1, "".join(pending).removesuffix("\r")


def iter_texts(
    texts: Iterable[str] | None,
    files: Iterable[str] | None,
    *,
    lines: bool = False,
    replace_invalid: bool = False,
    drop_final_newline: bool = False,
) -> Iterator[Text]:
    """Yield every input text. With `lines`, each non-blank line is its own text (streamed).
    `drop_final_newline` drops exactly one line break ("\n" or "\r\n") from the end of each
    file or stdin text, the one that `echo` and editors add (generate and embed ask for it)."""
    produced = 0
    for source in resolve_sources(texts, files):
        if lines:
            for number, line in iter_lines(iter_decoded(source, replace_invalid)):
                if line.strip():
                    produced += 1
                    yield Text(line, f"{source.name}:{number}")
        else:
            text = _read_all(source, replace_invalid)
            if drop_final_newline and source.path is not None and text.endswith("\n"):
                text = text[:-2] if text.endswith("\r\n") else text[:-1]
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
    drop_final_newline: bool = False,
) -> list[Text]:
    """All input texts in memory, for commands that batch them."""
    return list(
        iter_texts(
            texts, files, lines=lines, replace_invalid=replace_invalid,
            drop_final_newline=drop_final_newline,
        )
    )


# Whitespace to every regex engine the tokenizers use (Unicode White_Space), and characters
# that some engine or Python may also count as whitespace: no split is made next to those.
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_AMBIGUOUS = "\x1c-\x1f\u180e\u200b\u2060\ufeff"
ASCII_WHITESPACE = "\t\n\x0b\x0c\r "
# Pre-token classes that are ASCII (their Unicode classes are left alone: versions differ).
_LETTER, _DIGIT, _PUNCT = "A-Za-z", "0-9", "!-/:-@\\[-`{-~"
_PUNCT_NO_QUOTE = "!-&(-/:-@\\[-`{-~"  # a quote may open a contraction ('s, 'll, ...)
_LOOKBACK = (256, 8192)  # windows searched backwards for a split before the whole chunk


def _char_class(chars: Iterable[str]) -> str:
    return "[" + "".join(f"\\x{ord(c):02x}" for c in sorted(chars)) + "]"


@dataclass(frozen=True)
class SplitRule:
    """Where a text may be cut so that its pieces tokenize exactly as the whole text, for a
    byte-level BPE tokenizer with GPT-2's pre-tokenizer regex.

    The regex has no look-behind, so matching restarts identically at a point where it splits
    anyway; its look-ahead and `$` only look at whitespace runs. Split points p (between
    text[p-1] and text[p]), none inside a special token:
    - a non-whitespace character, then whitespace: a pre-token always ends there;
    - inside a whitespace run, before its last character when a non-whitespace character that
      starts no special token follows: the run but its last character is one pre-token, which
      the first piece ends with (matched by `\\s++$` there);
    - an ASCII letter, digit or punctuation mark next to one of another class (not after a
      quote): the possessive class runs end there;
    - inside a whitespace run (a pre-token, or two where the cut is), between ASCII
      whitespace characters that no token of the vocabulary holds next to each other
      (`joinable` lists the pairs that some token holds): BPE never merges across that point,
      so it encodes the two sides separately;
    - inside a run of a `paired` character c, whose only token holding cc is cc itself, at an
      even offset from the start of the run (the start of the chunk, which is such a point):
      BPE pairs the run off from its start, whatever follows it.
    The first three need no vocabulary; `joinable` and `paired` come from it (`from_vocab`).
    """

    joinable: frozenset[str] = frozenset(a + b for a in ASCII_WHITESPACE for b in ASCII_WHITESPACE)
    paired: str = ""
    specials: tuple[str, ...] = ()

    @classmethod
    def from_vocab(cls, tokens: Iterable[bytes], specials: Iterable[str] = ()) -> SplitRule:
        """The rule for a vocabulary of token byte strings."""
        joined = b"\0".join(tokens)  # no pair of whitespace bytes spans the separator
        space = ASCII_WHITESPACE.encode()
        found = re.findall(rb"[" + re.escape(space) + rb"]{2,}", joined)
        joinable = {run[i : i + 2].decode() for run in found for i in range(len(run) - 1)}
        paired = ""
        for char in ASCII_WHITESPACE:
            double = (char * 2).encode()
            if char * 2 in joinable and joined.count(double) == 1 and re.search(
                rb"(?:^|\0)" + re.escape(double) + rb"(?:\0|$)", joined
            ) and (char * 3).encode() not in joined:
                paired += char
        return cls(frozenset(joinable), paired, tuple(specials))

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        """Matches the character before each split point (consuming it scans faster)."""
        ws, nonws = f"[{_WS}]", f"[^{_WS}{_AMBIGUOUS}]"
        starts = "".join(re.escape(s[0]) for s in self.specials if s)
        alternatives = [
            f"{nonws}(?={ws})",
            f"{ws}(?={ws}[^{_WS}{_AMBIGUOUS}{starts}])",
            f"[{_LETTER}](?=[{_DIGIT}{_PUNCT}])",
            f"[{_DIGIT}](?=[{_LETTER}{_PUNCT}])",
            f"[{_PUNCT_NO_QUOTE}](?=[{_LETTER}{_DIGIT}])",
        ]
        for first in ASCII_WHITESPACE:
            seconds = [b for b in ASCII_WHITESPACE if first + b not in self.joinable]
            if seconds:
                alternatives.append(f"{_char_class(first)}(?={_char_class(seconds)})")
        return re.compile("|".join(alternatives))

    def _inside_special(self, text: str, at: int) -> bool:
        for special in self.specials:
            size = len(special)
            if size > 1 and text.find(special, max(0, at - size + 1), at + size - 1) >= 0:
                return True
        return False

    @cached_property
    def lookahead(self) -> int:
        """Characters after a split point that decide it: the rest of the text, or this many."""
        return max([2, *map(len, self.specials)])

    def last_split(self, text: str, begin: int, limit: int, final: bool = True) -> int:
        """The last split point p in begin < p <= limit, for a chunk that starts at `begin` (a
        split point itself), or -1; unless `final`, `text` may continue past its end."""
        limit = min(limit, len(text) - (1 if final else self.lookahead))
        best = -1
        char = text[begin] if begin < len(text) else ""
        if char and char in self.paired:  # a run of it at the chunk start: even offsets
            head = text[begin : limit + 2]
            best = begin + (min(limit - begin, len(head) - len(head.lstrip(char)) - 1) & ~1)
            best = best if best >= begin + 2 else -1
            if best >= limit - 1:
                return best
        for window in (*_LOOKBACK, limit):
            start = max(begin + 1, limit - window)
            points = [m.end() for m in self._pattern.finditer(text, start - 1, limit + 2)]
            for point in reversed(points):
                if start <= point <= limit and not self._inside_special(text, point):
                    return max(best, point)
            if start == begin + 1:
                break
        return best

    def next_split(self, text: str, start: int, final: bool = True) -> int:
        """The first split point p >= start (p > 0) in `text`, or -1; unless `final`, `text`
        may continue past its end."""
        stop = len(text) - (1 if final else self.lookahead)
        for match in self._pattern.finditer(text, max(start, 1) - 1, stop + 2):
            if match.end() <= stop and not self._inside_special(text, match.end()):
                return match.end()
        return -1


# Safe for any byte-level BPE vocabulary with GPT-2's pre-tokenizer.
ANY_VOCAB_SPLITS = SplitRule(specials=("<|endoftext|>",))
# The shipped GPT-2 vocabulary: only \n\n among ASCII whitespace pairs (tests check it).
GPT2_SPLITS = SplitRule(frozenset({"\n\n"}), "\n", ("<|endoftext|>",))


def split_chunks(
    pieces: Iterable[str], chunk_chars: int, rule: SplitRule | None = ANY_VOCAB_SPLITS
) -> Iterator[str]:
    """Cut a text, given as decoded pieces, into chunks of about `chunk_chars` (longer where
    the text has no split point) that tokenize exactly as the whole text; one chunk when
    `rule` is None. Each character is searched a bounded number of times: linear time."""
    if rule is None:
        yield "".join(pieces)
        return
    held: list[str] = []  # the chunk's start, past its target size, searched: no split point
    buffer = ""  # the rest of the chunk and what follows it
    for piece in chain(pieces, [None]):
        final = piece is None  # the end of the text: every split point can be decided
        buffer += piece or ""
        begin = 0
        while held or len(buffer) - begin > chunk_chars:
            if held:  # the first split point will do; the carried context was searched
                cut = rule.next_split(buffer, rule.lookahead, final)
            else:
                cut = rule.last_split(buffer, begin, begin + chunk_chars, final)
                if cut < 0:
                    cut = rule.next_split(buffer, begin + max(chunk_chars - 1, 1), final)
            if cut < 0:  # hold all but the last characters, which wait for what follows
                keep = len(buffer) - 2 * rule.lookahead
                if keep > begin and not final:
                    held.append(buffer[begin:keep])
                    buffer, begin = buffer[keep:], 0
                break
            held.append(buffer[begin:cut])
            yield "".join(held)
            held.clear()
            begin = cut
        buffer = buffer[begin:]
    held.append(buffer)
    if any(held):
        yield "".join(held)


def iter_safe_chunks(
    source: Source,
    chunk_chars: int,
    replace_invalid: bool = False,
    rule: SplitRule | None = ANY_VOCAB_SPLITS,
) -> Iterator[str]:
    """Yield the text of `source` in chunks that tokenize exactly as the whole text would."""
    blank: list[str] = []  # a blank start is held: a text that is all blank is an error
    chunks = split_chunks(iter_decoded(source, replace_invalid), chunk_chars, rule)
    for chunk in chunks:
        if not chunk.strip():
            blank.append(chunk)
            continue
        yield from blank
        yield chunk
        yield from chunks
        return
    raise _empty_error(source.name, "".join(blank))
