"""`gpt2cli tokenize`: text to GPT-2 token ids and back."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from itertools import islice
from typing import Annotated

import typer

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.inputs import Text, iter_safe_chunks, iter_texts, resolve_sources
from gpt2cli.outputs import escape_piece, to_json, use_color, visible_controls
from gpt2cli.tokenizer import Tokenizer, encode_stream, load_tokenizer, token_offsets

CHUNK_CHARS = 1 << 16  # one unit of parallel work in a streamed text (64K chars measured best)
BATCH = 16  # chunks (or lines) encoded together


def tokenize(
    texts: options.Texts = None,
    files: options.Files = None,
    lines: options.Lines = False,
    replace_invalid: options.ReplaceInvalid = False,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Use this model's own tokenizer (Hub id or directory)."),
    ] = None,
    tokens: Annotated[bool, typer.Option("--tokens", help="Print readable token pieces.")] = False,
    offsets: Annotated[
        bool, typer.Option("--offsets", help="Print character spans start:end.")
    ] = False,
    count: Annotated[bool, typer.Option("--count", "-c", help="Print token counts only.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of objects.")] = False,
    as_jsonl: Annotated[
        bool, typer.Option("--jsonl", help="Print one JSON object per text.")
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
            help="Encoder threads (default: all cores; at most 4 per CPU).",
            callback=options.check_threads,
        ),
    ] = None,
) -> None:
    """Tokenize text with the GPT-2 tokenizer (built in; works offline).

    Prints token ids, one line per text. The tokenizer ships inside gpt2cli, so nothing is
    downloaded unless --model names another tokenizer.
    """
    if as_json and as_jsonl:
        raise InputError("--json and --jsonl are exclusive")
    if tokens and offsets and not (as_json or as_jsonl):
        raise InputError("--tokens and --offsets together need --json or --jsonl")
    tokenizer = load_tokenizer(model, parse_special=not no_parse_special)
    out = sys.stdout

    if decode:
        for text in iter_texts(texts, files, lines=lines, replace_invalid=replace_invalid):
            _print_decoded(tokenizer, text, lines)
        return
    if show:
        for text in iter_texts(texts, files, lines=lines, replace_invalid=replace_invalid):
            out.write(_render_boundaries(tokenizer, text.text, use_color()) + "\n")
        return
    if as_json or as_jsonl or tokens or offsets:
        records = _records(tokenizer, texts, files, lines, replace_invalid, threads)
        if as_json:
            objects = [_as_object(tokenizer, text, ids, count) for text, ids in records]
            out.write(to_json(objects, indent=2) + "\n")
            return
        for text, ids in records:
            if as_jsonl:
                out.write(to_json(_as_object(tokenizer, text, ids, count)) + "\n")
            elif tokens:
                out.write(" ".join(escape_piece(tokenizer.token_bytes(i)) for i in ids) + "\n")
            else:
                pieces = [tokenizer.token_bytes(i) for i in ids]
                out.write(" ".join(f"{s}:{e}" for s, e in token_offsets(pieces)) + "\n")
        return

    counts = _stream_ids(tokenizer, texts, files, lines, replace_invalid, threads, count)
    if count:
        if len(counts) == 1:
            out.write(f"{counts[0][1]}\n")
        else:
            for source, n in counts:
                out.write(f"{n}\t{source}\n")
            out.write(f"{sum(n for _, n in counts)}\ttotal\n")


def _records(
    tokenizer, texts, files, lines, replace_invalid, threads
) -> Iterator[tuple[Text, list[int]]]:  # noqa: ANN001
    stream = iter_texts(texts, files, lines=lines, replace_invalid=replace_invalid)
    while batch := list(islice(stream, BATCH)):
        yield from zip(batch, tokenizer.encode_batch([t.text for t in batch], threads), strict=True)


def _as_object(tokenizer: Tokenizer, text: Text, ids: list[int], count_only: bool) -> dict:
    obj: dict = {"source": text.source, "count": len(ids)}
    if not count_only:
        pieces = [tokenizer.token_bytes(i) for i in ids]
        obj["ids"] = ids
        obj["tokens"] = [p.decode("utf-8", errors="replace") for p in pieces]
        obj["token_bytes"] = [p.hex() for p in pieces]
        obj["offsets"] = [list(span) for span in token_offsets(pieces)]
    return obj


def _stream_ids(
    tokenizer, texts, files, lines, replace_invalid, threads, count_only
) -> list[tuple[str, int]]:  # noqa: ANN001
    """Print ids (or count them) with bounded memory; returns (source, count) per text."""
    out = sys.stdout
    counts: list[tuple[str, int]] = []
    if lines:
        for text, ids in _records(tokenizer, texts, files, True, replace_invalid, threads):
            counts.append((text.source, len(ids)))
            if not count_only:
                out.write(" ".join(map(str, ids)) + "\n")
        return counts
    for source in resolve_sources(texts, files):
        chunks = iter_safe_chunks(source, CHUNK_CHARS, replace_invalid, tokenizer.split_rule())
        total = 0
        for ids in encode_stream(tokenizer, chunks, threads, BATCH):
            if ids and not count_only:
                out.write((" " if total else "") + " ".join(map(str, ids)))
            total += len(ids)
        if not count_only:
            out.write("\n")
        counts.append((source.name, total))
    return counts


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


def _print_decoded(tokenizer: Tokenizer, text: Text, per_line: bool) -> None:
    ids = parse_ids(text)
    tokenizer.check_ids(ids)
    data = tokenizer.decode_bytes(ids)
    if per_line or (sys.stdout.isatty() and not data.endswith(b"\n")):
        data += b"\n"
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


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
