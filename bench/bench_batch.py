"""Batch speed: `gpt2cli batch` (local engine; Ray Data with 1 worker x 2 threads and 2 workers x
1 thread) against the plain `--lines` path of the same command.

Run:  .venv/bin/python bench/bench_batch.py [--rows 2000] [--tasks generate,embed,score]
          [--no-ray] [--rounds 1]
      .venv/bin/python bench/bench_batch.py --smoke      # 24 rows on the 2-layer model

Rows: the first N non-blank lines of the shared WikiText-2 raw test file (../shared/data; the
benchmark says so and exits 0 when it is absent). Model: the gpt2 124M shape with random weights,
its int8 ONNX export (bench/common.ensure_models). generate makes 32 new tokens per row, greedy;
embed is mean pooling; score uses the default window. Every case is a real `gpt2cli` process
timed from start to exit (model load and, for Ray, starting a local Ray instance included);
cases take turns task by task, the first rotating per round, so that load from other processes
falls on each alike. Reported: rows/s per case and the ratio to the `--lines` path. Results go
to bench/out/bench_batch.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import GPT2CLI, OUT, WIKITEXT, describe_model, ensure_models, log, machine
from common import parse_args as parse_common
from common import smoke as is_smoke

NEW_TOKENS = 32
SMOKE_ROWS = 24

# case: how it runs (the plain path is the baseline)
CASES = {
    "lines": "gpt2cli TASK --lines -f ROWS -t 2",
    "local": "gpt2cli batch TASK ROWS -t 2",
    "ray-1x2": "gpt2cli batch TASK ROWS --engine ray --num-workers 1 --cpus-per-worker 2",
    "ray-2x1": "gpt2cli batch TASK ROWS --engine ray --num-workers 2 --cpus-per-worker 1",
}


def task_args(task: str) -> list[str]:
    if task == "generate":
        return ["--max-new-tokens", str(NEW_TOKENS), "--greedy"]
    return []


def command(case: str, task: str, model: Path, rows: Path, work: Path) -> list[str]:
    if case == "lines":
        fmt = ["--format", "jsonl"]
        return [GPT2CLI, task, "--lines", "-f", str(rows), "-m", str(model), "-t", "2",
                *task_args(task), *fmt, "-o", str(work / "lines.out"), "--force"]  # fmt: skip
    out = work / f"{case}-{task}"
    shutil.rmtree(out, ignore_errors=True)
    base = [GPT2CLI, "batch", task, str(rows), "-m", str(model), "--output-dir", str(out),
            *task_args(task)]  # fmt: skip
    if case == "local":
        return [*base, "-t", "2"]
    workers, threads = (1, 2) if case == "ray-1x2" else (2, 1)
    return [*base, "--engine", "ray", "--num-workers", str(workers), "--cpus-per-worker",
            str(threads)]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--tasks", default="generate,embed,score")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-ray", action="store_true")
    args = parse_common(parser)
    if not WIKITEXT.is_file():
        log(f"skipped: {WIKITEXT} is absent (see ../shared/data/README.md)")
        return 0
    count = SMOKE_ROWS if is_smoke() else args.rows
    lines = [line.strip() for line in WIKITEXT.read_text(encoding="utf-8").splitlines()]
    rows_text = [line for line in lines if line][:count]
    model = ensure_models(["onnx-int8"])["onnx-int8"]
    cases = [c for c in CASES if not (args.no_ray and c.startswith("ray"))]
    tasks = args.tasks.split(",")
    seconds: dict[str, dict[str, list[float]]] = {t: {c: [] for c in cases} for t in tasks}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        rows = work / "rows.txt"
        rows.write_text("".join(line + "\n" for line in rows_text), encoding="utf-8")
        for round_number in range(args.rounds):
            for task in tasks:
                order = cases[round_number % len(cases):] + cases[: round_number % len(cases)]
                for case in order:
                    started = time.perf_counter()
                    proc = subprocess.run(command(case, task, model, rows, work),
                                          capture_output=True, text=True)  # fmt: skip
                    took = time.perf_counter() - started
                    if proc.returncode != 0:
                        log(f"{case} {task} failed ({proc.returncode}): {proc.stderr[-500:]}")
                        continue
                    seconds[task][case].append(took)
                    log(f"{task:8} {case:8} {len(rows_text) / took:8.2f} rows/s ({took:.1f} s)")
    print(f"# gpt2cli batch, {len(rows_text)} rows; {describe_model()}, onnx int8; {machine()}")
    print(f"{'task':8} " + " ".join(f"{c:>16}" for c in cases))
    report: dict[str, dict[str, float | None]] = {}
    for task in tasks:
        best = {c: min(s) if s else None for c, s in seconds[task].items()}
        base = best.get("lines")
        cells = []
        report[task] = {}
        for case in cases:
            took = best[case]
            if took is None:
                cells.append(f"{'failed':>16}")
                continue
            rate = len(rows_text) / took
            report[task][case] = rate
            ratio = f" ({base / took:.2f}x)" if base else ""
            cells.append(f"{rate:9.2f}{ratio:>7}")
        print(f"{task:8} " + " ".join(cells))
    print("rows/s, process start to exit; (Nx): against `--lines`, higher is faster")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_batch.json").write_text(json.dumps(
        {"rows": len(rows_text), "machine": machine(), "rows_per_second": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
