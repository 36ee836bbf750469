"""Backend benchmark: export time and sizes, prefill and per-step decode latency.

Run from the repository root:

    .venv/bin/python bench/bench_backends.py            # ~5 minutes on 2 cores
    .venv/bin/python bench/bench_backends.py --steps 32 --threads 2 --batch 1

It builds the GPT-2 124M-shape model with random weights (bench/common.py: seeded, under
bench/out/models/, shared by every benchmark), exports it with the real export-onnx engine to
fp32, int8 and int4 (validated, for the export table; --skip-export reuses the exports), then
times each backend on the same token ids: prefill of a --prompt-tokens prompt (last-position
logits, as generate uses it) and the median of --steps single-token decode steps with the KV
cache. optimum's ORTModelForCausalLM on the fp32 export runs alongside for comparison (with the
same no-spinning thread policy as gpt2cli's backends). Prints a Markdown table and writes
bench/out/bench_backends.json. --smoke checks that it runs, on a tiny model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import OUT, describe_model, ensure_models, export_variant, parse_args, smoke


def time_backend(backend, prompt: np.ndarray, steps: int) -> tuple[float, float]:  # noqa: ANN001
    """(prefill ms, median decode-step ms) through Backend.forward."""
    from gpt2cli.backends.base import position_ids_from_mask

    mask = np.ones_like(prompt)
    backend.forward(prompt, mask, position_ids_from_mask(mask, prompt.shape[1]))  # warm-up
    started = time.perf_counter()
    result = backend.forward(prompt, mask, position_ids_from_mask(mask, prompt.shape[1]))
    prefill = (time.perf_counter() - started) * 1000
    times = []
    token = np.argmax(result.logits, axis=-1)[:, None].astype(np.int64)
    for _ in range(steps):
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        started = time.perf_counter()
        result = backend.forward(token, mask, position_ids_from_mask(mask, 1), result.cache)
        times.append((time.perf_counter() - started) * 1000)
        token = np.argmax(result.logits, axis=-1)[:, None].astype(np.int64)
    return prefill, statistics.median(times)


def time_optimum(directory: Path, prompt: np.ndarray, steps: int, threads: int | None):  # noqa: ANN201
    """The same measurement through optimum's ORTModelForCausalLM forward."""
    import onnxruntime
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # The same thread policy as gpt2cli's onnx backend, so that only the runtimes differ.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    model = ORTModelForCausalLM.from_pretrained(directory, session_options=options)
    ids = torch.from_numpy(prompt)
    with torch.inference_mode():
        mask = torch.ones_like(ids)
        model(input_ids=ids, attention_mask=mask, use_cache=True)
        started = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        prefill = (time.perf_counter() - started) * 1000
        times = []
        for _ in range(steps):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            started = time.perf_counter()
            out = model(
                input_ids=token, attention_mask=mask, past_key_values=out.past_key_values,
                use_cache=True,
            )
            times.append((time.perf_counter() - started) * 1000)
    return prefill, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64, help="decode steps timed per backend")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="default: the backend's")
    parser.add_argument("--skip-export", action="store_true", help="reuse bench/out exports")
    args = parse_args(parser)

    from gpt2cli.loader import load_backend
    from gpt2cli.outputs import Settings

    Settings.quiet = True
    names = ("onnx-fp32", "onnx-int8", "onnx-int4")
    exports = [] if args.skip_export else [export_variant(v, validate=True) for v in names]
    paths = ensure_models(("torch", *names))
    source = paths["torch"]

    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 50256, size=(args.batch, args.prompt_tokens), dtype=np.int64)
    runs = [
        ("torch fp32", lambda: load_backend(str(source), "torch", threads=args.threads)),
        ("torch bf16", lambda: load_backend(str(source), "torch", dtype="bfloat16",
                                            threads=args.threads)),
        ("onnx fp32", lambda: load_backend(str(paths["onnx-fp32"]), "onnx", threads=args.threads)),
        ("onnx int8", lambda: load_backend(str(paths["onnx-int8"]), "onnx", threads=args.threads)),
        ("onnx int4", lambda: load_backend(str(paths["onnx-int4"]), "onnx", threads=args.threads)),
    ]
    latencies = []
    for name, load in runs:
        print(f"timing {name} ...", file=sys.stderr, flush=True)
        prefill, step = time_backend(load(), prompt, args.steps)
        latencies.append(
            {"backend": name, "prefill_ms": round(prefill, 1), "step_ms": round(step, 2)}
        )
    print("timing optimum ORTModelForCausalLM (fp32) ...", file=sys.stderr, flush=True)
    prefill, step = time_optimum(paths["onnx-fp32"], prompt, args.steps, args.threads)
    latencies.append(
        {"backend": "optimum ORTModelForCausalLM fp32", "prefill_ms": round(prefill, 1),
         "step_ms": round(step, 2)}
    )

    import onnxruntime
    import torch

    setup = {
        "model": describe_model(),
        "batch": args.batch,
        "prompt_tokens": args.prompt_tokens,
        "steps": args.steps,
        "threads": args.threads or f"default (torch {torch.get_num_threads()})",
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / ("bench_backends-smoke.json" if smoke() else "bench_backends.json")).write_text(
        json.dumps({"setup": setup, "exports": exports, "latency": latencies}, indent=2) + "\n"
    )
    print(f"setup: {json.dumps(setup)}\n")
    if exports:
        print(
            "| export | time (s) | model.onnx* (MB) | directory (MB) | max abs logit diff "
            "| top-1 agreement |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for e in exports:
            print(
                f"| {e['variant']} | {e['export_s']} | {e['model_mb']} | {e['dir_mb']} | "
                f"{e['max_abs_logit_diff']:.2g} | {e['top1_agreement']:.2f} |"
            )
        print()
    print(f"| backend | prefill {args.prompt_tokens} tokens (ms) | decode step (ms, median) |")
    print("|---|---:|---:|")
    for row in latencies:
        print(f"| {row['backend']} | {row['prefill_ms']} | {row['step_ms']} |")


if __name__ == "__main__":
    main()
