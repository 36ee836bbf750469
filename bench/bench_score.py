"""Scoring speed: gpt2cli score against the Hugging Face guide's strided perplexity recipe.

Run:  .venv/bin/python bench/bench_score.py [--quick | --windows N] [--only CASE ...]

Text: the whole shared WikiText-2 raw test file (../shared/data/wikitext-2-raw-test.txt), read as
`gpt2cli score -f` reads it (bytes as they are, CRLF kept: 286,178 tokens). Windows of 1024
tokens, stride 512, the first token not scored (--no-prefix), exactly as the guide's loop does.
Model: the gpt2 124M shape with random weights, cached under bench/out/score-embed/ (built,
and exported with `gpt2cli export-onnx` to fp32 and int8, when missing).

Each case runs in its own worker process with its model loaded once. The window plan is cut into
blocks of 8 windows and the workers take turns block by block (the starting worker rotating), so
that load from other processes on a shared machine falls on every case alike. Reported: scored
tokens per second (compute only, model load excluded), the perplexity, and both relative to the
recipe. Results also go to bench/out/bench_score.json. --quick scores the first 16 windows
(about 8k tokens); the full file is 558 windows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODELS = OUT / "score-embed"  # this file and bench_embed.py share these models
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw-test.txt"
GPT2_SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024}
CTX, STRIDE = 1024, 512
BLOCK = 8  # windows per turn
QUICK_WINDOWS = 16

# name: (description, model directory, backend, dtype)
CASES: dict[str, tuple[str, str, str, str]] = {
    "hf-recipe": ("HF guide's strided recipe, transformers fp32", "torch", "hf", "float32"),
    "torch-fp32": ("gpt2cli score --backend torch, fp32", "torch", "torch", "float32"),
    "onnx-fp32": ("gpt2cli score --backend onnx, fp32", "onnx", "onnx", "float32"),
    "onnx-int8": ("gpt2cli score --backend onnx, int8", "onnx-int8", "onnx", "float32"),
    "torch-bf16": ("gpt2cli score --backend torch, bf16", "torch", "torch", "bfloat16"),
}
BASELINE = "hf-recipe"


def build_models(names: list[str]) -> None:
    """The random gpt2-shape model and the exports the cases need, unless already there."""
    torch_dir = MODELS / "torch"
    if not (torch_dir / "model.safetensors").is_file():
        sys.path.insert(0, str(ROOT))
        from tests.models import build_random_model

        print("building the random gpt2 124M-shape model", file=sys.stderr)
        build_random_model(torch_dir, seed=0, **GPT2_SHAPE)
    for directory, quantize in (("onnx", None), ("onnx-int8", "int8")):
        target = MODELS / directory
        if (target / "model.onnx").is_file() or not any(CASES[n][1] == directory for n in names):
            continue
        print(f"exporting {directory}", file=sys.stderr)
        command = [str(ROOT / ".venv/bin/gpt2cli"), "--quiet", "export-onnx", str(torch_dir),
                   str(target), "--no-validate"]  # fmt: skip
        if quantize:
            command += ["--quantize", quantize]
        subprocess.run(command, check=True)


def read_ids() -> list[int]:
    from gpt2cli.inputs import read_texts
    from gpt2cli.tokenizer import GPT2Tokenizer

    (text,) = read_texts(None, [str(WIKITEXT)])
    return GPT2Tokenizer().encode(text.text)


# --- worker --------------------------------------------------------------------------------------


def worker(name: str) -> None:
    """Load the case's model, then score the blocks of windows the parent names on stdin."""
    from gpt2cli.scoring import window_plan

    _, directory, backend, dtype = CASES[name]
    ids = read_ids()
    windows = window_plan(len(ids), CTX, STRIDE)
    run = hf_runner(ids) if backend == "hf" else gpt2cli_runner(ids, directory, backend, dtype)
    run(windows[:1])  # warm-up
    print(json.dumps({"ready": True, "tokens": len(ids), "windows": len(windows)}), flush=True)
    for line in sys.stdin:
        start, end = json.loads(line)
        began = time.perf_counter()
        tokens, nll = run(windows[start:end])
        seconds = time.perf_counter() - began
        print(json.dumps({"tokens": tokens, "nll": nll, "seconds": seconds}), flush=True)


def hf_runner(ids: list[int]):  # noqa: ANN201
    """The guide's loop body, one window at a time, over GPT2LMHeadModel fp32."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(MODELS / "torch").eval()
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


def gpt2cli_runner(ids: list[int], directory: str, backend: str, dtype: str):  # noqa: ANN201
    from gpt2cli.loader import load_backend
    from gpt2cli.scoring import ScoreOptions, plan_text, run_items

    engine = load_backend(str(MODELS / directory), backend=backend, dtype=dtype)
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
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    if not WIKITEXT.is_file():
        sys.exit(f"{WIKITEXT} is missing: this benchmark needs the shared WikiText-2 file")
    names = args.only or list(CASES)
    if BASELINE not in names:
        names.insert(0, BASELINE)
    build_models(names)

    workers = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error"}
    for name in names:
        workers[name] = subprocess.Popen(
            [sys.executable, __file__, "--worker", name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        info = json.loads(workers[name].stdout.readline())
    total_windows = info["windows"]
    limit = QUICK_WINDOWS if args.quick else (args.windows or total_windows)
    limit = min(limit, total_windows)
    blocks = [(s, min(s + BLOCK, limit)) for s in range(0, limit, BLOCK)]
    totals = {name: {"tokens": 0, "nll": 0.0, "seconds": 0.0} for name in names}
    print(f"{info['tokens']} tokens in the file; scoring {limit} of {total_windows} windows "
          f"(ctx {CTX}, stride {STRIDE}) in {len(blocks)} blocks", file=sys.stderr)  # fmt: skip
    began = time.perf_counter()
    for number, block in enumerate(blocks):
        turn = names[number % len(names) :] + names[: number % len(names)]
        for name in turn:
            process = workers[name]
            process.stdin.write(json.dumps(block) + "\n")
            process.stdin.flush()
            result = json.loads(process.stdout.readline())
            for key in totals[name]:
                totals[name][key] += result[key]
        save(names, totals, block[1], total_windows, final=False)
        done = (number + 1) / len(blocks)
        print(f"\r{100 * done:.0f}% of blocks, {time.perf_counter() - began:.0f}s", end="",
              file=sys.stderr)  # fmt: skip
    print(file=sys.stderr)
    for process in workers.values():
        process.stdin.close()
        process.wait()
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
    (OUT / "bench_score.json").write_text(json.dumps(summary, indent=2))
    return rows


def report(rows: list, tokens: int, windows: int, total_windows: int) -> None:
    print(f"\nscore: WikiText-2 raw test, {windows}/{total_windows} windows, ctx {CTX}, stride "
          f"{STRIDE}, {tokens} tokens scored; gpt2 124M shape, random weights, "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print("| case | tokens/s | speed-up | perplexity | perplexity change |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['what']} | {row['tokens_per_s']:.0f} | {row['speedup']:.2f}x | "
              f"{row['perplexity']:.4f} | {row['relative_change']:+.2e} |")  # fmt: skip


if __name__ == "__main__":
    main()
