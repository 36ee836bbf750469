"""Scoring speed: gpt2cli score against the Hugging Face guide's strided perplexity recipe.

Run:  .venv/bin/python bench/bench_score.py [--quick | --windows N] [--only CASE ...]

Text: the whole shared WikiText-2 raw test file (../shared/data/wikitext-2-raw-test.txt), read as
`gpt2cli score -f` reads it (bytes as they are, CRLF kept: 286,178 tokens). Windows of 1024
tokens, stride 512, the first token not scored (--no-prefix), exactly as the guide's loop does.
Model: the gpt2 124M shape with random weights and its exports, shared by every benchmark under
bench/out/models/ (bench/common.py builds them when missing).

Each case runs in its own worker process with its model loaded once. The window plan is cut into
blocks of 8 windows and the workers take turns block by block (common.round_robin: the starting
worker rotating), so that load from other processes on a shared machine falls on every case
alike. Reported: scored
tokens per second (compute only, model load excluded), the perplexity, and both relative to the
recipe. Results also go to bench/out/bench_score.json. --quick scores the first 16 windows
(about 8k tokens); the full file is 558 windows. --smoke runs --quick on a tiny model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace

from common import (
    OUT,
    WIKITEXT,
    close_workers,
    describe_model,
    ensure_models,
    machine,
    model_dir,
    parse_args,
    round_robin,
    serve,
    smoke,
    start_workers,
    timed,
)

CTX, STRIDE = 1024, 512
BLOCK = 8  # windows per turn
QUICK_WINDOWS = 16

# name: (description, model variant, backend, dtype)
CASES: dict[str, tuple[str, str, str, str]] = {
    "hf-recipe": ("HF guide's strided recipe, transformers fp32", "torch", "hf", "float32"),
    "torch-fp32": ("gpt2cli score --backend torch, fp32", "torch", "torch", "float32"),
    "onnx-fp32": ("gpt2cli score --backend onnx, fp32", "onnx-fp32", "onnx", "float32"),
    "onnx-int8": ("gpt2cli score --backend onnx, int8", "onnx-int8", "onnx", "float32"),
    "torch-bf16": ("gpt2cli score --backend torch, bf16", "torch", "torch", "bfloat16"),
}
BASELINE = "hf-recipe"


def read_ids() -> list[int]:
    from gpt2cli.inputs import read_texts
    from gpt2cli.tokenizer import GPT2Tokenizer

    (text,) = read_texts(None, [str(WIKITEXT)])
    return GPT2Tokenizer().encode(text.text)


# --- worker --------------------------------------------------------------------------------------


def worker(name: str) -> None:
    """Load the case's model, then score the blocks of windows the parent names on stdin."""
    from gpt2cli.scoring import window_plan

    _, variant, backend, dtype = CASES[name]
    ids = read_ids()
    windows = window_plan(len(ids), CTX, STRIDE)
    run = hf_runner(ids) if backend == "hf" else gpt2cli_runner(ids, variant, backend, dtype)
    run(windows[:1])  # warm-up

    def score_block(block: list[int]) -> dict:
        seconds, (tokens, nll) = timed(lambda: run(windows[block[0] : block[1]]))
        return {"tokens": tokens, "nll": nll, "seconds": seconds}

    serve(score_block, {"tokens": len(ids), "windows": len(windows)})


def hf_runner(ids: list[int]):  # noqa: ANN201
    """The guide's loop body, one window at a time, over GPT2LMHeadModel fp32."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir("torch")).eval()
    encodings = torch.tensor([ids])

    def run(windows: list) -> tuple[int, float]:
        nll_sum, n_tokens = 0.0, 0
        for window in windows:
            begin_loc, end_loc = window.begin, window.end
            trg_len = end_loc - window.first + (1 if begin_loc == 0 else 0)
            input_ids = encodings[:, begin_loc:end_loc]
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            with torch.no_grad():
                outputs = model(input_ids, labels=target_ids)
            counted = int((target_ids[:, 1:] != -100).sum())
            nll_sum += outputs.loss.double().item() * counted
            n_tokens += counted
        return n_tokens, nll_sum

    return run


def gpt2cli_runner(ids: list[int], variant: str, backend: str, dtype: str):  # noqa: ANN201
    from gpt2cli.loader import load_backend
    from gpt2cli.scoring import ScoreOptions, plan_text, run_items

    engine = load_backend(str(model_dir(variant)), backend=backend, dtype=dtype)
    options = ScoreOptions(ctx=CTX, stride=STRIDE, prefix_eos=False)
    item = plan_text(ids, options, None)

    def run(windows: list) -> tuple[int, float]:
        (scores,) = run_items(engine, [replace(item, windows=windows)], options)
        return len(scores.logprobs), -float(scores.logprobs.sum())

    return run


# --- parent --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_WINDOWS} windows only")
    parser.add_argument("--windows", type=int, help="score the first N windows")
    parser.add_argument("--only", nargs="+", choices=list(CASES), help="cases to run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parse_args(parser)
    if args.worker:
        worker(args.worker)
        return
    if not WIKITEXT.is_file():
        sys.exit(f"{WIKITEXT} is missing: this benchmark needs the shared WikiText-2 file")
    names = args.only or list(CASES)
    if BASELINE not in names:
        names.insert(0, BASELINE)
    ensure_models({CASES[name][1] for name in names})

    workers = start_workers(__file__, names)
    info = workers[names[0]].info
    total_windows = info["windows"]
    limit = QUICK_WINDOWS if args.quick or smoke() else (args.windows or total_windows)
    limit = min(limit, total_windows)
    blocks = [(s, min(s + BLOCK, limit)) for s in range(0, limit, BLOCK)]
    totals = {name: {"tokens": 0, "nll": 0.0, "seconds": 0.0} for name in names}
    print(f"{info['tokens']} tokens in the file; scoring {limit} of {total_windows} windows "
          f"(ctx {CTX}, stride {STRIDE}) in {len(blocks)} blocks", file=sys.stderr)  # fmt: skip
    began = time.perf_counter()

    def add(name: str, block: tuple[int, int], result: dict) -> None:
        for key in totals[name]:
            totals[name][key] += result[key]

    def after(number: int) -> None:
        save(names, totals, blocks[number][1], total_windows, final=False)
        print(f"\r{100 * (number + 1) / len(blocks):.0f}% of blocks, "
              f"{time.perf_counter() - began:.0f}s", end="", file=sys.stderr)  # fmt: skip

    round_robin(workers, blocks, add, after)
    print(file=sys.stderr)
    close_workers(workers)
    rows = save(names, totals, limit, total_windows, final=True)
    report(rows, totals[BASELINE]["tokens"], limit, total_windows)


def save(names: list[str], totals: dict, windows: int, total_windows: int, final: bool) -> list:
    """Rates and perplexities so far, written to bench/out/bench_score.json (partial until
    the last block, so an interrupted run still leaves its figures)."""
    base = totals[BASELINE]
    base_rate = base["tokens"] / base["seconds"]
    base_ppl = math.exp(base["nll"] / base["tokens"])
    rows = []
    for name in names:
        t = totals[name]
        rate = t["tokens"] / t["seconds"]
        ppl = math.exp(t["nll"] / t["tokens"])
        rows.append(
            {"case": name, "what": CASES[name][0], **t, "tokens_per_s": rate,
             "speedup": rate / base_rate, "perplexity": ppl, "relative_change": ppl / base_ppl - 1}
        )  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {"windows": windows, "total_windows": total_windows, "final": final, "results": rows}
    (OUT / ("bench_score-smoke.json" if smoke() else "bench_score.json")).write_text(
        json.dumps(summary, indent=2)
    )
    return rows


def report(rows: list, tokens: int, windows: int, total_windows: int) -> None:
    print(f"\nscore: WikiText-2 raw test, {windows}/{total_windows} windows, ctx {CTX}, stride "
          f"{STRIDE}, {tokens} tokens scored; {describe_model()}, {machine()}\n")  # fmt: skip
    print("| case | tokens/s | speed-up | perplexity | perplexity change |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['what']} | {row['tokens_per_s']:.0f} | {row['speedup']:.2f}x | "
              f"{row['perplexity']:.4f} | {row['relative_change']:+.2e} |")  # fmt: skip


if __name__ == "__main__":
    main()
