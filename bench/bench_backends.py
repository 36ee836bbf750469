"""Backend benchmark: export time and sizes, prefill and per-step decode latency.

Run from the repository root:

    .venv/bin/python bench/bench_backends.py            # ~5 minutes on 2 cores
    .venv/bin/python bench/bench_backends.py --steps 32 --threads 2 --batch 1

It builds a GPT-2 124M-shape model with random weights (seeded) under bench/out/backends/ (ignored,
reused by later runs), exports it with the real export-onnx engine to fp32, int8 and int4, then
times each backend on the same token ids: prefill of a --prompt-tokens prompt (last-position
logits, as generate uses it) and the median of --steps single-token decode steps with the KV
cache. optimum's ORTModelForCausalLM on the fp32 export runs alongside for comparison (with
the same no-spinning thread policy as gpt2cli's backends). Prints a
Markdown table and writes bench/out/backends/bench_backends.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "backends"  # bench_generate.py has its own models beside
GPT2_SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024}
sys.path.insert(0, str(ROOT))


def build_model(directory: Path) -> Path:
    """The 124M-shape random GPT-2 (built once, then reused)."""
    if (directory / "model.safetensors").is_file():
        return directory
    from tests.models import build_random_model

    tmp = directory.with_name(directory.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    build_random_model(tmp, seed=0, **GPT2_SHAPE)
    tmp.rename(directory)
    return directory


def export(source: Path, target: Path, quantize: str | None) -> dict[str, Any]:
    """Export with the real engine; returns seconds and sizes."""
    from gpt2cli.exporting import ExportOptions, export_model

    started = time.perf_counter()
    manifest = export_model(
        str(source), target, ExportOptions(quantize=quantize, validate=True, force=True)
    )
    seconds = time.perf_counter() - started
    weights = sum(size for name, size in manifest["files"].items() if name.startswith("model.onnx"))
    return {
        "variant": quantize or "fp32",
        "export_s": round(seconds, 1),
        "model_mb": round(weights / 1e6, 1),
        "dir_mb": round(sum(manifest["files"].values()) / 1e6, 1),
        "max_abs_logit_diff": manifest["validation"]["max_abs_logit_diff"],
        "top1_agreement": manifest["validation"]["top1_agreement"],
    }


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
    args = parser.parse_args()

    from gpt2cli.loader import load_backend
    from gpt2cli.outputs import Settings

    Settings.quiet = True
    OUT.mkdir(parents=True, exist_ok=True)
    source = build_model(OUT / "gpt2-124m-random")
    variants = {None: OUT / "onnx-fp32", "int8": OUT / "onnx-int8", "int4": OUT / "onnx-int4"}
    exports = []
    for quantize, target in variants.items():
        if args.skip_export and target.is_dir():
            continue
        print(f"exporting {quantize or 'fp32'} ...", file=sys.stderr, flush=True)
        exports.append(export(source, target, quantize))

    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 50256, size=(args.batch, args.prompt_tokens), dtype=np.int64)
    runs = [
        ("torch fp32", lambda: load_backend(str(source), "torch", threads=args.threads)),
        ("torch bf16", lambda: load_backend(str(source), "torch", dtype="bfloat16",
                                            threads=args.threads)),
        ("onnx fp32", lambda: load_backend(str(variants[None]), "onnx", threads=args.threads)),
        ("onnx int8", lambda: load_backend(str(variants["int8"]), "onnx", threads=args.threads)),
        ("onnx int4", lambda: load_backend(str(variants["int4"]), "onnx", threads=args.threads)),
    ]
    latencies = []
    for name, load in runs:
        print(f"timing {name} ...", file=sys.stderr, flush=True)
        prefill, step = time_backend(load(), prompt, args.steps)
        latencies.append(
            {"backend": name, "prefill_ms": round(prefill, 1), "step_ms": round(step, 2)}
        )
    print("timing optimum ORTModelForCausalLM (fp32) ...", file=sys.stderr, flush=True)
    prefill, step = time_optimum(variants[None], prompt, args.steps, args.threads)
    latencies.append(
        {"backend": "optimum ORTModelForCausalLM fp32", "prefill_ms": round(prefill, 1),
         "step_ms": round(step, 2)}
    )

    import onnxruntime
    import torch

    setup = {
        "model": "GPT-2 124M shape, random weights",
        "batch": args.batch,
        "prompt_tokens": args.prompt_tokens,
        "steps": args.steps,
        "threads": args.threads or f"default (torch {torch.get_num_threads()})",
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    (OUT / "bench_backends.json").write_text(
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
