"""Generation speed: gpt2cli (torch, onnx fp32/int8/int4) against transformers and optimum.

Run:  .venv/bin/python bench/bench_generate.py [--tokens 128] [--runs 3] [--only NAME ...]

The model is the gpt2 124M shape with random weights (built once, then exported with
`gpt2cli export-onnx` to fp32, int8 and int4), cached under bench/out/backends/ and shared with
bench_backends.py (same builder and seed; whichever runs first builds them).
Every measurement runs in its own process: greedy decoding of --tokens new tokens (EOS
suppressed, so every run makes the same number) from an 8-token prompt, batch 1, after one
warm-up; the median of --runs is reported, with the process's peak RSS. Then batch 8 against
batch 1, and the cold start of `gpt2cli generate --max-new-tokens 1` per backend.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODELS = OUT / "backends"  # shared with bench_backends.py
MODEL_DIRS = {"torch": "gpt2-124m-random", "onnx": "onnx-fp32", "onnx-int8": "onnx-int8",
              "onnx-int4": "onnx-int4"}
GPT2_SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024}
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
    "optimum": ("optimum ORTModelForCausalLM, fp32", "onnx", "optimum"),
    "optimum-int8": ("optimum ORTModelForCausalLM, int8", "onnx-int8", "optimum"),
    "gpt2cli-torch": ("gpt2cli --backend torch, fp32", "torch", "gpt2cli"),
    "gpt2cli-onnx": ("gpt2cli --backend onnx, fp32", "onnx", "gpt2cli"),
    "gpt2cli-onnx-int8": ("gpt2cli --backend onnx, int8", "onnx-int8", "gpt2cli"),
    "gpt2cli-onnx-int4": ("gpt2cli --backend onnx, int4", "onnx-int4", "gpt2cli"),
    "gpt2cli-onnx-int8-sample": ("gpt2cli onnx int8, sampling top-k 50", "onnx-int8", "gpt2cli"),
}
BATCH_CASES = ["gpt2cli-onnx", "gpt2cli-onnx-int8", "gpt2cli-onnx-int4", "gpt2cli-torch"]
COLD_CASES = {"torch": "torch", "onnx": "onnx", "onnx int8": "onnx-int8", "onnx int4": "onnx-int4"}


# --- models --------------------------------------------------------------------------------------


def build_models() -> None:
    """The random gpt2-shape model and its three exports, unless already there."""
    torch_dir = model_dir("torch")
    if not (torch_dir / "model.safetensors").is_file():
        sys.path.insert(0, str(ROOT))
        from tests.models import build_random_model

        print("building the random gpt2 124M-shape model", file=sys.stderr)
        building = torch_dir.with_name(torch_dir.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        build_random_model(building, seed=0, **GPT2_SHAPE)
        building.rename(torch_dir)
    for name, quantize in (("onnx", None), ("onnx-int8", "int8"), ("onnx-int4", "int4")):
        target = model_dir(name)
        if (target / "model.onnx").is_file():
            continue
        print(f"exporting {name}", file=sys.stderr)
        command = [str(ROOT / ".venv/bin/gpt2cli"), "--quiet", "export-onnx", str(torch_dir),
                   str(target), "--no-validate"]
        if quantize:
            command += ["--quantize", quantize]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr)


def model_dir(name: str) -> Path:
    return MODELS / MODEL_DIRS[name]


# --- workers (one process per measurement) -------------------------------------------------------


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_runs(run, runs: int) -> list[float]:  # noqa: ANN001
    run(warmup=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(warmup=False)
        times.append(time.perf_counter() - start)
    return times


def worker_transformers(model_dir: Path, tokens: int, runs: int, batch: int) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(prompts(batch), return_tensors="pt", padding=True)

    def run(warmup: bool) -> None:
        n = 8 if warmup else tokens
        with torch.inference_mode():
            model.generate(**encoded, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=EOS)

    return {"times": timed_runs(run, runs)}


def worker_torch_loop(model_dir: Path, tokens: int, runs: int, batch: int) -> dict[str, Any]:
    import torch
    from transformers import GPT2LMHeadModel

    assert batch == 1
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    ids = torch.tensor([[15496, 11, 314, 1101, 257, 3303, 2746, 11]])

    def run(warmup: bool) -> None:
        with torch.inference_mode():
            out = model(ids, use_cache=True)
            for _ in range(8 if warmup else tokens):
                logits = out.logits[:, -1]
                logits[:, EOS] = -float("inf")
                token = logits.argmax(-1, keepdim=True)
                out = model(token, past_key_values=out.past_key_values, use_cache=True)

    return {"times": timed_runs(run, runs)}


def worker_optimum(model_dir: Path, tokens: int, runs: int, batch: int) -> dict[str, Any]:
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    model = ORTModelForCausalLM.from_pretrained(model_dir, use_cache=True, use_io_binding=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(prompts(batch), return_tensors="pt", padding=True)

    def run(warmup: bool) -> None:
        n = 8 if warmup else tokens
        model.generate(**encoded, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                       pad_token_id=EOS)

    return {"times": timed_runs(run, runs)}


class TimedBackend:
    """Delegates to a backend, adding up the time spent in forward()."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.name, self.info, self.tokenizer = backend.name, backend.info, backend.tokenizer
        self.forward_time = 0.0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.backend.forward(*args, **kwargs)
        finally:
            self.forward_time += time.perf_counter() - start


def worker_gpt2cli(model_dir: Path, tokens: int, runs: int, batch: int, sample: bool = False
                   ) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from gpt2cli.decoding import GenerationParams
    from gpt2cli.loader import load_backend
    from gpt2cli.scheduler import generate

    backend = TimedBackend(load_backend(str(model_dir)))
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

    times = timed_runs(run, runs)
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
    command = [sys.executable, __file__, "--worker", case, "--tokens", str(tokens),
               "--runs", str(runs), "--batch", str(batch)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cold_start(model: str, runs: int) -> dict[str, float]:
    """Wall time and peak RSS of a whole `gpt2cli generate --max-new-tokens 1` process."""
    command = [str(ROOT / ".venv/bin/gpt2cli"), "generate", "-m", str(model_dir(model)),
               "--max-new-tokens", "1", "--greedy", PROMPT]
    times, rss = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        times.append(time.perf_counter() - start)
        rss.append(usage.ru_maxrss / 1024)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
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
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.tokens, args.runs, args.batch)
        return

    build_models()
    load = os.getloadavg()[0]
    print(f"gpt2 124M shape, random weights; greedy, {args.tokens} new tokens, batch 1; "
          f"median of {args.runs}; {os.cpu_count()} CPUs; load average {load:.1f} at start\n")
    results: dict[str, dict[str, Any]] = {}
    print("| what | tok/s (median) | best | vs transformers | loop overhead ms/token "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for case in args.only or CASES:
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
