"""What the benchmarks share: the models, their paths, worker processes taking turns, timing
and memory helpers.

Models. One builder makes the GPT-2 124M shape (GPT2_SHAPE) with seeded random weights, saved as
safetensors, and exports it with the real export-onnx engine; every benchmark reads the same
directories (built on first use, reused after):

    bench/out/models/gpt2-124m/torch        safetensors, config, tokenizer files
    bench/out/models/gpt2-124m/onnx-fp32    export-onnx
    bench/out/models/gpt2-124m/onnx-int8    export-onnx --quantize int8
    bench/out/models/gpt2-124m/onnx-int4    export-onnx --quantize int4

`--smoke` (see `parse_args`) swaps in the 2-layer test shape under bench/out/models/smoke/, so a
benchmark can be checked end to end in seconds; its figures mean nothing.

Workers. A benchmark that compares engines runs each in its own process with its model loaded
once (`start_workers`, `serve` on the worker side), and `round_robin` hands them the same jobs
round by round, the first worker rotating, so that load from other processes on a shared
machine falls on every engine alike. `interleaved` does the same for functions in one process.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw-test.txt"
GPT2CLI = str(Path(sys.executable).with_name("gpt2cli"))  # the console script of this Python
GPT2_SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024}
SMOKE_SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 1024}
SEED = 0
# variant: how export-onnx quantizes it (torch is the source model itself)
VARIANTS: dict[str, str | None] = {
    "torch": None, "onnx-fp32": None, "onnx-int8": "int8", "onnx-int4": "int4",
    "onnx-int4h4": "int4",
}  # fmt: skip
# export-onnx options beyond --quantize, by variant (int4h4: the all-4-bit, fastest decode)
VARIANT_OPTIONS: dict[str, dict[str, Any]] = {"onnx-int4h4": {"head_bits": 4}}
SMOKE_ENV = "GPT2CLI_BENCH_SMOKE"  # set by --smoke; worker processes inherit it

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # gpt2cli and tests.models from this checkout

T = TypeVar("T")


# --- models --------------------------------------------------------------------------------------


def smoke() -> bool:
    """Whether this run uses the tiny smoke-test model."""
    return os.environ.get(SMOKE_ENV) == "1"


def shape() -> dict[str, int]:
    """The model shape benchmarks run on: GPT2_SHAPE, or SMOKE_SHAPE under --smoke."""
    return dict(SMOKE_SHAPE if smoke() else GPT2_SHAPE)


def shape_name() -> str:
    return "smoke" if smoke() else "gpt2-124m"


def describe_model() -> str:
    """The model in words, for report headers."""
    if smoke():
        return "SMOKE RUN (2-layer model; figures are meaningless)"
    return "gpt2 124M shape, random weights"


def model_dir(variant: str) -> Path:
    """Where `variant` (a key of VARIANTS) lives; `ensure_models` builds it."""
    if variant not in VARIANTS:
        raise KeyError(f"unknown model variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    return OUT / "models" / shape_name() / variant


def ensure_models(variants: Iterable[str] = VARIANTS) -> dict[str, Path]:
    """Build the source model and export the ONNX variants asked for, unless already there;
    their directories by variant."""
    wanted = list(variants)
    paths = {variant: model_dir(variant) for variant in wanted}
    source = _ensure_source()
    for variant in wanted:
        if variant != "torch" and not _current_export(paths[variant]):
            export_variant(variant, source=source)
    return paths


def _current_export(directory: Path) -> bool:
    """An export made by this version's default graph (older ones are re-exported)."""
    try:
        manifest = json.loads((directory / "gpt2cli-export.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("graph") == "fused"


def _ensure_source() -> Path:
    directory = model_dir("torch")
    if (directory / "model.safetensors").is_file():
        return directory
    from tests.models import build_random_model

    log(f"building the random {shape_name()} model in {directory}")
    building = directory.with_name(directory.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    build_random_model(building, seed=SEED, **shape())
    building.rename(directory)
    return directory


def export_variant(
    variant: str, *, validate: bool = False, source: Path | None = None
) -> dict[str, Any]:
    """Export the source model to `variant`'s directory with the real export-onnx engine
    (replacing what is there); its time, sizes and, with `validate`, the validation figures."""
    from gpt2cli.exporting import ExportOptions, export_model

    source = source or _ensure_source()
    target = model_dir(variant)
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    log(f"exporting {variant} to {target}")
    started = time.perf_counter()
    options = ExportOptions(
        quantize=VARIANTS[variant], validate=validate, **VARIANT_OPTIONS.get(variant, {})
    )
    manifest = export_model(str(source), building, options)
    seconds = time.perf_counter() - started
    shutil.rmtree(target, ignore_errors=True)
    building.rename(target)
    files = manifest["files"]
    result: dict[str, Any] = {
        "variant": variant,
        "export_s": round(seconds, 1),
        "model_mb": round(sum(s for n, s in files.items() if n.startswith("model.onnx")) / 1e6, 1),
        "dir_mb": round(sum(files.values()) / 1e6, 1),
    }
    if validate:
        result["max_abs_logit_diff"] = manifest["validation"]["max_abs_logit_diff"]
        result["top1_agreement"] = manifest["validation"]["top1_agreement"]
    return result


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> Any:
    """`parser.parse_args` with the shared `--smoke` flag added (and passed on to workers)."""
    parser.add_argument(
        "--smoke", action="store_true",
        help="check that the benchmark runs, in a tiny configuration (figures mean nothing)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ[SMOKE_ENV] = "1"
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- timing and memory ---------------------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def timed_runs(
    run: Callable[[], object], runs: int, warmup: Callable[[], object] | None = None
) -> list[float]:
    """Seconds of each of `runs` calls, after one call of `warmup` when given."""
    if warmup is not None:
        warmup()
    return [timed(run)[0] for _ in range(runs)]


def best_of(runs: int, fn: Callable[[], T]) -> tuple[float, T]:
    """The best time of `runs` calls, and the last result."""
    times, result = [], None
    for _ in range(runs):
        seconds, result = timed(fn)
        times.append(seconds)
    return min(times), result  # type: ignore[return-value]


def interleaved(
    runs: int, fns: Mapping[str, Callable[[], T]]
) -> tuple[dict[str, float], dict[str, T]]:
    """Best time and last result of each function, running them in turn `runs` times (the
    in-process round-robin: a noisy spell on a shared machine does not land on one only)."""
    times = dict.fromkeys(fns, float("inf"))
    results: dict[str, T] = {}
    for _ in range(runs):
        for name, fn in fns.items():
            seconds, results[name] = timed(fn)
            times[name] = min(times[name], seconds)
    return times, results


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_process(command: Sequence[str], **popen: Any) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB, exit code) of a whole process; output goes nowhere unless
    `popen` says otherwise."""
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    started = time.perf_counter()
    proc = subprocess.Popen(list(command), **popen)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, proc.returncode


def machine() -> str:
    """CPUs and load, for report headers."""
    return f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


class TimedBackend:
    """Delegates to a backend, adding up the time spent in forward(): the rest of a decode
    loop's time is its own overhead."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.name, self.info, self.tokenizer = backend.name, backend.info, backend.tokenizer
        self.forward_time = 0.0
        self.forward_calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.backend.forward(*args, **kwargs)
        finally:
            self.forward_time += time.perf_counter() - started
            self.forward_calls += 1

    def __getattr__(self, name: str) -> Any:  # the rest of the Backend interface
        return getattr(self.backend, name)


# --- worker processes ----------------------------------------------------------------------------


def worker_env() -> dict[str, str]:
    """Environment for worker processes: this checkout first on the path, quiet transformers."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TRANSFORMERS_VERBOSITY": "error"}


def run_json(command: Sequence[str]) -> dict[str, Any]:
    """A one-shot worker process: the JSON object on its last stdout line, or {"error": ...}
    with its last stderr line."""
    proc = subprocess.run(list(command), capture_output=True, text=True, env=worker_env())
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        said = proc.stderr.strip().splitlines()
        return {"error": said[-1] if said else f"exit code {proc.returncode}"}
    return json.loads(lines[-1])


class Worker:
    """A long-lived worker process that answers one JSON line per JSON line it is sent."""

    def __init__(self, name: str, command: Sequence[str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=worker_env(),
        )  # fmt: skip
        self.info = self._read()  # the worker's ready line

    def ask(self, request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"worker {self.name} exited (code {code}) without answering")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait()


def start_workers(
    script: str | Path, names: Iterable[str], args: Sequence[str] = ()
) -> dict[str, Worker]:
    """`python SCRIPT --worker NAME ARGS...` for each name (one at a time, so that model loads
    do not overlap), each ready once it has answered its first line."""
    return {
        name: Worker(name, [sys.executable, str(script), "--worker", name, *args])
        for name in names
    }


def round_robin(
    workers: Mapping[str, Worker],
    jobs: Iterable[Any],
    on_result: Callable[[str, Any, dict[str, Any]], None],
    after_round: Callable[[int], None] | None = None,
) -> None:
    """Every worker does every job; job by job, the workers take turns with the first one
    rotating. `on_result(name, job, answer)` for each answer, `after_round(number)` after each
    job's round."""
    names = list(workers)
    for number, job in enumerate(jobs):
        first = number % len(names)
        for name in names[first:] + names[:first]:
            on_result(name, job, workers[name].ask(job))
        if after_round is not None:
            after_round(number)


def close_workers(workers: Mapping[str, Worker]) -> None:
    for worker in workers.values():
        worker.close()


def serve(handle: Callable[[Any], dict[str, Any]], ready: Mapping[str, Any] | None = None) -> None:
    """The worker side: say ready (with `ready`'s fields), then answer each request line on
    stdin with `handle(request)` as one JSON line."""
    print(json.dumps({"ready": True, **(ready or {})}), flush=True)
    for line in sys.stdin:
        print(json.dumps(handle(json.loads(line))), flush=True)
