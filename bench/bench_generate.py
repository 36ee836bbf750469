"""Generation speed: gpt2cli (torch, onnx fp32/int8/int4) against transformers and optimum.

Run:  .venv/bin/python bench/bench_generate.py [--tokens 128] [--runs 3] [--only NAME ...]

The model is the gpt2 124M shape with random weights and its fp32, int8 and int4 exports, built
once under bench/out/models/ by bench/common.py and shared by every benchmark.
Every measurement runs in its own process: greedy decoding of --tokens new tokens (EOS
suppressed, so every run makes the same number) from an 8-token prompt, batch 1, after one
warm-up; the median of --runs is reported, with the process's peak RSS. Then batch 8 against
batch 1, and the cold start of `gpt2cli generate --max-new-tokens 1` per backend.
--smoke checks that it runs, on a tiny model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    GPT2CLI,
    TimedBackend,
    describe_model,
    ensure_models,
    machine,
    model_dir,
    parse_args,
    peak_rss_mb,
    run_json,
    run_process,
    timed_runs,
)

PROMPT = "Hello, I'm a language model,"  # 8 tokens
BATCH_PROMPTS = [
    PROMPT,
    "The quick brown fox",
    "Once upon a time, far far away,",
    "Long time ago, there was a man",
    "In 1492",
    "My name is John and I am",
    "The lighthouse keeper climbed the spiral stairs",
    "Hi",
]
EOS = 50256

# name: (what, model directory, how it runs)
CASES: dict[str, tuple[str, str, str]] = {
    "transformers": ("transformers `generate`, fp32", "torch", "transformers"),
    "torch-loop": ("plain PyTorch greedy loop, fp32", "torch", "torch-loop"),
    "optimum": ("optimum ORTModelForCausalLM, fp32", "onnx-fp32", "optimum"),
    "optimum-int8": ("optimum ORTModelForCausalLM, int8", "onnx-int8", "optimum"),
    "gpt2cli-torch": ("gpt2cli --backend torch, fp32", "torch", "gpt2cli"),
    "gpt2cli-onnx": ("gpt2cli --backend onnx, fp32", "onnx-fp32", "gpt2cli"),
    "gpt2cli-onnx-int8": ("gpt2cli --backend onnx, int8", "onnx-int8", "gpt2cli"),
    "gpt2cli-onnx-int4": ("gpt2cli --backend onnx, int4", "onnx-int4", "gpt2cli"),
    "gpt2cli-onnx-int8-sample": ("gpt2cli onnx int8, sampling top-k 50", "onnx-int8", "gpt2cli"),
}
BATCH_CASES = ["gpt2cli-onnx", "gpt2cli-onnx-int8", "gpt2cli-onnx-int4", "gpt2cli-torch"]
COLD_CASES = {"torch": "torch", "onnx": "onnx-fp32", "onnx int8": "onnx-int8",
              "onnx int4": "onnx-int4"}


# --- workers (one process per measurement) -------------------------------------------------------


def worker_transformers(directory: Path, tokens: int, runs: int, batch: int) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(prompts(batch), return_tensors="pt", padding=True)

    def run(warmup: bool) -> None:
        n = 8 if warmup else tokens
        with torch.inference_mode():
            model.generate(**encoded, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=EOS)

    return {"times": timed_runs(lambda: run(False), runs, warmup=lambda: run(True))}


def worker_torch_loop(directory: Path, tokens: int, runs: int, batch: int) -> dict[str, Any]:
    import torch
    from transformers import GPT2LMHeadModel

    assert batch == 1
    model = GPT2LMHeadModel.from_pretrained(directory).eval()
    ids = torch.tensor([[15496, 11, 314, 1101, 257, 3303, 2746, 11]])

    def run(warmup: bool) -> None:
        with torch.inference_mode():
            out = model(ids, use_cache=True)
            for _ in range(8 if warmup else tokens):
                logits = out.logits[:, -1]
                logits[:, EOS] = -float("inf")
                token = logits.argmax(-1, keepdim=True)
                out = model(token, past_key_values=out.past_key_values, use_cache=True)

    return {"times": timed_runs(lambda: run(False), runs, warmup=lambda: run(True))}


def worker_optimum(directory: Path, tokens: int, runs: int, batch: int) -> dict[str, Any]:
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    model = ORTModelForCausalLM.from_pretrained(directory, use_cache=True, use_io_binding=False)
    tokenizer = AutoTokenizer.from_pretrained(directory, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(prompts(batch), return_tensors="pt", padding=True)

    def run(warmup: bool) -> None:
        n = 8 if warmup else tokens
        model.generate(**encoded, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                       pad_token_id=EOS)

    return {"times": timed_runs(lambda: run(False), runs, warmup=lambda: run(True))}


def worker_gpt2cli(directory: Path, tokens: int, runs: int, batch: int, sample: bool = False
                   ) -> dict[str, Any]:
    from gpt2cli.decoding import GenerationParams
    from gpt2cli.loader import load_backend
    from gpt2cli.scheduler import generate

    backend = TimedBackend(load_backend(str(directory)))
    texts = prompts(batch)
    overheads = []

    def run(warmup: bool) -> None:
        n = 8 if warmup else tokens
        values = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": sample, "seed": 0}
        params = GenerationParams.resolve(backend.info.generation_defaults, values)
        backend.forward_time = 0.0
        start = time.perf_counter()
        generate(backend, texts, params, batch_size=batch)
        if not warmup:
            overheads.append((time.perf_counter() - start - backend.forward_time) / n)

    times = timed_runs(lambda: run(False), runs, warmup=lambda: run(True))
    return {"times": times, "loop_overhead_ms": 1000 * statistics.median(overheads)}


def prompts(batch: int) -> list[str]:
    return [PROMPT] if batch == 1 else BATCH_PROMPTS[:batch]


def worker(case: str, tokens: int, runs: int, batch: int) -> None:
    _, model, how = CASES[case]
    directory = model_dir(model)
    if how == "transformers":
        result = worker_transformers(directory, tokens, runs, batch)
    elif how == "torch-loop":
        result = worker_torch_loop(directory, tokens, runs, batch)
    elif how == "optimum":
        result = worker_optimum(directory, tokens, runs, batch)
    else:
        result = worker_gpt2cli(directory, tokens, runs, batch, sample=case.endswith("-sample"))
    times = result.pop("times")
    seconds = statistics.median(times)
    result.update({"tok_s": batch * tokens / seconds, "best_tok_s": batch * tokens / min(times),
                   "seconds": seconds, "rss_mb": peak_rss_mb()})
    print(json.dumps(result))


def measure(case: str, tokens: int, runs: int, batch: int = 1) -> dict[str, Any]:
    return run_json([sys.executable, __file__, "--worker", case, "--tokens", str(tokens),
                     "--runs", str(runs), "--batch", str(batch)])


def cold_start(model: str, runs: int) -> dict[str, float]:
    """Wall time and peak RSS of a whole `gpt2cli generate --max-new-tokens 1` process."""
    command = [GPT2CLI, "generate", "-m", str(model_dir(model)), "--max-new-tokens", "1",
               "--greedy", PROMPT]
    times, rss = [], []
    for _ in range(runs):
        seconds, rss_mb, code = run_process(command)
        times.append(seconds)
        rss.append(rss_mb)
        if code != 0:
            raise SystemExit(f"cold start failed: {' '.join(command)}")
    return {"seconds": statistics.median(times), "rss_mb": max(rss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="Cases to run (default: all).")
    parser.add_argument("--no-batch", action="store_true", help="Skip batch 8 vs batch 1.")
    parser.add_argument("--no-cold", action="store_true", help="Skip the cold starts.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parse_args(parser)
    if args.worker:
        worker(args.worker, args.tokens, args.runs, args.batch)
        return

    cases = args.only or list(CASES)
    ensure_models({CASES[case][1] for case in cases}
                  | (set() if args.no_cold else set(COLD_CASES.values())))
    print(f"{describe_model()}; greedy, {args.tokens} new tokens, batch 1; "
          f"median of {args.runs}; {machine()}\n")
    results: dict[str, dict[str, Any]] = {}
    print("| what | tok/s (median) | best | vs transformers | loop overhead ms/token "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for case in cases:
        result = results[case] = measure(case, args.tokens, args.runs)
        if "error" in result:
            print(f"| {CASES[case][0]} | failed: {result['error']} | | | | |", flush=True)
            continue
        base = results.get("transformers", {}).get("tok_s")
        ratio = f"{result['tok_s'] / base:.2f}x" if base else ""
        overhead = result.get("loop_overhead_ms")
        overhead_text = f"{overhead:.2f}" if overhead is not None else ""
        print(f"| {CASES[case][0]} | {result['tok_s']:.1f} | {result['best_tok_s']:.1f} | {ratio} "
              f"| {overhead_text} | {result['rss_mb']:.0f} |", flush=True)

    if not args.no_batch:
        print("\n| batch of 8 prompts | tok/s (all rows) | vs batch 1 |")
        print("|---|---|---|")
        for case in BATCH_CASES:
            if args.only and case not in args.only:
                continue
            single = results.get(case) or measure(case, args.tokens, args.runs)
            batched = measure(case, args.tokens, args.runs, batch=8)
            if "error" in batched or "error" in single:
                print(f"| {CASES[case][0]} | failed | |", flush=True)
                continue
            print(f"| {CASES[case][0]} | {batched['tok_s']:.1f} | "
                  f"{batched['tok_s'] / single['tok_s']:.2f}x |", flush=True)

    if not args.no_cold:
        print("\n| `gpt2cli generate --max-new-tokens 1`, end to end | seconds | peak RSS MB |")
        print("|---|---|---|")
        for label, model in COLD_CASES.items():
            cold = cold_start(model, args.runs)
            print(f"| {label} | {cold['seconds']:.2f} | {cold['rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
