"""`gpt2cli batch --engine ray` on a real local Ray instance (num_cpus=2, one for the module):
the same rows as the local engine (ids, texts for the same seed, embeddings within 1e-5), the
same shard layout, and resume filtering the rows already written."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clirun import Result, run_in_process
from tests.test_batch import by_id, read_output

pytest.importorskip("ray.data", reason="the ray extra is not installed")
pytestmark = pytest.mark.ray

ROWS = 200


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One quiet local Ray for every test here (starting one is the slow part)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ray") / "rows.txt"
    path.write_text("".join(f"Row {i} says something about {i % 7}\n" for i in range(ROWS)))
    return path


def _ok(result: Result) -> Result:
    assert result.returncode == 0, result.err
    return result


def _both(args: tuple[str, ...], out: Path, *ray_args: str) -> tuple[dict, dict]:
    _ok(run_in_process(*args, "--output-dir", str(out / "local")))
    _ok(run_in_process(*args, "--output-dir", str(out / "ray"), "--engine", "ray", *ray_args))
    shards = sorted(p.name for p in (out / "ray").iterdir())
    assert shards[:2] == ["_SUCCESS", "_manifest.json"] and shards[2] == "part-00000.jsonl"
    manifest = json.loads((out / "ray" / "_manifest.json").read_text())
    assert manifest["engine"] == "ray" and "ray" in manifest["libraries"]
    return by_id(read_output(out / "local")), by_id(read_output(out / "ray"))


def test_ray_generate_equals_local(ray_instance: None, rows_file: Path, tiny_onnx_dir: Path,
                                   tmp_path: Path) -> None:  # fmt: skip
    args = ("batch", "generate", str(rows_file), "-m", str(tiny_onnx_dir), "--max-new-tokens",
            "3", "--do-sample", "--seed", "5", "--shard-rows", "50")  # fmt: skip
    local, ray = _both(args, tmp_path, "--num-workers", "2")
    assert len(local) == ROWS and list(sorted(local)) == list(sorted(ray))
    for row_id, record in local.items():
        assert ray[row_id]["sequences"] == record["sequences"], row_id


def test_ray_embed_equals_local_and_resumes(ray_instance: None, rows_file: Path,
                                            tiny_onnx_dir: Path, tmp_path: Path) -> None:
    import numpy as np

    args = ("batch", "embed", str(rows_file), "-m", str(tiny_onnx_dir), "--shard-rows", "80")
    local, ray = _both(args, tmp_path, "--cpus-per-worker", "2")
    assert sorted(local) == sorted(ray)
    for row_id, record in local.items():
        np.testing.assert_allclose(ray[row_id]["embedding"], record["embedding"], atol=1e-5)
    # resume on Ray: drop the last shard, and only its rows are computed again
    out = tmp_path / "ray"
    last = sorted(out.glob("part-*"))[-1]
    lost = len(last.read_text().splitlines())
    last.unlink()
    (out / "_SUCCESS").unlink()
    again = _ok(run_in_process(*args, "--output-dir", str(out), "--engine", "ray", "--resume",
                               "--format", "json"))  # fmt: skip
    assert json.loads(again.out)["written"] == lost
    assert sorted(by_id(read_output(out))) == sorted(local)
