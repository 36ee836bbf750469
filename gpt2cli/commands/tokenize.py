"""`gpt2cli tokenize`: text to GPT-2 token ids and back."""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import chain, islice
from typing import IO, Annotated

import typer

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.inputs import Text, iter_safe_chunks, iter_texts, resolve_sources
from gpt2cli.outputs import (
    RecordWriter,
    check_output,
    escape_piece,
    output_stream,
    use_color,
    visible_controls,
)
from gpt2cli.tokenizer import Tokenizer, encode_stream, load_tokenizer, token_offsets

CHUNK_CHARS = 1 << 16  # one unit of parallel work in a streamed text (64K chars measured best)
BATCH = 16  # chunks (or lines) encoded together
OUTPUT = "Output"


def tokenize(
    texts: options.Texts = None,
    prompts: options.Prompts = None,
    files: options.Files = None,
    lines: options.Lines = False,
    replace_invalid: options.ReplaceInvalid = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="MODEL",
            help="Use this model's own tokenizer (Hub id or directory). [default: the built-in "
            "GPT-2 tokenizer]",
            callback=options.check_model,
        ),
    ] = None,
    tokens: Annotated[bool, typer.Option("--tokens", help="Print readable token pieces.")] = False,
    offsets: Annotated[
        bool, typer.Option("--offsets", help="Print character spans start:end.")
    ] = False,
    count: Annotated[bool, typer.Option("--count", "-c", help="Print token counts only.")] = False,
    truncate: Annotated[
        int | None,
        typer.Option(
            "--truncate",
            metavar="N",
            min=0,
            help="Print the text cut to its first N tokens (--from-end: its last N), exactly at "
            "a token boundary (as ttok -t).",
            show_default=False,
        ),
    ] = None,
    from_end: Annotated[
        bool, typer.Option("--from-end", help="--truncate keeps the last N tokens.")
    ] = False,
    decode: Annotated[
        bool, typer.Option("--decode", "-d", help="Read token ids and print the text.")
    ] = False,
    show: Annotated[
        bool, typer.Option("--show", help="Show the text with token boundaries coloured.")
    ] = False,
    no_parse_special: Annotated[
        bool,
        typer.Option("--no-parse-special", help="Tokenize '<|endoftext|>' as plain text."),
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            "-t",
            metavar="N",
            help="Encoder threads (default: all cores; at most 4 per CPU).",
            callback=options.check_threads,
        ),
    ] = None,
    output_format: options.FormatOpt = None,
    as_json: options.JsonFlag = False,
    as_jsonl: options.JsonlFlag = False,
    output: options.Output = None,
    force: options.Force = False,
) -> None:
    """Tokenize text with the GPT-2 tokenizer (built in; works offline).

    Prints token ids, one line per text. The tokenizer ships inside gpt2cli, so nothing is
    downloaded unless --model names another tokenizer. Input is read byte for byte: a final
    line break is a token too.
    """
    fmt = options.output_format(output_format, as_json, as_jsonl)
    _check_combination(fmt, tokens, offsets, count, truncate, from_end, decode, show)
    texts = [*(texts or []), *(prompts or [])]
    check_output(output, force)  # before any input is read or a tokenizer downloads
    tokenizer = load_tokenizer(model, parse_special=not no_parse_special)
    with output_stream(output, force) as out:
        if decode:
            for text in iter_texts(texts, files, lines=lines, replace_invalid=replace_invalid):
                _print_decoded(tokenizer, text, lines, out)
            return
        if show:
            color = use_color(out)
            for text in iter_texts(texts, files, lines=lines, replace_invalid=replace_invalid):
                out.write(_render_boundaries(tokenizer, text.text, color) + "\n")
            return
        encoded = _encoded(tokenizer, texts, files, lines, replace_invalid, threads)
        if truncate is not None:
            _write_truncated(tokenizer, encoded, truncate, from_end, fmt, lines, out)
        elif count:
            _write_counts(encoded, fmt, out)
        elif fmt == "text" and not (tokens or offsets):
            _write_ids(encoded, out)
        else:
            writer = RecordWriter(out, fmt, partial(_render_line, tokens=tokens))
            for index, (source, stream) in enumerate(encoded):
                ids = [i for chunk in stream for i in chunk]
                writer.write(_record(tokenizer, index, source, ids, tokens, offsets))
            writer.close()


def _check_combination(
    fmt: str,
    tokens: bool,
    offsets: bool,
    count: bool,
    truncate: int | None,
    from_end: bool,
    decode: bool,
    show: bool,
) -> None:
    """Refuse options that ask for two different outputs."""
    given = {"--decode": decode, "--show": show, "--truncate": truncate is not None}
    modes = [name for name, on in given.items() if on]
    if len(modes) > 1:
        raise InputError(f"{' and '.join(modes)} are exclusive")
    if modes:
        flags = {"--tokens": tokens, "--offsets": offsets, "--count": count}
        details = [name for name, on in flags.items() if on]
        if details:
            raise InputError(f"{modes[0]} prints text; {details[0]} does not apply to it")
    if modes and modes[0] != "--truncate" and fmt != "text":
        raise InputError(f"{modes[0]} prints text; --format {fmt} does not apply to it")
    if from_end and truncate is None:
        raise InputError("--from-end needs --truncate N")
    if count and (tokens or offsets):
        raise InputError(f"--count prints counts only; {'--tokens' if tokens else '--offsets'} "
                         "does not apply to it")
    if tokens and offsets and fmt == "text":
        raise InputError("--tokens and --offsets together need --format json or jsonl")


Encoded = Iterator[tuple[str, Iterator[list[int]]]]


def _encoded(tokenizer, texts, files, lines, replace_invalid, threads) -> Encoded:  # noqa: ANN001
    """(source, ids in pieces) per text, in input order. A whole text streams in chunks that
    encode exactly as the whole (bounded memory, in parallel); --lines encodes lines in batches.
    Each text's pieces must be consumed before the next text is asked for."""
    if lines:
        stream = iter_texts(texts, files, lines=True, replace_invalid=replace_invalid)
        while batch := list(islice(stream, BATCH)):
            encoded = tokenizer.encode_batch([t.text for t in batch], threads)
            for text, ids in zip(batch, encoded, strict=True):
                yield text.source, iter([ids])
        return
    for source in resolve_sources(texts, files):
        chunks = iter_safe_chunks(source, CHUNK_CHARS, replace_invalid, tokenizer.split_rule())
        yield source.name, encode_stream(tokenizer, chunks, threads, BATCH)


def _write_ids(encoded: Encoded, out: IO[str]) -> None:
    """Ids, one line per text, written as they are encoded (a huge text never sits in memory)."""
    for _, stream in encoded:
        first = True
        for ids in stream:
            if ids:
                out.write(("" if first else " ") + " ".join(map(str, ids)))
                first = False
        out.write("\n")


def _write_counts(encoded: Encoded, fmt: str, out: IO[str]) -> None:
    """Token counts: text prints the bare count for one text, `count<TAB>source` lines and a
    total for several (like wc); json/jsonl one record per text."""
    records = (
        {"index": index, "source": source, "token_count": sum(len(ids) for ids in stream)}
        for index, (source, stream) in enumerate(encoded)
    )
    if fmt != "text":
        writer = RecordWriter(out, fmt)
        for record in records:
            writer.write(record)
        writer.close()
        return
    first = next(records)
    second = next(records, None)
    if second is None:
        out.write(f"{first['token_count']}\n")
        return
    total = 0
    for record in chain([first, second], records):
        total += record["token_count"]
        out.write(f"{record['token_count']}\t{record['source']}\n")
    out.write(f"{total}\ttotal\n")


def _record(
    tokenizer: Tokenizer,
    index: int,
    source: str,
    ids: list[int],
    with_pieces: bool,
    with_offsets: bool,
) -> dict:
    record: dict = {"index": index, "source": source, "ids": ids}
    pieces = [tokenizer.token_bytes(i) for i in ids] if with_pieces or with_offsets else []
    if with_pieces:
        record["pieces"] = [p.decode("utf-8", errors="replace") for p in pieces]
        record["piece_bytes"] = [p.hex() for p in pieces]  # exact where a piece splits a character
    if with_offsets:
        record["offsets"] = [list(span) for span in token_offsets(pieces)]
    record["token_count"] = len(ids)
    return record


def _render_line(record: dict, tokens: bool) -> str:
    """The text form of a record: quoted pieces (--tokens) or start:end spans (--offsets)."""
    if tokens:
        return " ".join(escape_piece(bytes.fromhex(h)) for h in record["piece_bytes"]) + "\n"
    return " ".join(f"{s}:{e}" for s, e in record["offsets"]) + "\n"


def _starts_inside_character(tokenizer: Tokenizer, token_id: int) -> bool:
    """Whether a token's first byte continues a UTF-8 character begun by the token before."""
    return tokenizer.token_bytes(token_id)[:1] in _CONTINUATION_BYTES


_CONTINUATION_BYTES = {bytes([b]) for b in range(0x80, 0xC0)}


def cut_tokens(
    tokenizer: Tokenizer,
    stream: Iterable[list[int]],
    limit: int,
    from_end: bool = False,
    count_all: bool = True,
) -> tuple[list[int], int]:
    """The first `limit` ids of a text given in pieces (`from_end`: the last `limit`), and the
    text's token count. The cut is a token boundary that is also a character boundary: where
    it would split a character (a token holding part of its UTF-8 bytes), the token holding
    that part is dropped too, so the kept ids decode to an exact piece of the text, in at
    most `limit` tokens. Memory holds `limit` ids, never the text's. Unless `count_all`, the
    head stops encoding once it has what it needs (the count is then a lower bound)."""
    total = 0
    if from_end:
        tail: deque[int] = deque(maxlen=limit)
        for ids in stream:
            tail.extend(ids)
            total += len(ids)
        kept = list(tail)
        start = 0
        if total > limit:
            while start < len(kept) and _starts_inside_character(tokenizer, kept[start]):
                start += 1
        return kept[start:], total
    head: list[int] = []
    for ids in stream:
        if len(head) <= limit:
            head.extend(ids[: limit + 1 - len(head)])
        total += len(ids)
        if len(head) > limit and not count_all:
            break
    end = min(limit, len(head))
    while 0 < end < len(head) and _starts_inside_character(tokenizer, head[end]):
        end -= 1
    return head[:end], total


def _write_truncated(
    tokenizer: Tokenizer,
    encoded: Encoded,
    limit: int,
    from_end: bool,
    fmt: str,
    per_line: bool,
    out: IO[str],
) -> None:
    """--truncate N: each text cut to N tokens. Text output is the exact text (a line break
    added after each --lines text, between texts that do not end with one, and at the end on a
    terminal); json/jsonl records carry it as `text`."""
    ended = True  # whether the output so far ends a line

    def render(record: dict) -> str:
        nonlocal ended
        text = record["text"] + ("\n" if per_line else "")
        separator = "" if ended else "\n"
        ended = text.endswith("\n") or (not text and ended)
        return separator + text

    writer = RecordWriter(out, fmt, render)
    for index, (source, stream) in enumerate(encoded):
        kept, total = cut_tokens(tokenizer, stream, limit, from_end, count_all=fmt != "text")
        writer.write(
            {
                "index": index,
                "source": source,
                "text": tokenizer.decode_bytes(kept).decode("utf-8", errors="replace"),
                "token_count": len(kept),
                "truncated_tokens": max(total - len(kept), 0),
            }
        )
    if fmt == "text" and not ended and out.isatty():
        out.write("\n")
    writer.close()


_ID_SEPARATORS = re.compile(r"[\s,]+")


def parse_ids(text: Text) -> list[int]:
    """Token ids written space-, comma- or newline-separated, or as a JSON array."""
    body = text.text.strip()
    try:
        if body.startswith("["):
            values = json.loads(body)
            if not isinstance(values, list) or not all(type(v) is int for v in values):
                raise ValueError
            return values
        return [int(v) for v in _ID_SEPARATORS.split(body) if v]
    except (ValueError, RecursionError):
        raise InputError(
            f"{text.source}: expected token ids (integers), got {body[:40]!r}"
        ) from None


def _print_decoded(tokenizer: Tokenizer, text: Text, per_line: bool, out: IO[str]) -> None:
    ids = parse_ids(text)
    tokenizer.check_ids(ids)
    data = tokenizer.decode_bytes(ids)
    if per_line or (out.isatty() and not data.endswith(b"\n")):
        data += b"\n"
    out.flush()
    out.buffer.write(data)  # the exact bytes, even where the ids end inside a character
    out.buffer.flush()


_BACKGROUNDS = ("48;5;153", "48;5;223", "48;5;194", "48;5;225", "48;5;230")


def _render_boundaries(tokenizer: Tokenizer, text: str, color: bool) -> str:
    """The text with alternating colours per token (or '|' between tokens without colour).

    Terminal controls in the text (ESC, BEL, CR, ...) are shown as escapes, never sent raw."""
    segments: list[str] = []
    pending = b""
    for token_id in tokenizer.encode(text):
        pending += tokenizer.token_bytes(token_id)
        try:
            segments.append(visible_controls(pending.decode("utf-8")))
            pending = b""
        except UnicodeDecodeError:
            continue  # a partial character: join it with the next token
    if pending:
        segments.append(visible_controls(pending.decode("utf-8", errors="replace")))
    if not color:
        return "|".join(segments)
    coloured = [
        f"\x1b[30;{_BACKGROUNDS[i % len(_BACKGROUNDS)]}m{s}\x1b[0m" for i, s in enumerate(segments)
    ]
    return "".join(coloured) + f"\n\x1b[2m{len(segments)} tokens\x1b[0m"
