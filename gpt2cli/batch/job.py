"""Running a batch job: the checks before any work, the manifest, resume, and the local engine
(one process, one session, rows streamed through the task). The Ray engine (ray_engine.py)
shares all of it but where the rows are computed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2cli.batch import shards
from gpt2cli.batch.rows import Row, detect_format, iter_rows
from gpt2cli.batch.settings import JobSettings
from gpt2cli.errors import EXIT_FAILURE, CliError, InputError

if TYPE_CHECKING:
    from gpt2cli.batch.tasks import TaskSpec
    from gpt2cli.session import Session

ENGINES = ("local", "ray")


class TooManyErrors(CliError):
    """--max-errors rows failed: the job stops (exit 1); finished shards stay for --resume."""

    exit_code = EXIT_FAILURE


@dataclass
class Summary:
    """What a job did (the command prints it)."""

    output_dir: str
    task: str
    engine: str
    rows: int = 0  # rows in the input
    written: int = 0  # rows written by this run
    resumed: int = 0  # rows found written by an earlier run
    errors: int = 0  # failed rows, over every run
    shards: int = 0
    seconds: float = 0.0
    complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        rate = self.written / self.seconds if self.seconds > 0 else None
        return {**self.__dict__, "seconds": round(self.seconds, 3),
                "rows_per_second": None if rate is None else round(rate, 3)}  # fmt: skip


class ShardSink:
    """Records in, shards out: every `shard_rows` records one shard is written, so a killed job
    loses at most the rows of the shard being filled."""

    def __init__(self, settings: JobSettings, first_shard: int, errors: int,
                 progress: Any = None) -> None:  # fmt: skip
        self.settings = settings
        self.next_shard = first_shard
        self.errors = errors
        self.written = 0
        self.records: list[dict[str, Any]] = []
        self.progress = progress

    def add(self, record: dict[str, Any], failed: bool) -> None:
        self.records.append(record)
        self.written += 1
        if self.progress is not None:
            self.progress.advance()
        if failed:
            self.errors += 1
            if self.progress is not None:
                self.progress.update(description=f"batch ({self.errors} errors)")
            limit = self.settings.max_errors
            if limit is not None and self.errors >= limit:
                self.flush()
                raise TooManyErrors(
                    f"{self.errors} rows failed (--max-errors {limit}): stopped; the rows done "
                    f"are in {self.settings.output_dir} (--resume continues)"
                )
        if len(self.records) >= self.settings.shard_rows:
            self.flush()

    def flush(self) -> None:
        if self.records:
            s = self.settings
            shards.write_shard(s.output_dir, self.next_shard, self.records, s.output_format)
            self.next_shard += 1
            self.records = []


def library_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("gpt2cli", "numpy", "tokenizers", "onnxruntime", "torch", "transformers",
                 "pyarrow", *extra):  # fmt: skip
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def model_identity(session: Session) -> dict[str, Any]:
    """The model as the manifest records it: what was asked for, where it is, its revision
    (a Hub snapshot's commit) and a hash of its weight files."""
    directory = session.located.directory
    revision = directory.name if directory.parent.name == "snapshots" else None
    return {
        "model": session.located.name,
        "directory": str(directory.resolve()),
        "revision": revision,
        "weights_sha256": shards.weights_digest(directory),
        "backend": session.located.backend,
        "dtype": session.options.dtype,
        "device": session.options.device,
    }


def _comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """What must match for --resume: the task and its options, the model's weights, backend
    and dtype, how rows are read, and the output format."""
    model = manifest.get("model", {})
    return {
        "options": manifest.get("options"),
        "model weights": model.get("weights_sha256"),
        "backend": model.get("backend"),
        "dtype": model.get("dtype"),
        "input": manifest.get("input"),
        "output_format": manifest.get("output_format"),
    }


def check_resume(old: dict[str, Any], new: dict[str, Any], directory: Path) -> None:
    """Refuse to continue a job that was started with a different model or options."""
    if old.get("format") != shards.MANIFEST_FORMAT:
        raise InputError(f"{directory}: {shards.MANIFEST} is not a gpt2cli batch manifest")
    before, now = _comparable(old), _comparable(new)
    changed = [key for key in now if before.get(key) != now[key]]
    if changed:
        details = "; ".join(f"{key}: {_short(before.get(key))} then, {_short(now[key])} now"
                            for key in changed)  # fmt: skip
        raise InputError(
            reason=f"was started with a different {', '.join(changed)} ({details})",
            hint="use the same model and options, or {overwrite} to start again",
            where=str(directory),
        )


def _short(value: Any) -> str:
    from gpt2cli.outputs import to_json

    text = to_json(value)
    return text if len(text) <= 80 else text[:77] + "..."


def input_formats(settings: JobSettings, task: str) -> list[str]:
    """Each input's format, checked (every input exists; OpenAI format for all or none)."""
    formats = []
    for path in settings.inputs:
        if path == "-":
            raise InputError("batch reads files, not stdin: give INPUT paths")
        if not Path(path).exists():
            raise InputError(f"{path}: no such file")
        if Path(path).is_dir():
            raise InputError(f"{path}: is a directory, not a file")
        formats.append(detect_format(path, settings.input_format))
    if "openai" in formats and set(formats) != {"openai"}:
        raise InputError("the OpenAI batch format cannot be mixed with other inputs")
    if "openai" in formats and task == "score":
        raise InputError("the OpenAI batch format has no scoring endpoint: use jsonl, csv, "
                         "parquet or txt for batch score")  # fmt: skip
    return formats


def scan_ids(rows: Iterable[Row]) -> int:
    """Count the input's rows, refusing duplicate ids (resume counts on them being unique)."""
    seen: dict[str, int] = {}
    for row in rows:
        first = seen.setdefault(row.id, row.number)
        if first != row.number:
            raise InputError(
                reason=f"id {row.id!r} is on rows {first} and {row.number}",
                hint="ids must be unique: fix the input or drop {id_field}",
            )
    return len(seen)


def run(task: str, spec_for: Callable[[int | None], TaskSpec], session: Session,
        settings: JobSettings, name: Callable[[str], str]) -> Summary:
    """Run a job: check, prepare OUT, write the manifest, compute the missing rows with the
    chosen engine, then the final manifest and `_SUCCESS`. `spec_for(seed)` builds the job's
    TaskSpec (`seed`: the one a resumed job started with, None for a new job)."""
    from gpt2cli.batch.tasks import open_task
    from gpt2cli.outputs import Progress, log

    started = time.perf_counter()
    formats = input_formats(settings, task)
    old = shards.read_manifest(settings.output_dir) if settings.resume else None
    spec = spec_for(old.get("options", {}).get("seed") if old else None)
    if formats[0] == "openai":  # completions answer the continuation only (no echo)
        spec = replace(spec, full_text=False)
    task_runner = open_task(spec, session, name)  # option errors before OUT is touched
    rows = lambda: iter_rows(settings.inputs, formats, settings.fields, spec.task)  # noqa: E731
    total = scan_ids(rows())
    finished = shards.prepare(settings.output_dir, settings.resume, settings.overwrite,
                              settings.output_format)  # fmt: skip
    old = finished.manifest
    summary = Summary(str(settings.output_dir), spec.task, settings.engine)
    created = int(old.get("created", time.time())) if old else int(time.time())
    manifest: dict[str, Any] = {
        "format": shards.MANIFEST_FORMAT,
        "command": list(settings.command),
        "created": created,
        "task": spec.task,
        "engine": settings.engine,
        "model": model_identity(session),
        "options": spec.options(),
        "input": {"paths": [str(Path(p).resolve()) for p in settings.inputs],
                  "formats": formats, "text_field": settings.fields.text,
                  "id_field": settings.fields.id},
        "output_format": settings.output_format,
        "shard_rows": settings.shard_rows,
        "libraries": library_versions(["ray"] if settings.engine == "ray" else []),
    }
    if old is not None:
        check_resume(old, manifest, settings.output_dir)
        manifest["input"]["paths"] = old.get("input", {}).get("paths", manifest["input"]["paths"])
    openai = None
    if formats[0] == "openai":
        openai = shards.OpenAIShape(spec.task, session.located.name, created)
    summary.rows, summary.resumed = total, finished.rows
    summary.errors = finished.errors
    if finished.complete:
        log(f"{settings.output_dir}: the job is already complete ({finished.rows} rows)")
        summary.complete, summary.shards = True, finished.shards
        summary.seconds = time.perf_counter() - started
        return summary
    manifest["rows"] = {"total": total, "written": finished.rows, "errors": finished.errors}
    manifest["complete"] = False
    shards.write_json(settings.output_dir / shards.MANIFEST, manifest)

    todo = total - finished.rows
    with Progress(f"batch {spec.task}", total=todo, unit="rows") as progress:
        sink = ShardSink(settings, finished.shards, finished.errors, progress)
        pending = (row for row in rows() if row.id not in finished.ids)
        if settings.engine == "ray":
            from gpt2cli.batch import ray_engine

            results = ray_engine.run(spec, settings, formats, finished.ids, openai)
        else:
            session.load()
            results = task_runner.run(pending)
        try:
            for record, failed in _records(results, openai):
                sink.add(record, failed)
        finally:
            sink.flush()
    summary.written, summary.errors, summary.shards = sink.written, sink.errors, sink.next_shard
    manifest["rows"] = {"total": total, "written": finished.rows + sink.written,
                        "errors": sink.errors}  # fmt: skip
    manifest["complete"] = True
    shards.write_json(settings.output_dir / shards.MANIFEST, manifest)
    shards.write_success(settings.output_dir)
    summary.complete = True
    summary.seconds = time.perf_counter() - started
    if sink.errors:
        log(f"warning: {sink.errors} of {total} rows failed: their records carry the error")
    return summary


def _records(results: Iterable[Any], openai: shards.OpenAIShape | None
             ) -> Iterator[tuple[dict[str, Any], bool]]:
    """Output records (and whether each row failed) from the engine's results: (row, fields)
    pairs from the local engine, finished records from Ray."""
    for result in results:
        if isinstance(result, dict):
            yield result, shards.record_id(result)[1]
        else:
            row, fields = result
            yield shards.output_record(row, fields, openai), row.error is not None
