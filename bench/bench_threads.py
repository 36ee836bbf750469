"""ONNX Runtime thread settings per precision and step type: spinning or sleeping intra-op
threads, 1 or 2 threads, at batch-1 decode, batch-8 decode and a 512-token prefill.

    .venv/bin/python bench/bench_threads.py [--rounds 3] [--tokens 64] [--smoke]

Every setting loads its own session (spinning is a session option), and the settings take
turns round by round; medians of tokens/s.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

from common import describe_model, ensure_models, log, machine, model_dir, parse_args

PRECISIONS = ("onnx-int4", "onnx-int8", "onnx-fp32")
SETTINGS = [(threads, spin) for threads in (2, 1) for spin in (True, False)]
JOBS = ("decode b1", "decode b8", "prefill 512")


def load(variant: str, threads: int, spin: bool):  # noqa: ANN201
    from gpt2cli.loader import load_backend

    os.environ["OMP_WAIT_POLICY"] = "ACTIVE" if spin else "PASSIVE"
    return load_backend(str(model_dir(variant)), threads=threads)


def measure(backend, job: str, tokens: int) -> float:  # noqa: ANN001
    import numpy as np

    from gpt2cli.decoding import GenerationParams, Prompt
    from gpt2cli.scheduler import generate

    if job == "prefill 512":
        ids = np.arange(1000, 1512, dtype=np.int64)[None, :]
        mask = np.ones_like(ids)
        start = time.perf_counter()
        backend.forward(ids, mask, np.arange(512, dtype=np.int64)[None, :], None, logits="last")
        return 512 / (time.perf_counter() - start)
    batch = 8 if job == "decode b8" else 1
    values = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
    params = GenerationParams.resolve(backend.info.generation_defaults, values)
    prompts = [Prompt(f"Prompt number {i} is about", str(i)) for i in range(batch)]
    start = time.perf_counter()
    generate(backend, prompts, params, batch_size=batch)
    return batch * tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--precisions", nargs="*", default=list(PRECISIONS))
    args = parse_args(parser)
    ensure_models(args.precisions)
    log(f"{machine()}; {describe_model()}")
    results: dict[tuple[str, int, bool, str], list[float]] = {}
    for precision in args.precisions:
        backends = {setting: load(precision, *setting) for setting in SETTINGS}
        for backend in backends.values():
            measure(backend, "decode b1", 4)  # warm-up
        for _, setting, job in itertools.product(range(args.rounds), SETTINGS, JOBS):
            value = measure(backends[setting], job, args.tokens)
            results.setdefault((precision, *setting, job), []).append(value)
        del backends
    print(f"| precision | threads | spinning | {' | '.join(JOBS)} (tok/s) |")
    print("|---|---:|---|" + "---:|" * len(JOBS))
    for precision, (threads, spin) in itertools.product(args.precisions, SETTINGS):
        cells = [f"{statistics.median(results[(precision, threads, spin, j)]):.1f}" for j in JOBS]
        print(f"| {precision} | {threads} | {'yes' if spin else 'no'} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
