"""Cold start: a whole process that loads a model and generates one token, gpt2cli on each ONNX
export against llama.cpp's llama-completion on the same weights (Q4_0), interleaved round by
round (the first engine rotating), medians. Issue 13's target: gpt2cli's fastest export within
2x llama.cpp's time.

    python bench/bench_cold_start.py [--runs 15] [--against NAME=DIR ...] [--models DIR ...]
                                     [--json PATH] [--smoke]

gpt2cli runs as `gpt2cli generate -m DIR --max-new-tokens 1 -t 2 -p Hello`, llama.cpp as
`llama-completion -m model-q4_0.gguf -n 1 -t 2 -p Hello -no-cnv --no-warmup` (skipped with a
message where /tmp/peers or --peers lacks it; see bench/README.md for its build). `--against
NAME=DIR` adds another gpt2cli source tree (say `git archive main gpt2cli | tar -x -C DIR`) for
before/after figures. Every tree is byte-compiled first, as an installed package is: under
PYTHONDONTWRITEBYTECODE a run would otherwise compile gpt2cli's sources each time (~0.2 s).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from common import (
    GPT2CLI,
    ROOT,
    VARIANTS,
    describe_model,
    ensure_models,
    log,
    machine,
    parse_args,
    smoke,
)

THREADS = 2
PROMPT = "Hello"
PEERS = Path("/tmp/peers")
LLAMA = "llama.cpp-q4_0"
TARGET_RATIO = 2.0


def gpt2cli_command(model: Path) -> list[str]:
    return [GPT2CLI, "generate", "-m", str(model), "--max-new-tokens", "1", "-t", str(THREADS),
            "-p", PROMPT]  # fmt: skip


def llama_command(peers: Path) -> list[str] | None:
    """llama-completion's cold start on the Q4_0 GGUF, or None (with a message) when absent."""
    binary = peers / "llama.cpp" / "build" / "bin" / "llama-completion"
    gguf = peers / "models" / "model-q4_0.gguf"
    for path in (binary, gguf):
        if not path.exists():
            log(f"llama.cpp skipped: {path} is missing (see bench/README.md, peers)")
            return None
    return [str(binary), "-m", str(gguf), "-n", "1", "-t", str(THREADS), "-p", PROMPT,
            "-no-cnv", "--no-warmup"]  # fmt: skip


def run_timed(command: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of all its threads, exit code) of a whole process. CPU time
    says more than wall time on a busy machine (it excludes waiting for a core)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    return seconds, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)


def check(name: str, command: list[str], env: dict[str, str]) -> bool:
    """Run once (a warm-up for the page cache); False, with its error, if it fails."""
    out = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        log(f"{name} skipped: exit {out.returncode}: {last}")
    return out.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="rounds (one run of each a round)")
    parser.add_argument("--against", action="append", default=[], metavar="NAME=DIR",
                        help="another gpt2cli source tree, run on the fastest export")
    parser.add_argument("--variants", nargs="+", default=None, help="onnx-* exports to run")
    parser.add_argument("--models", nargs="+", type=Path, default=None, metavar="DIR",
                        help="ONNX export directories to run instead (the last: --against's)")
    parser.add_argument("--peers", type=Path, default=PEERS, help="llama.cpp build and GGUFs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parse_args(parser)

    if args.models:
        models = {str(directory): directory.resolve() for directory in args.models}
        variants = list(models)
    else:
        variants = args.variants or [v for v in VARIANTS if v.startswith("onnx-")]
        models = ensure_models(variants)
    trees = {"gpt2cli": ROOT}
    for item in args.against:
        name, _, directory = item.partition("=")
        trees[name] = Path(directory).resolve()
    for tree in trees.values():
        compileall.compile_dir(str(tree / "gpt2cli"), quiet=1)

    commands: dict[str, tuple[list[str], dict[str, str]]] = {}
    for tree_name, tree in trees.items():
        env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}
        for variant in variants if tree_name == "gpt2cli" else variants[-1:]:
            name = f"{tree_name} {variant}"
            commands[name] = (gpt2cli_command(models[variant]), env)
    llama = None if smoke() else llama_command(args.peers)
    if llama is not None:
        commands[LLAMA] = (llama, dict(os.environ))
    commands = {name: c for name, c in commands.items() if check(name, *c)}

    log(f"{describe_model()}; {machine()}; {args.runs} interleaved rounds")
    runs: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for round_index in range(args.runs):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            seconds, cpu_seconds, code = run_timed(*commands[name])
            if code == 0:
                runs[name].append(seconds)
                cpu[name].append(cpu_seconds)

    medians = {name: statistics.median(times) for name, times in runs.items() if times}
    reference = medians.get(LLAMA)
    print(f"\ncold start, 1 new token, {THREADS} threads ({describe_model()}; {machine()})\n")
    print("| engine | median (s) | min (s) | vs llama.cpp Q4_0 | CPU median (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, median in medians.items():
        ratio = f"{median / reference:.2f}x" if reference else "–"
        print(f"| {name} | {median:.3f} | {min(runs[name]):.3f} | {ratio} "
              f"| {statistics.median(cpu[name]):.3f} |")  # fmt: skip
    fastest = min((m for n, m in medians.items() if n.startswith("gpt2cli ")), default=None)
    if reference and fastest:
        met = "met" if fastest <= TARGET_RATIO * reference else "not met"
        print(f"\ntarget: fastest gpt2cli export ≤ {TARGET_RATIO:g}x llama.cpp: "
              f"{fastest / reference:.2f}x, {met}")  # fmt: skip
        if os.getloadavg()[0] > (os.cpu_count() or 1):
            print("(a busy machine: llama.cpp's threads spin and suffer most from it, so the "
                  "ratio flatters gpt2cli; compare CPU times, or rerun on an idle machine)")
    print("\ncommand: " + " ".join(gpt2cli_command(Path("DIR"))))
    if llama is not None:
        print("peer:    " + " ".join(llama))
    if args.json:
        figures = {"runs": runs, "cpu": cpu, "medians": medians}
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
