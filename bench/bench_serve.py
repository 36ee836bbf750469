"""`gpt2cli serve` against llama.cpp's `llama-server` under a fixed-count load.

Run:  .venv/bin/python bench/bench_serve.py [--clients 1,4,16] [--requests 32] [--max-tokens 128]
        [--rounds 2] [--threads 2] [--precisions int8,int4,fp32] [--peers /tmp/peers] [--smoke]

Servers. gpt2cli serves bench/common.py's ONNX exports of the gpt2 124M shape (random weights) at
int8, int4 and fp32; llama-server serves the GGUF conversions of the same checkpoint built by
/work/shared/peers/build.sh (PEERS/models/model-{q8_0,q4_0,f32}.gguf, binary
PEERS/llama.cpp/build/bin/llama-server): int8 is compared with Q8_0, int4 with Q4_0, fp32 with F32.
Both get the same threads (-t), the same slots (gpt2cli --slots, llama-server -np, with -c giving
every slot the full 1024-token context) and run at once, idle while the other is measured. A peer
that is missing is skipped with a message.

Load. For each number of clients, a fixed count of requests (token-id prompts of 32..256 tokens,
seeded, different in every round) goes to /v1/completions with `stream`, greedy, `max_tokens`
new tokens and <|endoftext|> banned (`logit_bias`, and llama-server's `ignore_eos`), so every
request generates exactly max_tokens on both servers; llama-server's prompt cache is off. Each
client sends its next request when the last one is done (closed loop). Before the rounds, each
server gets one burst of `--slots` requests of the longest prompt (warm-up, not measured). The
servers take turns at every step, the first one rotating, `--rounds` times.

Reported per server and number of clients: aggregate generated tok/s (completion tokens over the
wall time of the whole batch; the median over rounds), p50 and p99 time to first token (first
streamed token after the request was sent), p50 inter-token latency (per request, the time from the
first to the last token over the tokens between; the median over requests), errors (non-200
answers, error events, short or broken streams), and the ratios gpt2cli / llama-server.
Figures also go to bench/out/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  (bench/ is on sys.path when run)
from common import OUT, ensure_models, log, model_dir  # noqa: E402

EOS = 50256
CONTEXT = 1024
# gpt2cli export variant, llama.cpp GGUF type: the matching precisions
PRECISIONS: dict[str, tuple[str, str]] = {
    "int8": ("onnx-int8", "q8_0"), "int4": ("onnx-int4", "q4_0"), "fp32": ("onnx-fp32", "f32"),
}  # fmt: skip
START_TIMEOUT = 300.0


@dataclass
class Server:
    """One running server process and what it serves."""

    name: str
    kind: str  # "gpt2cli" | "llama"
    precision: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Sample:
    """One request's timings."""

    ok: bool
    tokens: int = 0
    ttft: float | None = None
    itl: float | None = None
    error: str = ""


@dataclass
class Run:
    """One server's figures at one number of clients, over every round."""

    tok_s: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        good = [s for s in self.samples if s.ok]
        ttft = sorted(s.ttft for s in good if s.ttft is not None)
        itl = [s.itl for s in good if s.itl is not None]
        errors = [s.error for s in self.samples if not s.ok]
        return {
            "tok_s": round(statistics.median(self.tok_s), 1) if self.tok_s else None,
            "tok_s_rounds": [round(x, 1) for x in self.tok_s],
            "ttft_p50_ms": _ms(_percentile(ttft, 50)),
            "ttft_p99_ms": _ms(_percentile(ttft, 99)),
            "itl_p50_ms": _ms(statistics.median(itl) if itl else None),
            "requests": len(self.samples),
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
        }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# --- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gpt2cli(precision: str, args: argparse.Namespace, logs: Path) -> Server:
    variant = PRECISIONS[precision][0]
    port = free_port()
    command = [
        common.GPT2CLI, "serve", "-m", str(model_dir(variant)), "--backend", "onnx",
        "-t", str(args.threads), "--slots", str(args.slots),
        "--max-queue", str(max(args.requests, args.slots)),
        "--host", "127.0.0.1", "--port", str(port), "--no-ui",
    ]  # fmt: skip
    # llama-server's threads (OpenMP here) spin before they sleep by default; --spin: gpt2cli's too
    env = {"OMP_WAIT_POLICY": "ACTIVE"} if args.spin else {}
    return _start(f"gpt2cli {variant}", "gpt2cli", precision, command, port, logs, env)


def llama_paths(peers: Path, precision: str, smoke: bool) -> tuple[Path, Path] | str:
    """(llama-server, GGUF model) for `precision`, or why the peer cannot run."""
    binary = peers / "llama.cpp" / "build" / "bin" / "llama-server"
    if not binary.is_file():
        return f"{binary} is missing (build it with /work/shared/peers/build.sh)"
    gguf_type = PRECISIONS[precision][1]
    if smoke:
        made = smoke_gguf(peers, gguf_type)
        if isinstance(made, str):
            return made
        return binary, made
    model = peers / "models" / f"model-{gguf_type}.gguf"
    if not model.is_file():
        return f"{model} is missing (build it with /work/shared/peers/build.sh)"
    return binary, model


def smoke_gguf(peers: Path, gguf_type: str) -> Path | str:
    """The smoke model converted to GGUF as build.sh converts the real one (its venv and
    llama.cpp's converter and quantizer), under bench/out/models/smoke/gguf."""
    target = model_dir("torch").parent / "gguf" / f"model-{gguf_type}.gguf"
    if target.is_file():
        return target
    python = peers / "venv" / "bin" / "python"
    convert = peers / "llama.cpp" / "convert_hf_to_gguf.py"
    quantize = peers / "llama.cpp" / "build" / "bin" / "llama-quantize"
    for needed in (python, convert, quantize):
        if not needed.is_file():
            return f"{needed} is missing, needed to convert the smoke model to GGUF"
    hf = target.parent / "model-hf"
    shutil.rmtree(hf, ignore_errors=True)
    hf.mkdir(parents=True)
    source = model_dir("torch")
    for item in source.iterdir():
        if item.name != "config.json":
            (hf / item.name).symlink_to(item.resolve())
    config = json.loads((source / "config.json").read_text())
    config["n_ctx"] = config["n_positions"]  # the converter reads it (transformers 4.57 dropped it)
    (hf / "config.json").write_text(json.dumps(config))
    f32 = target.parent / "model-f32.gguf"
    steps = [[str(python), str(convert), str(hf), "--outtype", "f32", "--outfile", str(f32)]]
    if gguf_type != "f32":
        steps.append([str(quantize), str(f32), str(target), gguf_type.upper()])
    for step in steps:
        if step[0] == str(python) and f32.is_file():
            continue
        proc = subprocess.run(step, capture_output=True, text=True)
        if proc.returncode != 0:
            said = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            return f"converting the smoke model failed: {said}"
    return target


def start_llama(precision: str, args: argparse.Namespace, logs: Path) -> Server | str:
    found = llama_paths(args.peers, precision, args.smoke)
    if isinstance(found, str):
        return found
    binary, model = found
    port = free_port()
    command = [
        str(binary), "-m", str(model), "-t", str(args.threads), "-np", str(args.slots),
        "-c", str(CONTEXT * args.slots), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    return _start(f"llama {model.stem.removeprefix('model-')}", "llama", precision, command, port,
                  logs)  # fmt: skip


def _start(
    name: str, kind: str, precision: str, command: list[str], port: int, logs: Path,
    env: dict[str, str] | None = None,
) -> Server:
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name.replace(' ', '-')}.log"
    with open(log_path, "wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**common.worker_env(), **(env or {})},
        )  # fmt: skip
    server = Server(name, kind, precision, f"http://127.0.0.1:{port}", process, log_path)
    log(f"starting {name}: {' '.join(command)}")
    return server


async def wait_healthy(server: Server, client: Any) -> str | None:
    """None once GET /health answers 200, or why not."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace").strip().splitlines()[-1:]
            return f"exited with code {server.process.returncode}: {' '.join(tail)}"
        try:
            answer = await client.get(server.url + "/health", timeout=5)
            if answer.status_code == 200:
                return None
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        await asyncio.sleep(0.25)
    return f"not healthy after {START_TIMEOUT:.0f} s"


# --- load ----------------------------------------------------------------------------------------


def workload(count: int, max_tokens: int, seed: int, longest_only: bool = False) -> list[list[int]]:
    """`count` token-id prompts of 32..256 tokens (merged tokens only: no bytes, no special one),
    each short enough to leave room for max_tokens; `longest_only`: all of the longest."""
    rng = random.Random(seed)
    longest = min(256, CONTEXT - max_tokens)
    shortest = longest if longest_only else min(32, longest)
    return [
        [rng.randrange(256, 50000) for _ in range(rng.randint(shortest, longest))]
        for _ in range(count)
    ]


def body(server: Server, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": "gpt2", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
        "logit_bias": {str(EOS): -100},
    }  # fmt: skip
    if server.kind == "llama":
        request.update(ignore_eos=True, cache_prompt=False)
    return request


async def one_request(
    client: Any, server: Server, prompt: list[int], max_tokens: int, timeout: float
) -> Sample:
    """Send one streamed completion and time its tokens."""
    started = time.perf_counter()
    arrivals: list[float] = []
    usage: dict[str, Any] | None = None
    try:
        async with client.stream(
            "POST", server.url + "/v1/completions", json=body(server, prompt, max_tokens),
            timeout=timeout,
        ) as answer:  # fmt: skip
            if answer.status_code != 200:
                text = (await answer.aread()).decode(errors="replace")
                return Sample(False, error=f"HTTP {answer.status_code}: {text[:200]}")
            done = False
            async for line in answer.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    return Sample(False, error=f"error event: {json.dumps(event)[:200]}")
                if event.get("choices"):
                    arrivals.append(time.perf_counter())
                usage = event.get("usage") or usage
            if not done:
                return Sample(False, error="stream ended without [DONE]")
    except Exception as exc:  # noqa: BLE001 - any failure is an error of this request
        return Sample(False, error=f"{type(exc).__name__}: {exc}"[:200])
    tokens = int(usage["completion_tokens"]) if usage else len(arrivals)
    if tokens != max_tokens or not arrivals:
        return Sample(False, tokens, error=f"{tokens} tokens generated, not {max_tokens}")
    itl = (arrivals[-1] - arrivals[0]) / (tokens - 1) if tokens > 1 else None
    return Sample(True, tokens, arrivals[0] - started, itl)


async def load(
    client: Any, server: Server, prompts: list[list[int]], clients: int, args: argparse.Namespace
) -> tuple[float, list[Sample]]:
    """Fixed-count closed loop: `clients` tasks take the next prompt until none is left; the
    generated tokens per second of wall time, and every request's sample."""
    queue = list(reversed(prompts))
    samples: list[Sample] = []

    async def client_loop() -> None:
        while queue:
            prompt = queue.pop()
            samples.append(await one_request(client, server, prompt, args.max_tokens,
                                             args.timeout))  # fmt: skip

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    wall = time.perf_counter() - started
    return sum(s.tokens for s in samples if s.ok) / wall, samples


# --- report --------------------------------------------------------------------------------------


def ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if ours and theirs else "-"


def report(results: dict[str, Any], order: list[str], levels: list[int]) -> str:
    lines = [
        f"{'clients':>7}  {'server':<20}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'ITL p50':>9}{'errors':>8}",
    ]
    for clients in levels:
        for precision in order:
            pair = results[precision]
            for name in pair["servers"]:
                row = pair["figures"][name][str(clients)]
                lines.append(
                    f"{clients:>7}  {name:<20}{_cell(row['tok_s']):>9}"
                    f"{_cell(row['ttft_p50_ms']):>10}{_cell(row['ttft_p99_ms']):>10}"
                    f"{_cell(row['itl_p50_ms']):>9}{row['errors']:>5}/{row['requests']:<2}"
                )
            if len(pair["servers"]) == 2:
                ours, theirs = (pair["figures"][n][str(clients)] for n in pair["servers"])
                lines.append(
                    f"{'':>7}  {'  gpt2cli / llama':<20}"
                    f"{ratio(ours['tok_s'], theirs['tok_s']):>9}"
                    f"{ratio(ours['ttft_p50_ms'], theirs['ttft_p50_ms']):>10}"
                    f"{ratio(ours['ttft_p99_ms'], theirs['ttft_p99_ms']):>10}"
                    f"{ratio(ours['itl_p50_ms'], theirs['itl_p50_ms']):>9}"
                )
        lines.append("")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# --- main ----------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    import httpx

    logs = OUT / "serve-logs"
    order = list(args.precisions)
    servers: list[Server] = []
    results: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels))
    async with httpx.AsyncClient(limits=limits) as client:
        try:
            for precision in order:  # one at a time, so that model loads do not overlap
                pair: list[Server] = []
                for start in (start_gpt2cli, start_llama):
                    started = start(precision, args, logs)
                    if isinstance(started, str):
                        log(f"skipping llama-server at {precision}: {started}")
                        continue
                    servers.append(started)
                    problem = await wait_healthy(started, client)
                    if problem:
                        log(f"skipping {started.name}: {problem} (log: {started.log_path})")
                        started.stop()
                        continue
                    pair.append(started)
                results[precision] = {
                    "servers": [s.name for s in pair],
                    "figures": {s.name: {} for s in pair},
                    "_servers": pair,
                }
            active = [s for p in order for s in results[p]["_servers"]]
            if not active:
                raise SystemExit("bench_serve: no server could start")
            # Warm-up: a burst of `slots` of the longest prompts at each server, so that no
            # round measures first-use allocations (gpt2cli's batch cache grows into memory
            # that it then reuses; llama-server allocates its cache at start).
            warm = workload(args.slots, args.max_tokens, seed=10_000, longest_only=True)
            for server in active:
                await load(client, server, warm, args.slots, args)
            runs = {(s.name, c): Run() for s in active for c in levels}
            for round_number in range(args.rounds):
                for clients in levels:
                    prompts = workload(args.requests, args.max_tokens,
                                       seed=1000 * round_number + clients)  # fmt: skip
                    first = (round_number * len(levels) + levels.index(clients)) % len(active)
                    for server in active[first:] + active[:first]:
                        tok_s, samples = await load(client, server, prompts, clients, args)
                        run = runs[(server.name, clients)]
                        run.tok_s.append(tok_s)
                        run.samples.extend(samples)
                        bad = sum(not s.ok for s in samples)
                        log(f"round {round_number + 1}, {clients} clients, {server.name}: "
                            f"{tok_s:.1f} tok/s, {bad} errors")  # fmt: skip
            for precision in order:
                for server in results[precision].pop("_servers"):
                    for clients in levels:
                        summary = runs[(server.name, clients)].summary()
                        results[precision]["figures"][server.name][str(clients)] = summary
        finally:
            for server in servers:
                server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16", help="Concurrent clients, comma-separated.")
    parser.add_argument("--requests", type=int, default=32, help="Requests per level and round.")
    parser.add_argument("--max-tokens", type=int, default=128, help="New tokens per request.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds.")
    parser.add_argument("--threads", "-t", type=int, default=2, help="Threads of each server.")
    parser.add_argument("--slots", type=int, default=None,
                        help="Slots of each server (default: the most clients).")  # fmt: skip
    parser.add_argument(
        "--precisions", default="int8,int4,fp32",
        help="Of int8 (Q8_0), int4 (Q4_0), fp32 (F32), comma-separated.",
    )  # fmt: skip
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers"),
                        help="build.sh's output: llama.cpp/build/bin and models/.")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600, help="Seconds per request.")
    parser.add_argument("--output", type=Path, default=OUT / "serve.json")
    parser.add_argument("--spin", action="store_true",
                        help="gpt2cli's threads spin between steps (OMP_WAIT_POLICY=ACTIVE), as "
                             "llama-server's OpenMP threads do by default")  # fmt: skip
    args = common.parse_args(parser)
    levels = sorted({int(x) for x in args.clients.split(",")})
    args.precisions = [p.strip() for p in args.precisions.split(",")]
    for precision in args.precisions:
        if precision not in PRECISIONS:
            parser.error(f"unknown precision {precision!r}: expected int8, int4 or fp32")
    if args.smoke:
        args.requests, args.max_tokens, args.rounds = min(args.requests, 8), 8, 1
    args.slots = args.slots or max(levels)
    ensure_models(PRECISIONS[p][0] for p in args.precisions)
    results = asyncio.run(bench(args, levels))
    header = (
        f"gpt2cli serve vs llama-server: {common.describe_model()}; {common.machine()}; "
        f"{args.requests} requests per level, {args.max_tokens} new tokens each, prompts of "
        f"32..256 tokens, greedy; {args.slots} slots, {args.threads} threads per server; "
        f"{args.rounds} interleaved round(s); gpt2cli threads "
        f"{'spinning (OMP_WAIT_POLICY=ACTIVE)' if args.spin else 'not spinning (default)'}; "
        "times in ms"
    )
    print(header)
    print(report(results, args.precisions, levels))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "header": header, "clients": levels, "requests": args.requests,
        "max_tokens": args.max_tokens, "rounds": args.rounds, "slots": args.slots,
        "threads": args.threads, "results": results,
    }, indent=2) + "\n")  # fmt: skip
    log(f"figures written to {args.output}")


if __name__ == "__main__":
    main()
