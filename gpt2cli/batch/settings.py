"""How a batch job reads, writes and runs (everything but what it computes: tasks.TaskSpec)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2cli.batch.rows import Fields

DEFAULT_SHARD_ROWS = 1000


@dataclass(frozen=True)
class RaySettings:
    address: str | None = None  # None: a local instance ("auto" or RAY_ADDRESS: a cluster)
    num_workers: int = 1
    cpus_per_worker: int = 1
    init_options: dict[str, Any] = field(default_factory=dict)  # ray.init extras (tests)


@dataclass(frozen=True)
class JobSettings:
    """Where a job reads and writes, and how (everything but what it computes)."""

    inputs: Sequence[str]
    output_dir: Path
    input_format: str | None = None  # None: from each file's extension
    fields: Fields = field(default_factory=Fields)
    output_format: str = "jsonl"
    shard_rows: int = DEFAULT_SHARD_ROWS
    resume: bool = False
    overwrite: bool = False
    max_errors: int | None = None
    engine: str = "local"
    ray: RaySettings = field(default_factory=RaySettings)
    command: Sequence[str] = ()
