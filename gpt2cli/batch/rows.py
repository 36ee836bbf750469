"""Input rows of a batch job: each has an id, a text (or the error that keeps it from having one)
and, in the OpenAI batch format, its own parameters.

Rows are numbered from 1 over all inputs in order: by line for txt, jsonl and openai (blank
lines are skipped but counted), by record for csv and parquet. Without an id field a row's id is
`NUMBER-HASH` (its number and the start of its text's SHA-256), stable across runs of one input.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gpt2cli.errors import InputError

INPUT_FORMATS = ("jsonl", "csv", "parquet", "txt", "openai")
LINE_FORMATS = ("jsonl", "txt", "openai")  # read line by line
EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
    ".parquet": "parquet", ".pq": "parquet", ".txt": "txt", ".text": "txt",
}  # fmt: skip
DEFAULT_TEXT_FIELD = "text"
AZURE_TEXT_FIELD = "input_string"  # Azure ML batch endpoints' CSV column for text generation
# The OpenAI batch format: the endpoint each task answers, and the body field holding the text.
OPENAI_URLS = {"generate": "/v1/completions", "embed": "/v1/embeddings"}
OPENAI_TEXT = {"generate": "prompt", "embed": "input"}
OPENAI_NAMES = {"max_tokens": "max_new_tokens", "n": "num_return_sequences"}
OPENAI_IGNORED = frozenset({"model", "stream", "user"})  # accepted, no effect


@dataclass
class Row:
    """One input row."""

    id: str
    number: int  # 1-based line or record number over all inputs
    text: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # per-row parameters (engine names)
    error: str | None = None


@dataclass(frozen=True)
class Fields:
    """Where a row's text and id are (--text-field, --id-field)."""

    text: str = DEFAULT_TEXT_FIELD
    id: str | None = None
    text_given: bool = False  # --text-field was given (else csv may fall back to input_string)


def detect_format(path: str, given: str | None) -> str:
    """The input format of `path`: `given`, else from its extension (jsonl whose first line
    is an OpenAI batch request reads as openai)."""
    if given is not None:
        return given
    suffix = Path(path).suffix.lower()
    fmt = EXTENSIONS.get(suffix)
    if fmt is None:
        known = ", ".join(sorted(EXTENSIONS))
        raise InputError(
            reason=f"cannot tell the input format from the extension {suffix or '(none)'}",
            hint=f"known: {known}; or pass {{input_format}}",
            where=path,
        )
    if fmt == "jsonl" and _looks_like_openai(path):
        return "openai"
    return fmt


def _looks_like_openai(path: str) -> bool:
    try:
        with open(path, "rb") as stream:
            for raw in stream:
                if raw.strip():
                    first = json.loads(raw)
                    return isinstance(first, dict) and "custom_id" in first and "body" in first
    except (OSError, ValueError):
        return False
    return False


def stable_id(number: int, text: str) -> str:
    """The id of a row without an id field: its number and the start of its text's hash."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{number}-{digest[:12]}"


def text_error(text: Any, name: str) -> str | None:
    """Why `text` (field `name`) cannot be a row's text, or None."""
    if text is None:
        return f"no field {name!r}"
    if not isinstance(text, str):
        return f"{name}: expected a string, got {type(text).__name__}"
    if not text.strip():
        return "empty text"
    for at, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":  # an undecodable byte, kept by surrogateescape
            offset = len(text[:at].encode("utf-8", "surrogateescape"))
            return f"invalid UTF-8 at byte offset {offset}"
        if char == "\0":
            return "contains a NUL character"
    return None


def _id_value(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def record_row(number: int, record: dict[str, Any], fields: Fields) -> Row:
    """A row from a csv, parquet or jsonl record."""
    text = record.get(fields.text)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    error = text_error(text, fields.text)
    key = text if isinstance(text, str) else json.dumps(record, sort_keys=True, default=str)
    row_id = stable_id(number, key)
    if fields.id is not None:
        given = _id_value(record.get(fields.id))
        if given is None:
            error = error or f"no usable id field {fields.id!r}"
        else:
            row_id = given
    return Row(row_id, number, text if error is None else None, error=error)


def line_row(number: int, line: str, fmt: str, fields: Fields, task: str) -> Row | None:
    """A row from one line of a txt, jsonl or openai file (decoded with surrogateescape, its
    line break removed); None for a blank line."""
    if not line.strip():
        return None
    if fmt == "txt":
        return Row(stable_id(number, line), number, line, error=text_error(line, "text"))
    try:
        record = json.loads(line)
    except ValueError as exc:
        return Row(stable_id(number, line), number, error=f"not JSON: {exc}")
    if not isinstance(record, dict):
        return Row(stable_id(number, line), number, error="not a JSON object")
    if fmt == "openai":
        return openai_row(number, line, record, task)
    return record_row(number, record, fields)


def openai_row(number: int, line: str, request: dict[str, Any], task: str) -> Row:
    """A row from one request of the OpenAI batch format: custom_id, url, body."""
    from gpt2cli.generation_params import BY_NAME
    from gpt2cli.request_formats import check_type

    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return Row(stable_id(number, line), number, error="custom_id: expected a string")
    row = Row(custom_id, number)
    body = request.get("body")
    url = request.get("url", OPENAI_URLS.get(task))
    if task not in OPENAI_URLS:
        row.error = f"the OpenAI batch format has no endpoint for {task}"
    elif url != OPENAI_URLS[task]:
        row.error = f"url: {url!r} is not {OPENAI_URLS[task]} (batch {task})"
    elif not isinstance(body, dict):
        row.error = "body: expected an object"
    if row.error is not None:
        return row
    assert isinstance(body, dict)
    name = OPENAI_TEXT[task]
    text = body.get(name)
    row.error = text_error(text, f"body.{name}")
    if row.error is not None:
        return row
    row.text = text
    for key, value in body.items():
        if key == name or key in OPENAI_IGNORED:
            continue
        engine_name = OPENAI_NAMES.get(key, key)
        if task != "generate" or engine_name not in BY_NAME:
            row.error = f"body.{key}: not a parameter gpt2cli takes"
            return row
        if value is None:
            continue
        try:
            row.params[engine_name] = check_type(engine_name, value, f"body.{key}")
        except InputError as exc:
            row.error = exc.render()
            return row
    return row


def _open(path: str, data: bytes | None) -> BinaryIO:
    if data is not None:
        return io.BytesIO(data)
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the callers' with
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None


def read_lines(path: str, data: bytes | None = None) -> Iterator[str]:
    """A file's lines (split at \n only), decoded with surrogateescape (bad bytes are a row's
    error, not the job's), without their line breaks."""
    with _open(path, data) as stream:
        for raw in stream:
            yield raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", "surrogateescape")


def csv_text_field(path: str, columns: Sequence[str], fields: Fields) -> Fields:
    """The fields of a csv or parquet file, checked against its columns; an Azure ML CSV
    (`input_string`) is read without --text-field."""
    if fields.text not in columns:
        if not fields.text_given and AZURE_TEXT_FIELD in columns:
            fields = Fields(AZURE_TEXT_FIELD, fields.id, fields.text_given)
        else:
            raise InputError(
                reason=f"no column {fields.text!r} (columns: {', '.join(columns) or 'none'})",
                hint="pass {text_field} NAME",
                where=path,
            )
    if fields.id is not None and fields.id not in columns:
        raise InputError(f"{path}: no column {fields.id!r} for --id-field")
    return fields


def iter_rows(paths: Sequence[str], formats: Sequence[str], fields: Fields,
              task: str) -> Iterator[Row]:
    """The rows of every input, in order, numbered on from one file to the next."""
    start = 0
    for path, fmt in zip(paths, formats, strict=True):
        last = start
        for last, row in file_rows(path, None, fmt, fields, task, start):  # noqa: B007
            if row is not None:
                yield row
        start = last


def file_rows(path: str, data: bytes | None, fmt: str, fields: Fields, task: str,
              start: int) -> Iterator[tuple[int, Row | None]]:
    """(number, row) for each line or record of one input (`data`: its bytes, else read from
    `path`), numbered from `start` + 1; the row is None for a blank line."""
    number = start
    if fmt in LINE_FORMATS:
        for line in read_lines(path, data):
            number += 1
            yield number, line_row(number, line, fmt, fields, task)
    elif fmt == "csv":
        for file_fields, record in _csv_records(path, data, fields):
            number += 1
            yield number, record_row(number, record, file_fields)
    else:
        for file_fields, record in _parquet_records(path, data, fields):
            number += 1
            yield number, record_row(number, record, file_fields)


def count_numbers(path: str, fmt: str, fields: Fields) -> int:
    """How many numbers `file_rows` gives `path` (lines or records), for numbering the next
    file without reading its rows (the Ray engine reads files apart)."""
    if fmt in LINE_FORMATS:
        with _open(path, None) as stream:
            return sum(1 for _ in stream)
    if fmt == "csv":
        return sum(1 for _ in _csv_records(path, None, fields))
    reader = _pyarrow_parquet().ParquetFile(path)
    csv_text_field(path, reader.schema_arrow.names, fields)
    return reader.metadata.num_rows


def _csv_records(path: str, data: bytes | None,
                 fields: Fields) -> Iterator[tuple[Fields, dict[str, Any]]]:
    import csv

    try:
        with io.TextIOWrapper(_open(path, data), encoding="utf-8", errors="surrogateescape",
                              newline="") as stream:  # fmt: skip
            reader = csv.DictReader(stream)
            file_fields = csv_text_field(path, reader.fieldnames or [], fields)
            for record in reader:
                yield file_fields, record
    except csv.Error as exc:
        raise InputError(f"{path}: not CSV: {exc}") from None


def _parquet_records(path: str, data: bytes | None,
                     fields: Fields) -> Iterator[tuple[Fields, dict[str, Any]]]:
    parquet = _pyarrow_parquet()
    try:
        if data is not None:
            import pyarrow as pa

            reader = parquet.ParquetFile(pa.BufferReader(data))
        else:
            reader = parquet.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not Parquet: {exc}") from None
    file_fields = csv_text_field(path, reader.schema_arrow.names, fields)
    columns = [file_fields.text] + ([file_fields.id] if file_fields.id else [])
    for batch in reader.iter_batches(columns=columns, batch_size=4096):
        for record in batch.to_pylist():
            yield file_fields, record


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise InputError(
            "Parquet needs pyarrow: pip install 'gpt2cli[parquet]'"
        ) from None
    return parquet
