"""A batch job's output directory: `part-NNNNN.jsonl|parquet` shards, each written to a hidden
temporary name and renamed into place (whole or absent), `_manifest.json`, and `_SUCCESS`, written
last. `prepare` refuses a non-empty directory unless resuming or overwriting, and for --resume
reads the ids of the finished shards."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2cli.errors import InputError

if TYPE_CHECKING:
    from gpt2cli.batch.rows import Row

OUTPUT_FORMATS = ("jsonl", "parquet")
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
SHARD = re.compile(r"part-(\d{5,})\.(jsonl|parquet)")
TEMPORARY = re.compile(r"\.part-\d{5,}\.(jsonl|parquet)\.tmp(\.\d+)?")
MANIFEST_FORMAT = "gpt2cli-batch/1"


@dataclass
class Finished:
    """What finished shards already hold."""

    ids: set[str] = field(default_factory=set)
    rows: int = 0
    errors: int = 0
    shards: int = 0  # the next shard number
    manifest: dict[str, Any] | None = None
    complete: bool = False  # _SUCCESS is there


def _ours(name: str) -> bool:
    return bool(SHARD.fullmatch(name) or TEMPORARY.fullmatch(name)) or name in (MANIFEST, SUCCESS)


def prepare(directory: Path, resume: bool, overwrite: bool, output_format: str) -> Finished:
    """Make `directory` ready for a job: created when missing; refused when it holds anything
    and neither --resume nor --overwrite is given; emptied of a job's files by --overwrite;
    read back (temporary files removed) by --resume."""
    shown = str(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{shown}: not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(os.listdir(directory))
    if not names:
        return Finished()
    if not resume and not overwrite:
        raise InputError(
            reason="not empty",
            hint="pass {resume} to continue the job there, or {overwrite} to start again",
            where=shown,
        )
    foreign = [name for name in names if not _ours(name)]
    if foreign:
        raise InputError(
            reason=f"holds files that are not a batch job's ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''})",
            hint="choose another directory",
            where=shown,
        )
    if overwrite:
        for name in names:
            (directory / name).unlink()
        return Finished()
    for name in names:
        if TEMPORARY.fullmatch(name):  # a shard that was being written when the job died
            (directory / name).unlink()
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise InputError(f"{shown}: no {MANIFEST}: not a batch job's output, cannot --resume")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{manifest_path}: unreadable: {exc}") from None
    finished = Finished(manifest=manifest, complete=(directory / SUCCESS).exists())
    for name in names:
        match = SHARD.fullmatch(name)
        if match is None:
            continue
        if match.group(2) != output_format:
            raise InputError(f"{shown}: {name} is {match.group(2)}, this job writes "
                             f"{output_format}")  # fmt: skip
        for row_id, failed in _read_ids(directory / name):
            if row_id in finished.ids:
                raise InputError(f"{directory / name}: row {row_id!r} is in two shards")
            finished.ids.add(row_id)
            finished.rows += 1
            finished.errors += failed
        finished.shards = max(finished.shards, int(match.group(1)) + 1)
    return finished


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """A job's manifest, if `directory` holds a readable one (nothing is changed)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _read_ids(path: Path) -> list[tuple[str, bool]]:
    """(id, failed) of each row of a shard."""
    if path.suffix == ".parquet":
        from gpt2cli.batch.rows import _pyarrow_parquet

        records = _pyarrow_parquet().read_table(path).to_pylist()
    else:
        with open(path, encoding="utf-8") as stream:
            records = [json.loads(line) for line in stream if line.strip()]
    return [record_id(record) for record in records]


def record_id(record: dict[str, Any]) -> tuple[str, bool]:
    """A written record's row id and whether the row failed (plain and OpenAI shapes)."""
    if "custom_id" in record:
        response = record.get("response") or {}
        return record["custom_id"], response.get("status_code") != 200
    return record["id"], record.get("error") is not None


def write_shard(directory: Path, number: int, records: Sequence[dict[str, Any]],
                output_format: str) -> Path:
    """Shard `number`, written to a temporary name, flushed to disk and renamed into place."""
    final = directory / f"part-{number:05d}.{output_format}"
    temporary = directory / f".{final.name}.tmp"
    if output_format == "parquet":
        _write_parquet(temporary, records)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
    else:
        from gpt2cli.outputs import to_json

        with open(temporary, "w", encoding="utf-8") as stream:
            stream.writelines(to_json(record) + "\n" for record in records)
            stream.flush()
            os.fsync(stream.fileno())
    os.replace(temporary, final)
    _sync_directory(directory)
    return final


def _write_parquet(path: Path, records: Sequence[dict[str, Any]]) -> None:
    import pyarrow as pa

    from gpt2cli.batch.rows import _pyarrow_parquet

    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    columns = {name: [record.get(name) for record in records] for name in names}
    table = pa.table(columns)
    if "error" in names and pa.types.is_null(table.schema.field("error").type):
        table = table.set_column(table.schema.get_field_index("error"), "error",
                                 table.column("error").cast(pa.string()))  # fmt: skip
    _pyarrow_parquet().write_table(table, path)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """A small JSON file, whole or absent."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n",
                         encoding="utf-8")  # fmt: skip
    os.replace(temporary, path)


def write_success(directory: Path) -> None:
    """`_SUCCESS`, the last file a finished job writes."""
    (directory / SUCCESS).write_bytes(b"")
    _sync_directory(directory)


def weights_digest(directory: Path) -> str:
    """SHA-256 over a model directory's weight files (names, then contents)."""
    digest = hashlib.sha256()
    patterns = ("*.safetensors", "*.bin", "*.onnx", "*.onnx_data", "*.onnx.data", "*.pt")
    files = sorted({path for pattern in patterns for path in directory.glob(pattern)})
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def output_record(row: Row, fields: dict[str, Any] | None, openai: OpenAIShape | None
                  ) -> dict[str, Any]:
    """A row's output record: id, the task's fields and error; or the OpenAI batch output
    line for OpenAI-format input."""
    if openai is not None:
        return openai.record(row, fields)
    return {"id": row.id, **(fields or {}), "error": row.error}


@dataclass(frozen=True)
class OpenAIShape:
    """The OpenAI batch output shape: one line per request, its response body as the endpoint
    would answer (completions or embeddings), a 400 body for a request that failed."""

    task: str
    model: str
    created: int

    def record(self, row: Row, fields: dict[str, Any] | None) -> dict[str, Any]:
        digest = hashlib.sha256(row.id.encode("utf-8", "surrogateescape")).hexdigest()[:24]
        if fields is None:
            response = {"status_code": 400, "request_id": f"req_{digest}", "body": {
                "error": {"message": row.error, "type": "invalid_request_error",
                          "param": None, "code": None}}}  # fmt: skip
        else:
            response = {"status_code": 200, "request_id": f"req_{digest}",
                        "body": self._body(digest, fields)}  # fmt: skip
        return {"id": f"batch_req_{digest}", "custom_id": row.id, "response": response,
                "error": None}  # fmt: skip

    def _body(self, digest: str, fields: dict[str, Any]) -> dict[str, Any]:
        prompt_tokens = fields["token_count"]
        if self.task == "embed":
            return {"object": "list", "model": self.model, "data": [
                {"object": "embedding", "index": 0, "embedding": fields["embedding"]}],
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
        choices = [
            {"index": i, "text": seq["generated_text"], "logprobs": None,
             "finish_reason": seq["finish_reason"]}
            for i, seq in enumerate(fields["sequences"])
        ]
        completion = sum(seq["token_count"] for seq in fields["sequences"])
        return {"id": f"cmpl-{digest}", "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}  # fmt: skip
