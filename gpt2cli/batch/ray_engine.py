"""The Ray Data engine of `gpt2cli batch` (`--engine ray`, the `ray` extra).

Inputs are read with `ray.data.read_binary_files` (a file per task) and parsed by the local
engine's own reader (`rows.file_rows`), numbered from offsets the driver counts, so that ids,
per-row errors and seeds are the local engine's. Rows already written are dropped there
(--resume). `map_batches` runs a callable class: each actor opens the model once, with
--cpus-per-worker threads, and returns finished output records; the driver writes them into the
same shards, manifest and `_SUCCESS` as the local engine.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2cli.errors import InputError

if TYPE_CHECKING:
    from gpt2cli.batch.rows import Fields
    from gpt2cli.batch.settings import JobSettings
    from gpt2cli.batch.shards import OpenAIShape
    from gpt2cli.batch.tasks import TaskSpec

# The tested range: `map_batches(concurrency=...)` for actor pools (older releases took
# `compute=ActorPoolStrategy(...)`), `read_binary_files(include_paths=...)`.
RAY_RANGE = ((2, 40), (2, 61))
RAY_REQUIREMENT = "ray[data]>=2.40,<2.61"
MIN_ROWS_PER_CALL = 32  # rows handed to an actor at a time: see rows_per_call
CALLS_PER_WORKER = 4


def _version(text: str) -> tuple[int, int]:
    parts = (text.split(".") + ["0"])[:2]
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def check_ray() -> None:
    """Ray Data importable and in the tested range, or exit 2 naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(
            "--engine ray needs the 'ray' extra: pip install 'gpt2cli[ray]'"
        ) from None
    low, high = RAY_RANGE
    if not low <= _version(ray.__version__) < high:
        raise InputError(
            f"--engine ray: ray {ray.__version__} is outside the tested range "
            f"({RAY_REQUIREMENT}): pip install 'gpt2cli[ray]'"
        )


def _actor_pool(size: int) -> dict[str, Any]:
    """map_batches' request for `size` actors: `compute=ActorPoolStrategy(size=)` from Ray
    2.51 on (where `concurrency=` is deprecated), `concurrency=` before."""
    import ray

    if _version(ray.__version__) >= (2, 51):
        return {"compute": ray.data.ActorPoolStrategy(size=size)}
    return {"concurrency": size}


def _quiet() -> None:
    """No usage reporting (no network), no dashboard chatter, no progress bars on stderr."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _init(settings: JobSettings) -> bool:
    """ray.init unless this process already has Ray; True when it started it."""
    import ray

    if ray.is_initialized():
        return False
    _quiet()
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                               "logging_level": logging.WARNING}  # fmt: skip
    options.update(settings.ray.init_options)
    ray.init(address=settings.ray.address, **options)
    return True


def rows_per_call(rows: int, workers: int) -> int:
    """Rows per actor call: about CALLS_PER_WORKER calls per replica, so the replicas share the
    work evenly, but as many rows as the local engine hands the session at a time when there
    are enough (embed and score batch rows of similar length from within a call)."""
    from gpt2cli.session import BLOCK_TEXTS

    wanted = -(-rows // (CALLS_PER_WORKER * max(1, workers)))
    return max(MIN_ROWS_PER_CALL, min(BLOCK_TEXTS, wanted))


class _FileChunks:
    """A file's bytes in, its rows out as the local engine reads them (minus those done), in
    chunks of `size` rows: one chunk is one actor call."""

    def __init__(self, formats: dict[str, str], offsets: dict[str, int], fields: Fields,
                 task: str, done: frozenset[str], size: int) -> None:  # fmt: skip
        self.formats, self.offsets = formats, offsets
        self.fields, self.task, self.done = fields, task, done
        self.size = size

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        from gpt2cli.batch.rows import file_rows

        path = os.path.normpath(str(item["path"]))
        chunks: list[dict[str, Any]] = []
        chunk: list[Any] = []
        for _, row in file_rows(path, item["bytes"], self.formats[path], self.fields, self.task,
                                self.offsets[path]):  # fmt: skip
            if row is not None and row.id not in self.done:
                chunk.append([row.id, row.number, row.text, row.params, row.error])
                if len(chunk) == self.size:
                    chunks.append({"rows": json.dumps(chunk)})
                    chunk = []
        if chunk:
            chunks.append({"rows": json.dumps(chunk)})
        return chunks  # JSON text: Arrow would make a column of None NaN or null-typed


class _Runner:
    """One model replica: the session opens once per actor; each call computes a batch of
    rows and returns their output records (JSON text)."""

    def __init__(self, spec: TaskSpec, openai: OpenAIShape | None) -> None:
        from gpt2cli.batch.tasks import open_task
        from gpt2cli.errors import plain_name
        from gpt2cli.session import open_model

        self.session = open_model(spec.model)
        self.task = open_task(spec, self.session, plain_name)
        self.openai = openai

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from gpt2cli.batch.rows import Row
        from gpt2cli.batch.shards import output_record
        from gpt2cli.outputs import to_json

        rows = [Row(*fields) for chunk in batch["rows"] for fields in json.loads(str(chunk))]
        records = [to_json(output_record(row, fields, self.openai))
                   for row, fields in self.task.run(rows)]  # fmt: skip
        return {"records": np.array(["\n".join(records)], dtype=object)}


def run(spec: TaskSpec, settings: JobSettings, formats: Sequence[str], done: set[str],
        openai: OpenAIShape | None) -> Iterator[dict[str, Any]]:
    """The output records of the rows not yet done, computed on Ray Data, as they finish."""
    from gpt2cli.batch.rows import count_numbers

    check_ray()
    import ray

    paths = [os.path.normpath(str(Path(p).resolve())) for p in settings.inputs]
    offsets: dict[str, int] = {}
    start = 0
    for path, fmt in zip(paths, formats, strict=True):
        offsets[path] = start
        start += count_numbers(path, fmt, settings.fields)
    started = _init(settings)
    context = ray.data.DataContext.get_current()
    block_size = context.target_max_block_size
    try:
        context.enable_progress_bars = False
        context.execution_options.preserve_order = True
        # A block per chunk, so that every replica gets work (a repartition would need CPUs
        # that the replicas hold).
        context.target_max_block_size = 1
        # Reading and parsing take no CPU reservation: the replicas may hold every CPU.
        files = ray.data.read_binary_files(paths, include_paths=True, num_cpus=0)
        workers = settings.ray
        size = rows_per_call(start - len(done), workers.num_workers)
        chunks = files.flat_map(
            _FileChunks(dict(zip(paths, formats, strict=True)), offsets, settings.fields,
                        spec.task, frozenset(done), size),
            num_cpus=0,
        )
        results = chunks.map_batches(
            _Runner,
            fn_constructor_kwargs={"spec": spec, "openai": openai},
            batch_size=1,
            batch_format="numpy",
            num_cpus=workers.cpus_per_worker,
            **_actor_pool(workers.num_workers),
        )
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["records"]:
                for line in str(text).split("\n"):
                    yield json.loads(line)
    finally:
        context.target_max_block_size = block_size
        if started:
            ray.shutdown()
