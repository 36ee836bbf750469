"""gpt2cli against llama.cpp and CTranslate2 on the same weights (decode, prefill, cold start).

Run:  .venv/bin/python bench/bench_peers.py [--peers /tmp/peers] [--rounds 3] [--fidelity]

The weights are bench/common.py's 124M-shape checkpoint (seeded random weights). The peers are
built from that very checkpoint by ../shared/peers/build.sh (see bench/README.md):

    ../shared/peers/build.sh bench/out/models/gpt2-124m/torch /tmp/peers

llama.cpp (F32, Q8_0, Q4_0 GGUF conversions; llama-bench, llama-batched-bench when built,
llama-completion for the cold start, llama-perplexity for --fidelity) and CTranslate2 (float32 and
int8 conversions, in the peers' own venv). A peer that is absent is skipped with a message.

Measured, 2 threads everywhere, engines interleaved round by round (the first engine rotating),
medians over --rounds:
- decode: greedy, --tokens new tokens at batch 1 after an 8-token prompt (end of text never
  stops it);
- prefill: one forward pass over --prefill tokens;
- batch 8: 8 prompts decoded together, tok/s over all rows;
- cold start: a whole process that loads the model and makes one token from the prompt.
--fidelity adds, on the shared WikiText-2 test text: gpt2cli's int8/int4 against its fp32 (`score
--kl-base`) and llama.cpp's Q8_0/Q4_0 against its F32 (`llama-perplexity --kl-divergence`): mean KL
divergence and top-1 agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    GPT2CLI,
    WIKITEXT,
    Worker,
    describe_model,
    ensure_models,
    log,
    machine,
    model_dir,
    parse_args,
    run_process,
    serve,
    worker_env,
)

THREADS = 2
PROMPT_IDS = [15496, 11, 314, 1101, 257, 3303, 2746, 11]  # "Hello, I'm a language model,"
BATCH_PROMPTS = [
    PROMPT_IDS,
    [464, 2068, 7586, 21831],
    [7454, 2402, 257, 640, 11, 1290, 1290, 1497, 11],
    [14617, 640, 2084, 11, 612, 373, 257, 582],
    [818, 1478, 5892],
    [3666, 1438, 318, 1757, 290, 314, 716],
    [464, 29777, 20005, 19894, 262, 23642, 16046],
    [17250],
]
EOS = 50256

# engine: (label, precision, kind, model variant or GGUF name)
ENGINES: dict[str, tuple[str, str, str, str]] = {
    "llama.cpp-q4_0": ("llama.cpp Q4_0", "4-bit", "llama", "q4_0"),
    "llama.cpp-q8_0": ("llama.cpp Q8_0", "8-bit", "llama", "q8_0"),
    "llama.cpp-f32": ("llama.cpp F32", "fp32", "llama", "f32"),
    "ct2-int8": ("CTranslate2 int8", "8-bit", "ct2", "int8"),
    "ct2-float32": ("CTranslate2 float32", "fp32", "ct2", "float32"),
    "gpt2cli-int4": ("gpt2cli onnx int4", "4-bit", "gpt2cli", "onnx-int4"),
    "gpt2cli-int4h4": ("gpt2cli onnx int4, 4-bit head", "4-bit", "gpt2cli", "onnx-int4h4"),
    "gpt2cli-int8": ("gpt2cli onnx int8", "8-bit", "gpt2cli", "onnx-int8"),
    "gpt2cli-fp32": ("gpt2cli onnx fp32", "fp32", "gpt2cli", "onnx-fp32"),
}
JOBS = ("decode", "prefill", "batch8")


# --- the peers' files --------------------------------------------------------------------------


class Peers:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "llama.cpp" / "build" / "bin"
        self.models = root / "models"
        self.python = root / "venv" / "bin" / "python"

    def gguf(self, name: str) -> Path:
        return self.models / f"model-{name}.gguf"

    def ct2(self, name: str) -> Path:
        return self.models / f"ct2-{name}"

    def missing(self, engine: str) -> str | None:
        """Why `engine` cannot run here, or None."""
        _, _, kind, name = ENGINES[engine]
        if kind == "llama":
            for path in (self.bin / "llama-bench", self.gguf(name)):
                if not path.exists():
                    return f"{path} is missing (run ../shared/peers/build.sh)"
        if kind == "ct2" and not (self.ct2(name) / "model.bin").exists():
            return f"{self.ct2(name)} is missing (run ../shared/peers/build.sh)"
        if kind == "ct2" and not self.python.exists():
            return f"{self.python} is missing"
        return None

    def llama_version(self) -> str:
        try:
            out = subprocess.run([str(self.bin / "llama-bench"), "--version"], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (out.stdout + out.stderr).strip().splitlines()
        return text[0] if text else "?"

    def ct2_version(self) -> str:
        script = "import ctranslate2; print(ctranslate2.__version__)"
        out = subprocess.run([str(self.python), "-c", script], capture_output=True, text=True)
        return out.stdout.strip() or "?"


# --- llama.cpp (its own tools, one process per measurement; they time themselves) -------------


def llama_bench(peers: Peers, name: str, prompt: int, tokens: int) -> float:
    """llama-bench's tok/s for a prompt of `prompt` tokens (pp) or `tokens` new ones (tg)."""
    command = [str(peers.bin / "llama-bench"), "-m", str(peers.gguf(name)), "-t", str(THREADS),
               "-p", str(prompt), "-n", str(tokens), "-r", "1", "-o", "json"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"llama-bench failed: {out.stderr.strip().splitlines()[-1:]}")
    rows = json.loads(out.stdout)
    return float(rows[0]["avg_ts"])


def llama_batched(peers: Peers, name: str, tokens: int) -> float | None:
    """llama-batched-bench's decode tok/s for 8 parallel sequences, when it was built."""
    binary = peers.bin / "llama-batched-bench"
    if not binary.exists():
        return None
    command = [str(binary), "-m", str(peers.gguf(name)), "-t", str(THREADS), "-c", "4096",
               "-npp", "8", "-ntg", str(tokens), "-npl", "8", "--output-format", "jsonl"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            return float(json.loads(line)["speed_tg"])
    return None


def llama_cold(peers: Peers, name: str) -> float:
    binary = peers.bin / "llama-completion"
    if not binary.exists():
        binary = peers.bin / "llama-cli"
    command = [str(binary), "-m", str(peers.gguf(name)), "-t", str(THREADS), "-n", "1",
               "-p", "Hello, I'm a language model,", "-no-cnv", "--no-warmup"]
    seconds, _, code = run_process(command, stdin=subprocess.DEVNULL)
    if code != 0:
        raise RuntimeError(f"{binary.name} exited {code}")
    return seconds


# --- CTranslate2 and gpt2cli: long-lived workers answering jobs --------------------------------


def ct2_worker(path: str, tokens: int, prefill: int) -> None:
    import ctranslate2

    vocab = json.loads((Path(path) / "vocabulary.json").read_text())
    generator = ctranslate2.Generator(path, device="cpu", intra_threads=THREADS, inter_threads=1)

    def pieces(ids: list[int]) -> list[str]:
        return [vocab[i] for i in ids]

    def decode(batch: list[list[int]]) -> float:
        start = time.perf_counter()
        generator.generate_batch([pieces(p) for p in batch], max_length=tokens,
                                 min_length=tokens, sampling_topk=1,
                                 include_prompt_in_result=False)
        return time.perf_counter() - start

    long_prompt = (PROMPT_IDS * (prefill // len(PROMPT_IDS) + 1))[:prefill]

    def handle(job: dict[str, Any]) -> dict[str, Any]:
        kind = job["job"]
        if kind == "decode":
            return {"tok_s": tokens / decode([PROMPT_IDS])}
        if kind == "batch8":
            return {"tok_s": 8 * tokens / decode(BATCH_PROMPTS)}
        start = time.perf_counter()
        generator.forward_batch([pieces(long_prompt)])
        return {"tok_s": prefill / (time.perf_counter() - start)}

    decode([PROMPT_IDS])  # warm-up
    serve(handle, {"version": ctranslate2.__version__})


def gpt2cli_worker(variant: str, tokens: int, prefill: int) -> None:
    import numpy as np

    from gpt2cli.decoding import GenerationParams, Prompt
    from gpt2cli.loader import load_backend
    from gpt2cli.scheduler import generate

    backend = load_backend(str(model_dir(variant)), threads=THREADS)
    texts = {1: [backend.tokenizer.decode(PROMPT_IDS)],
             8: [backend.tokenizer.decode(p) for p in BATCH_PROMPTS]}

    def decode(batch: int, n: int) -> float:
        values = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}
        params = GenerationParams.resolve(backend.info.generation_defaults, values)
        prompts = [Prompt(t, f"prompt {i}") for i, t in enumerate(texts[batch])]
        start = time.perf_counter()
        generate(backend, prompts, params, batch_size=batch)
        return time.perf_counter() - start

    ids = np.array([(PROMPT_IDS * (prefill // len(PROMPT_IDS) + 1))[:prefill]], dtype=np.int64)
    mask = np.ones_like(ids)
    positions = np.arange(prefill, dtype=np.int64)[None, :]

    def handle(job: dict[str, Any]) -> dict[str, Any]:
        kind = job["job"]
        if kind == "decode":
            return {"tok_s": tokens / decode(1, tokens)}
        if kind == "batch8":
            return {"tok_s": 8 * tokens / decode(8, tokens)}
        start = time.perf_counter()
        backend.forward(ids, mask, positions, None, logits="last")
        return {"tok_s": prefill / (time.perf_counter() - start)}

    decode(1, 8)
    decode(8, 8)
    serve(handle)


def gpt2cli_cold(variant: str) -> float:
    command = [GPT2CLI, "generate", "-m", str(model_dir(variant)), "--max-new-tokens", "1",
               "--greedy", "-t", str(THREADS), "Hello, I'm a language model,"]
    seconds, _, code = run_process(command)
    if code != 0:
        raise RuntimeError(f"gpt2cli exited {code}")
    return seconds


def ct2_cold(peers: Peers, name: str) -> float:
    script = (
        "import ctranslate2, json, sys; p = sys.argv[1]; "
        "v = json.load(open(p + '/vocabulary.json')); "
        f"g = ctranslate2.Generator(p, intra_threads={THREADS}); "
        f"g.generate_batch([[v[i] for i in {PROMPT_IDS}]], max_length=1, sampling_topk=1)"
    )
    seconds, _, code = run_process([str(peers.python), "-c", script, str(peers.ct2(name))])
    if code != 0:
        raise RuntimeError(f"ctranslate2 exited {code}")
    return seconds


# --- fidelity ------------------------------------------------------------------------------------


def gpt2cli_kl(variant: str, tokens: int) -> dict[str, float]:
    command = [GPT2CLI, "score", "-m", str(model_dir(variant)), "--kl-base",
               str(model_dir("onnx-fp32")), "-t", str(THREADS), "--limit", str(tokens),
               "-c", "512", "--stride", "512", "--format", "json", "-f", str(WIKITEXT)]
    out = subprocess.run(command, capture_output=True, text=True, env=worker_env())
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    record = json.loads(out.stdout)[0]
    return {"kl": record["kl_divergence"], "top1": record["top1_agreement"]}


def llama_kl(peers: Peers, name: str, chunks: int, base_logits: Path) -> dict[str, float]:
    perplexity = str(peers.bin / "llama-perplexity")
    if not base_logits.exists():
        subprocess.run([perplexity, "-m", str(peers.gguf("f32")), "-f", str(WIKITEXT), "-c", "512",
                        "-t", str(THREADS), "--chunks", str(chunks), "--kl-divergence-base",
                        str(base_logits)], capture_output=True, text=True, check=True)
    out = subprocess.run([perplexity, "-m", str(peers.gguf(name)), "-t", str(THREADS),
                          "--kl-divergence-base", str(base_logits), "--kl-divergence",
                          "--chunks", str(chunks)], capture_output=True, text=True)
    text = out.stdout + out.stderr
    kl = re.search(r"Mean\s+KLD:\s+([-0-9.e]+)", text)
    top = re.search(r"Same top p:\s+([0-9.]+)", text)
    if not kl or not top:
        raise RuntimeError("llama-perplexity printed no KL divergence")
    return {"kl": float(kl.group(1)), "top1": float(top.group(1)) / 100}


# --- the run -----------------------------------------------------------------------------------


def start_worker(engine: str, peers: Peers, tokens: int, prefill: int) -> Worker:
    _, _, kind, name = ENGINES[engine]
    python = str(peers.python) if kind == "ct2" else sys.executable
    target = str(peers.ct2(name)) if kind == "ct2" else name
    command = [python, __file__, "--worker", kind, target, "--tokens", str(tokens),
               "--prefill", str(prefill)]
    return Worker(engine, command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--only", nargs="*", choices=list(ENGINES), help="Engines to run.")
    parser.add_argument("--no-cold", action="store_true")
    parser.add_argument("--fidelity", action="store_true",
                        help="Also KL divergence and top-1 agreement on WikiText-2.")
    parser.add_argument("--fidelity-tokens", type=int, default=8192)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parse_args(parser)
    if args.worker:
        kind, target = args.worker
        (ct2_worker if kind == "ct2" else gpt2cli_worker)(target, args.tokens, args.prefill)
        return

    peers = Peers(args.peers)
    engines = []
    for engine in args.only or list(ENGINES):
        why = peers.missing(engine)
        if why:
            log(f"skipping {engine}: {why}")
        else:
            engines.append(engine)
    ensure_models(["torch", "onnx-fp32", "onnx-int8", "onnx-int4", "onnx-int4h4"])
    versions = {"llama.cpp": peers.llama_version(), "ctranslate2": peers.ct2_version()}
    print(f"{describe_model()}; {THREADS} threads everywhere; decode {args.tokens} new tokens "
          f"greedy, prefill {args.prefill} tokens; median of {args.rounds} interleaved rounds; "
          f"{machine()}; llama.cpp {versions['llama.cpp']}, "
          f"CTranslate2 {versions['ctranslate2']}\n")

    results: dict[str, dict[str, list[float]]] = {e: {j: [] for j in JOBS} for e in engines}
    workers = {}
    for engine in engines:
        if ENGINES[engine][2] != "llama":
            log(f"loading {engine}")
            workers[engine] = start_worker(engine, peers, args.tokens, args.prefill)
    try:
        for number in range(args.rounds):
            order = engines[number % len(engines):] + engines[: number % len(engines)]
            for job in JOBS:
                for engine in order:
                    name = ENGINES[engine][3]
                    try:
                        if engine in workers:
                            value = workers[engine].ask({"job": job})["tok_s"]
                        elif job == "decode":
                            value = llama_bench(peers, name, 0, args.tokens)
                        elif job == "prefill":
                            value = llama_bench(peers, name, args.prefill, 0)
                        else:
                            value = llama_batched(peers, name, args.tokens)
                    except (RuntimeError, subprocess.SubprocessError, KeyError) as exc:
                        log(f"{engine} {job}: {exc}")
                        value = None
                    if value is not None:
                        results[engine][job].append(value)
            log(f"round {number + 1} of {args.rounds} done")
    finally:
        for worker in workers.values():
            worker.close()

    cold: dict[str, float] = {}
    if not args.no_cold:
        for engine in engines:
            _, _, kind, name = ENGINES[engine]
            runs = []
            for _ in range(args.rounds):
                try:
                    if kind == "llama":
                        runs.append(llama_cold(peers, name))
                    elif kind == "ct2":
                        runs.append(ct2_cold(peers, name))
                    else:
                        runs.append(gpt2cli_cold(name))
                except (RuntimeError, OSError) as exc:
                    log(f"{engine} cold start: {exc}")
                    break
            if runs:
                cold[engine] = statistics.median(runs)

    def med(engine: str, job: str) -> float | None:
        values = results[engine][job]
        return statistics.median(values) if values else None

    def cell(value: float | None, digits: int = 1) -> str:
        return f"{value:,.{digits}f}" if value is not None else "–"

    print("| engine | decode tok/s | prefill tok/s | batch-8 decode tok/s | batch 8 / batch 1 "
          "| cold start, 1 token (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for engine in engines:
        decode, batch = med(engine, "decode"), med(engine, "batch8")
        scale = f"{batch / decode:.2f}x" if decode and batch else "–"
        print(f"| {ENGINES[engine][0]} | {cell(decode)} | {cell(med(engine, 'prefill'))} "
              f"| {cell(batch)} | {scale} | {cell(cold.get(engine), 2)} |")

    print("\n| target | gpt2cli | peer | ratio | target met |")
    print("|---|---:|---:|---:|---|")

    def target(label: str, ours: str, peer_engines: list[str], job: str, need: float,
               lower_is_better: bool = False) -> None:
        if ours not in engines:
            return
        source = cold if job == "cold" else None
        mine = source.get(ours) if source is not None else med(ours, job)
        peer_values = [
            (source.get(p) if source is not None else med(p, job)) for p in peer_engines
            if p in engines
        ]
        peer_values = [v for v in peer_values if v is not None]
        if mine is None or not peer_values:
            return
        peer = min(peer_values) if lower_is_better else max(peer_values)
        ratio = peer / mine if lower_is_better else mine / peer
        met = ratio >= need
        print(f"| {label} | {cell(mine, 2)} | {cell(peer, 2)} | {ratio:.2f}x | "
              f"{'yes' if met else 'no'} (≥ {need}x) |")

    fastest = max((e for e in engines if e.startswith("gpt2cli")),
                  key=lambda e: med(e, "decode") or 0, default=None)
    if fastest:
        target("decode: fastest gpt2cli vs llama.cpp Q4_0", fastest, ["llama.cpp-q4_0"], "decode",
               1.25)
    target("decode: 8-bit vs llama.cpp Q8_0", "gpt2cli-int8", ["llama.cpp-q8_0"], "decode", 1.25)
    target("decode: fp32 vs best fp32 peer", "gpt2cli-fp32", ["llama.cpp-f32", "ct2-float32"],
           "decode", 1.25)
    target("prefill: int8 vs CTranslate2 int8", "gpt2cli-int8", ["ct2-int8"], "prefill", 1.0)
    target("prefill: fp32 vs best fp32 peer", "gpt2cli-fp32", ["ct2-float32", "llama.cpp-f32"],
           "prefill", 1.0)
    target("prefill: int4 vs llama.cpp Q4_0", "gpt2cli-int4", ["llama.cpp-q4_0"], "prefill", 1.0)
    target("batch 8: int8 vs best 8-bit peer", "gpt2cli-int8", ["ct2-int8", "llama.cpp-q8_0"],
           "batch8", 1.0)
    target("batch 8: fp32 vs best fp32 peer", "gpt2cli-fp32", ["ct2-float32", "llama.cpp-f32"],
           "batch8", 1.0)
    target("batch 8: int4 vs llama.cpp Q4_0", "gpt2cli-int4", ["llama.cpp-q4_0"], "batch8", 1.0)
    if fastest:
        target("cold start vs llama.cpp (≤ 2x its time)", fastest,
               ["llama.cpp-q4_0", "llama.cpp-q8_0"], "cold", 0.5, lower_is_better=True)

    if args.fidelity:
        print(f"\nFidelity on WikiText-2 test ({args.fidelity_tokens} tokens, windows of 512):\n")
        print("| quantized model vs its own fp32 | mean KL divergence | same top token |")
        print("|---|---:|---:|")
        chunks = max(1, args.fidelity_tokens // 512)
        with tempfile.TemporaryDirectory() as work:
            base = Path(work) / "f32.kld"
            rows: list[tuple[str, Any]] = [
                ("gpt2cli onnx int8", lambda: gpt2cli_kl("onnx-int8", args.fidelity_tokens)),
                ("gpt2cli onnx int4", lambda: gpt2cli_kl("onnx-int4", args.fidelity_tokens)),
                ("gpt2cli onnx int4, 4-bit head",
                 lambda: gpt2cli_kl("onnx-int4h4", args.fidelity_tokens)),
            ]
            if (peers.bin / "llama-perplexity").exists():
                rows += [
                    ("llama.cpp Q8_0", lambda: llama_kl(peers, "q8_0", chunks, base)),
                    ("llama.cpp Q4_0", lambda: llama_kl(peers, "q4_0", chunks, base)),
                ]
            for label, measure in rows:
                try:
                    figures = measure()
                except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                    log(f"{label}: {exc}")
                    continue
                print(f"| {label} | {figures['kl']:.5f} | {100 * figures['top1']:.2f}% |")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
