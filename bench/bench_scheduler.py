"""Continuous batching against the fixed-batch loop it replaced, on one mixed workload.

Run:  .venv/bin/python bench/bench_scheduler.py [--runs 1] [--batch-size 8] [--prompts 64]

The gpt2 124M shape with random weights, exported with `gpt2cli export-onnx --quantize int8`
(bench/common.py's models, built when missing). The
workload: 64 prompts of 5 to 300 tokens with budgets of 16 to 256 new tokens, greedy, and a stop
string that ends some rows early (picked from a short probe run, since random weights give no
natural text). Both loops decode exactly the same planned sequences at --batch-size rows; the
runs interleave (fixed, scheduler, fixed, ...), and the outputs must agree token for token.
Reported: wall time, tok/s, decode steps, and the loop's own cost outside backend.forward
(per generated token and per step; the scheduler's includes joining caches (rebuilds and
in-place refills), shown apart).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/ is on sys.path when run)
from common import ensure_models, model_dir  # noqa: E402

INT8_DIR = model_dir("onnx-int8")


class TimedBackend(common.TimedBackend):
    """common.TimedBackend that also counts decode steps and the time spent joining caches."""

    def __init__(self, backend: Any) -> None:
        super().__init__(backend)
        self.join_time = 0.0
        self.steps = 0

    def forward(self, input_ids: Any, *args: Any, **kwargs: Any) -> Any:
        self.steps += input_ids.shape[1] == 1
        return super().forward(input_ids, *args, **kwargs)

    def join_rows(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.backend.join_rows(*args, **kwargs)
        finally:
            self.join_time += time.perf_counter() - start

    def write_rows(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.backend.write_rows(*args, **kwargs)
        finally:
            self.join_time += time.perf_counter() - start


def workload(tokenizer: Any, prompts: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt ids, new-token budget) pairs: lengths 5..300 and budgets 16..256, log-uniform
    (many short, some long, as real traffic is)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.arange(256, 50000)  # merged tokens only: no bytes, no special ones
    rows = []
    for _ in range(prompts):
        length = int(np.exp(rng.uniform(np.log(5), np.log(300))))
        budget = int(np.exp(rng.uniform(np.log(16), np.log(256))))
        rows.append(([int(t) for t in rng.choice(vocab, size=length)], budget))
    return rows


def plan(rows: list[tuple[list[int], int]], params: Any, context: int) -> list[Any]:
    from gpt2cli.decoding import Prompt, plan_sequences

    sequences = []
    for index, (ids, budget) in enumerate(rows):
        (seq,) = plan_sequences([Prompt(f"prompt {index}")], [ids], params, context, index)
        seq.budget = budget
        sequences.append(seq)
    return sequences


def run_fixed(backend: TimedBackend, sequences: list[Any], params: Any, batch: int) -> None:
    from bench.fixed_batch import FixedBatchDecoder

    decoder = FixedBatchDecoder(backend, params, seed=0)
    for start in range(0, len(sequences), batch):
        for _ in decoder.run(sequences[start : start + batch]):
            pass


def run_scheduler(backend: TimedBackend, sequences: list[Any], params: Any, batch: int) -> None:
    from gpt2cli.scheduler import RowRequest, Scheduler

    scheduler = Scheduler(backend, max_rows=batch)
    for seq in sequences:
        scheduler.submit(RowRequest(seq, params, 0))
    scheduler.run_until_done()


def pick_stop(backend: Any, rows: list[tuple[list[int], int]], params: Any, batch: int) -> str:
    """A token text that appears early in about a quarter of the rows' greedy outputs."""
    probe = [(ids, 24) for ids, _ in rows]
    sequences = plan(probe, params, backend.info.n_positions)
    run_scheduler(TimedBackend(backend), sequences, params, batch)
    seen: Counter[str] = Counter()
    for seq in sequences:
        seen.update({backend.tokenizer.decode([t]) for t in seq.token_ids[4:]})
    target = len(rows) / 4
    candidates = [(abs(n - target), text) for text, n in seen.items() if text.strip()]
    return min(candidates)[1]


def measure(mode: str, backend: TimedBackend, rows: list, params: Any, batch: int) -> dict:
    sequences = plan(rows, params, backend.info.n_positions)
    backend.forward_time = backend.join_time = 0.0
    backend.steps = 0
    start = time.perf_counter()
    (run_fixed if mode == "fixed" else run_scheduler)(backend, sequences, params, batch)
    wall = time.perf_counter() - start
    tokens = sum(len(s.token_ids) for s in sequences)
    outside = wall - backend.forward_time
    return {
        "wall": wall, "tokens": tokens, "steps": backend.steps, "tok_s": tokens / wall,
        "overhead_ms_token": 1000 * outside / tokens,
        "overhead_ms_step": 1000 * outside / backend.steps,
        "join_ms_token": 1000 * backend.join_time / tokens,
        "stopped": sum(s.finish_reason == "stop" for s in sequences),
        "outputs": [s.token_ids for s in sequences],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="Interleaved runs of each loop.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--model", type=Path, default=INT8_DIR)
    args = parser.parse_args()

    if args.model == INT8_DIR:
        ensure_models(["torch", "onnx-int8"])
    from gpt2cli.decoding import GenerationParams
    from gpt2cli.loader import load_backend

    backend = TimedBackend(load_backend(str(args.model)))
    rows = workload(backend.tokenizer, args.prompts)
    base = {"do_sample": False, "max_new_tokens": 256}
    plain = GenerationParams.resolve(backend.info.generation_defaults, base)
    stop = pick_stop(backend.backend, rows, plain, args.batch_size)
    params = GenerationParams.resolve(backend.info.generation_defaults, {**base, "stop": (stop,)})
    measure("scheduler", backend, rows[: args.batch_size], params, args.batch_size)  # warm-up

    load = os.getloadavg()[0]
    lengths = [len(ids) for ids, _ in rows]
    budgets = [b for _, b in rows]
    print(f"{args.model.name}: {len(rows)} prompts of {min(lengths)}-{max(lengths)} tokens "
          f"(mean {statistics.mean(lengths):.0f}), budgets {min(budgets)}-{max(budgets)} "
          f"(mean {statistics.mean(budgets):.0f}), greedy, stop {stop!r}; --batch-size "
          f"{args.batch_size}; {os.cpu_count()} CPUs, load average {load:.1f} at start\n")
    results: dict[str, list[dict]] = {"fixed": [], "scheduler": []}
    for _ in range(args.runs):
        for mode in results:
            results[mode].append(measure(mode, backend, rows, params, args.batch_size))
            r = results[mode][-1]
            print(f"  {mode}: {r['wall']:.1f} s, {r['tok_s']:.1f} tok/s", file=sys.stderr)
    fixed, scheduled = results["fixed"][0], results["scheduler"][0]
    same = fixed["outputs"] == scheduled["outputs"]

    print("| loop | wall s | tok/s | decode steps | outside forward ms/token | ms/step "
          "| of which joins ms/token | rows ended by the stop string |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, label in (("fixed", "fixed batches (before)"), ("scheduler", "scheduler")):
        runs = results[mode]
        wall = statistics.median(r["wall"] for r in runs)
        tok_s = statistics.median(r["tok_s"] for r in runs)
        token_ms = statistics.median(r["overhead_ms_token"] for r in runs)
        step_ms = statistics.median(r["overhead_ms_step"] for r in runs)
        join_ms = statistics.median(r["join_ms_token"] for r in runs)
        print(f"| {label} | {wall:.1f} | {tok_s:.1f} | {runs[0]['steps']} | {token_ms:.3f} "
              f"| {step_ms:.2f} | {join_ms:.3f} | {runs[0]['stopped']} |")
    ratio = statistics.median(r["tok_s"] for r in results["scheduler"]) / statistics.median(
        r["tok_s"] for r in results["fixed"]
    )
    print(f"\nscheduler / fixed: {ratio:.2f}x tok/s; outputs identical: {same}")


if __name__ == "__main__":
    main()
