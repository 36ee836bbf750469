"""`gpt2cli batch` on the local engine: every input format, shards renamed whole, the manifest,
`_SUCCESS` last, resume (after a real SIGKILL too), per-row errors and --max-errors, seeds that
follow row ids, and the OpenAI batch format round trip."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.clirun import Result, assert_one_line_error, run_in_process

TEXTS = ["Hello world", "The cat sat on the mat.", "A third text", "Four", "Five and last"]
GENERATE = ("--max-new-tokens", "4", "--do-sample", "--seed", "7")


def _ok(result: Result) -> Result:
    assert result.returncode == 0, result.err
    return result


def read_output(out: Path) -> list[dict[str, Any]]:
    """Every record of every shard, in shard order."""
    records: list[dict[str, Any]] = []
    for shard in sorted(out.glob("part-*")):
        if shard.suffix == ".parquet":
            import pyarrow.parquet as pq

            records += pq.read_table(shard).to_pylist()
        else:
            records += [json.loads(line) for line in shard.read_text().splitlines()]
    return records


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ids = [r.get("id", r.get("custom_id")) for r in records]
    assert len(ids) == len(set(ids)), "an id written twice"
    return dict(zip(ids, records, strict=True))


def write_inputs(directory: Path, texts: list[str]) -> dict[str, Path]:
    """The same rows (ids r0, r1, ...) in every input format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {fmt: directory / f"in.{fmt}" for fmt in ("jsonl", "csv", "parquet", "txt")}
    paths["jsonl"].write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                                      for i, t in enumerate(texts)))  # fmt: skip
    with open(paths["csv"], "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["id", "text"])
        writer.writerows([f"r{i}", t] for i, t in enumerate(texts))
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts}),
                   paths["parquet"])  # fmt: skip
    paths["txt"].write_text("".join(t + "\n" for t in texts))
    return paths


def test_every_input_format_gives_the_same_rows(tiny_model_dir: Path, tmp_path: Path) -> None:
    paths = write_inputs(tmp_path, TEXTS)
    outputs = {}
    for fmt, path in paths.items():
        out = tmp_path / f"out-{fmt}"
        id_args = () if fmt == "txt" else ("--id-field", "id")
        shown = _ok(run_in_process("batch", "embed", str(path), "--output-dir", str(out),
                                   "-m", str(tiny_model_dir), *id_args, "--format", "json"))
        summary = json.loads(shown.out)
        assert summary["rows"] == summary["written"] == len(TEXTS) and summary["errors"] == 0
        assert sorted(p.name for p in out.iterdir()) == [
            "_SUCCESS", "_manifest.json", "part-00000.jsonl"]
        outputs[fmt] = read_output(out)
    for fmt, records in outputs.items():
        if fmt == "txt":  # ids from the line number and a hash of the text
            assert [r["id"].split("-")[0] for r in records] == ["1", "2", "3", "4", "5"]
        else:
            assert [r["id"] for r in records] == [f"r{i}" for i in range(len(TEXTS))]
        assert [r["embedding"] for r in records] == [r["embedding"] for r in outputs["jsonl"]]
        assert all(r["error"] is None and r["token_count"] > 0 for r in records)
        assert set(records[0]) == {"id", "token_count", "truncated_tokens", "embedding", "error"}


def test_shards_manifest_and_success(tiny_model_dir: Path, tmp_path: Path) -> None:
    paths = write_inputs(tmp_path, TEXTS)
    out = tmp_path / "out"
    _ok(run_in_process("batch", "generate", str(paths["jsonl"]), "--output-dir", str(out),
                       "-m", str(tiny_model_dir), *GENERATE, "--shard-rows", "2",
                       "--output-format", "parquet"))  # fmt: skip
    names = sorted(p.name for p in out.iterdir())
    assert names == ["_SUCCESS", "_manifest.json", "part-00000.parquet", "part-00001.parquet",
                     "part-00002.parquet"]  # no temporary names left
    records = read_output(out)
    assert [len(r["sequences"]) for r in records] == [1] * len(TEXTS)
    assert set(records[0]) == {"id", "prompt", "token_count", "truncated_tokens", "sequences",
                               "error"}  # fmt: skip
    assert set(records[0]["sequences"][0]) == {"generated_text", "ids", "token_count",
                                               "finish_reason", "stop_string"}  # fmt: skip
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["rows"] == {"total": 5, "written": 5, "errors": 0}
    assert manifest["model"]["backend"] == "torch"
    assert len(manifest["model"]["weights_sha256"]) == 64
    assert manifest["options"]["seed"] == 7 and "numpy" in manifest["libraries"]
    assert isinstance(manifest["command"], list)
    # _SUCCESS is the last file written
    assert (out / "_SUCCESS").stat().st_mtime_ns >= (out / "_manifest.json").stat().st_mtime_ns


def test_non_empty_output_resume_and_overwrite(tiny_model_dir: Path, tmp_path: Path) -> None:
    paths = write_inputs(tmp_path, TEXTS)
    out = tmp_path / "out"
    args = ("batch", "generate", str(paths["txt"]), "--output-dir", str(out),
            "-m", str(tiny_model_dir), "--max-new-tokens", "3", "--do-sample")  # fmt: skip
    _ok(run_in_process(*args))
    first = read_output(out)
    assert "not empty" in assert_one_line_error(run_in_process(*args))
    done = _ok(run_in_process(*args, "--resume", "--format", "json"))
    assert json.loads(done.out)["written"] == 0 and read_output(out) == first
    # without --seed a resumed job keeps the seed it started with; a different one is refused
    refused = assert_one_line_error(run_in_process(*args, "--resume", "--seed", "1"))
    assert "different options" in refused and "--overwrite" in refused
    refused = assert_one_line_error(run_in_process(*args[:-3], "--max-new-tokens", "5",
                                                   "--resume"))  # fmt: skip
    assert "different options" in refused
    _ok(run_in_process(*args, "--overwrite", "--seed", "1"))
    assert len(read_output(out)) == len(TEXTS)
    (out / "notes.txt").write_text("mine")
    assert "not a batch job's" in assert_one_line_error(run_in_process(*args, "--overwrite"))
    assert (out / "notes.txt").exists()


def test_row_errors_and_max_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    long_text = "word " * 1100  # past the context of 1024 tokens
    source.write_bytes(
        b'{"id": "ok1", "text": "Hello"}\n'
        b'{"id": "empty", "text": "  "}\n'
        b"not json\n"
        + json.dumps({"id": "long", "text": long_text}).encode() + b"\n"
        b'{"id": "nofield", "body": "x"}\n'
        b'{"id": "ok2", "text": "World"}\n'
    )
    out = tmp_path / "out"
    args = ("batch", "generate", str(source), "--output-dir", str(out), "-m",
            str(tiny_model_dir), "--id-field", "id", "--max-new-tokens", "2")  # fmt: skip
    stopped = run_in_process(*args, "--max-errors", "2", "--shard-rows", "100")
    assert stopped.returncode == 1 and "--max-errors 2" in stopped.err, stopped.err
    assert not (out / "_SUCCESS").exists()
    assert len(read_output(out)) == 3  # the rows done before the stop are kept
    done = _ok(run_in_process(*args, "--resume", "--format", "json"))
    assert json.loads(done.out)["errors"] == 4
    records = by_id(read_output(out))
    ids = list(records)
    assert ids[:2] == ["ok1", "empty"] and ids[3:] == ["long", "nofield", "ok2"]
    assert ids[2].startswith("3-")  # no id field on a line that is not JSON: number-hash
    assert records["empty"]["error"] == "empty text"
    assert records[ids[2]]["error"].startswith("not JSON")
    assert "context" in records["long"]["error"]
    assert records["nofield"]["error"] == "no field 'text'"
    assert records["ok1"]["error"] is None and records["ok2"]["sequences"]


def test_invalid_utf8_is_a_row_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"good line\nbad \xff byte\n")
    out = tmp_path / "out"
    _ok(run_in_process("batch", "score", str(source), "--output-dir", str(out), "-m",
                       str(tiny_model_dir)))  # fmt: skip
    good, bad = read_output(out)
    assert good["error"] is None and good["perplexity"] > 0 and good["ctx"] == 1024
    assert bad["error"] == "invalid UTF-8 at byte offset 4"


def test_seeds_follow_row_ids(tiny_model_dir: Path, tmp_path: Path) -> None:
    forward, backward = tmp_path / "f.jsonl", tmp_path / "b.jsonl"
    rows = [json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)]
    forward.write_text("".join(rows))
    backward.write_text("".join(reversed(rows)))
    results = []
    for path, batch_size in ((forward, "8"), (backward, "2")):
        out = tmp_path / f"out-{path.stem}"
        _ok(run_in_process("batch", "generate", str(path), "--output-dir", str(out), "-m",
                           str(tiny_model_dir), "--id-field", "id", *GENERATE,
                           "--batch-size", batch_size))  # fmt: skip
        results.append(by_id(read_output(out)))
    assert results[0] == results[1]
    texts = {r["sequences"][0]["generated_text"] for r in results[0].values()}
    assert len(texts) == len(TEXTS)


def test_openai_batch_round_trip(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "requests.jsonl"
    requests = [
        {"custom_id": "a", "method": "POST", "url": "/v1/completions",
         "body": {"model": "gpt2", "prompt": "Once upon a time", "max_tokens": 3, "n": 2,
                  "temperature": 0.8, "seed": 5}},
        {"custom_id": "b", "method": "POST", "url": "/v1/completions",
         "body": {"model": "gpt2", "prompt": "Hello", "max_tokens": 2}},
        {"custom_id": "c", "method": "POST", "url": "/v1/completions",
         "body": {"prompt": "Hi", "temperature": "hot"}},
        {"custom_id": "d", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
    ]  # fmt: skip
    source.write_text("".join(json.dumps(r) + "\n" for r in requests))
    out = tmp_path / "out"
    _ok(run_in_process("batch", "generate", str(source), "--output-dir", str(out), "-m",
                       str(tiny_model_dir)))  # fmt: skip
    lines = read_output(out)
    assert [line["custom_id"] for line in lines] == ["a", "b", "c", "d"]
    a, b, c, d = lines
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_") and line["error"] is None
    body = a["response"]["body"]
    assert a["response"]["status_code"] == 200 and body["object"] == "text_completion"
    assert [choice["index"] for choice in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 6
    assert all(choice["finish_reason"] == "length" for choice in body["choices"])
    assert not body["choices"][0]["text"].startswith("Once upon")  # no echo, as OpenAI
    assert b["response"]["body"]["usage"]["completion_tokens"] == 2
    assert c["response"]["status_code"] == 400
    assert "body.temperature" in c["response"]["body"]["error"]["message"]
    assert d["response"]["status_code"] == 400
    assert "url" in d["response"]["body"]["error"]["message"]
    # resume reads custom_id back: nothing is computed twice
    again = _ok(run_in_process("batch", "generate", str(source), "--output-dir", str(out),
                               "-m", str(tiny_model_dir), "--resume", "--format", "json"))
    assert json.loads(again.out)["written"] == 0


def test_azure_csv_input_string(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "azure.csv"
    source.write_text('input_string\n"Once upon a time"\n"Hello, world"\n')
    out = tmp_path / "out"
    _ok(run_in_process("batch", "generate", str(source), "--output-dir", str(out), "-m",
                       str(tiny_model_dir), "--max-new-tokens", "2", "--no-return-full-text"))
    records = read_output(out)
    assert [r["prompt"] for r in records] == ["Once upon a time", "Hello, world"]


def test_bad_usage_is_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    base = ("batch", "embed", str(source), "--output-dir", str(tmp_path / "o"), "-m",
            str(tiny_model_dir))  # fmt: skip
    cases = [
        ((*base, "--max-new-tokens", "3"), "--max-new-tokens applies to batch generate"),
        ((*base, "--resume", "--overwrite"), "exclusive"),
        ((*base, "--num-workers", "2"), "--engine ray"),
        (("batch", "embed", str(tmp_path / "none.jsonl"), "--output-dir", "o"), "no such file"),
        (("batch", "score", str(source), "--output-dir", str(tmp_path / "o"),
          "--input-format", "openai"), "no scoring endpoint"),
    ]  # fmt: skip
    for args, message in cases:
        assert message in assert_one_line_error(run_in_process(*args))
    assert not (tmp_path / "o").exists()


def test_ray_missing_or_out_of_range_names_the_extra(tmp_path: Path) -> None:
    """A real process with a stand-in `ray` package first on the path."""
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    for version, message in (("2.30.0", "outside the tested range"), (None, "'ray' extra")):
        fake = tmp_path / f"fake-{version}" / "ray"
        (fake / "data").mkdir(parents=True)
        init = f"__version__ = {version!r}\n" if version else "raise ImportError('no ray')\n"
        (fake / "__init__.py").write_text(init)
        (fake / "data" / "__init__.py").write_text("")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(fake.parent), str(Path(__file__).resolve().parent.parent),
             os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "gpt2cli", "batch", "embed", str(source), "--output-dir",
             str(tmp_path / "o"), "--engine", "ray"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "gpt2cli[ray]" in proc.stderr and proc.stderr.count("\n") == 1


def test_resume_after_sigkill(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A real process killed with SIGKILL mid-job, then --resume: every id exactly once and
    the same rows as an uninterrupted run."""
    source = tmp_path / "in.txt"
    rows = 100
    source.write_text("".join(f"Line {i}: the story goes on\n" for i in range(rows)))
    args = [str(source), "-m", str(tiny_model_dir), "--max-new-tokens", "3", "--do-sample",
            "--seed", "11", "--shard-rows", "5", "--batch-size", "16"]  # fmt: skip
    killed = tmp_path / "killed"
    env = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2cli", "batch", "generate", *args, "--output-dir",
         str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(killed.glob("part-*")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the job ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "_SUCCESS").exists()
    partial = read_output(killed)
    assert 0 < len(partial) < rows
    _ok(run_in_process("batch", "generate", *args, "--output-dir", str(killed), "--resume"))
    assert (killed / "_SUCCESS").exists()
    assert not [p for p in killed.iterdir() if p.name.startswith(".")]
    whole = tmp_path / "whole"
    _ok(run_in_process("batch", "generate", *args, "--output-dir", str(whole)))
    resumed = read_output(killed)
    assert len(resumed) == rows and by_id(resumed) == by_id(read_output(whole))
    assert resumed[: len(partial)] == partial  # the finished shards were kept as they were
