"""Embedding speed: gpt2cli embed against a plain transformers loop, one text at a time.

Run:  .venv/bin/python bench/bench_embed.py [--quick | --texts N] [--only CASE ...]

Texts: the first 1,000 non-blank lines of the shared WikiText-2 raw test file, read as
`gpt2cli embed -f FILE --lines` reads them (102,282 tokens; the longest is 473). Features: the
mean of last_hidden_state over each text's tokens (embed's default). The baseline tokenizes with
GPT2TokenizerFast and runs GPT2Model on each text alone, as a user of transformers would.
Model: the gpt2 124M shape with random weights and its exports, shared by every benchmark under
bench/out/models/ (bench/common.py builds them when missing).

Each case runs in its own worker process with its model loaded once; the texts are cut into
blocks of 250 and the workers take turns block by block (common.round_robin: the starting worker
rotating), so that load from other processes falls on every case alike. Reported: texts per
second (tokenization and pooling included, model load excluded) and the largest difference from
the baseline's vectors. Results also go to bench/out/bench_embed.json. --quick embeds the first
250 texts; --smoke embeds 20 on a tiny model.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import (
    OUT,
    WIKITEXT,
    close_workers,
    describe_model,
    ensure_models,
    machine,
    model_dir,
    parse_args,
    round_robin,
    serve,
    smoke,
    start_workers,
    timed,
)

TEXTS = 1000
BLOCK = 250
QUICK_TEXTS = 250
SMOKE_TEXTS = 20

# name: (description, model variant, backend, dtype)
CASES: dict[str, tuple[str, str, str, str]] = {
    "hf-loop": ("transformers GPT2Model, one text at a time, fp32", "torch", "hf", "float32"),
    "torch-fp32": ("gpt2cli embed --backend torch, fp32", "torch", "torch", "float32"),
    "onnx-fp32": ("gpt2cli embed --backend onnx, fp32", "onnx-fp32", "onnx", "float32"),
    "onnx-int8": ("gpt2cli embed --backend onnx, int8", "onnx-int8", "onnx", "float32"),
    "torch-bf16": ("gpt2cli embed --backend torch, bf16", "torch", "torch", "bfloat16"),
}
BASELINE = "hf-loop"


def read_lines(count: int) -> list[str]:
    from gpt2cli.inputs import read_texts

    return [t.text for t in read_texts(None, [str(WIKITEXT)], lines=True)[:count]]


def worker(name: str, count: int) -> None:
    """Load the case's model, then embed the blocks of texts the parent names on stdin."""
    _, variant, backend, dtype = CASES[name]
    texts = read_lines(count)
    run = hf_runner() if backend == "hf" else gpt2cli_runner(variant, backend, dtype)
    run(texts[:4])  # warm-up

    def embed_block(block: list[int]) -> dict:
        seconds, vectors = timed(lambda: run(texts[block[0] : block[1]]))
        return {"seconds": seconds, "vectors": vectors.tolist()}

    serve(embed_block)


def hf_runner():  # noqa: ANN201
    import numpy as np
    import torch
    from transformers import GPT2Model, GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(model_dir("torch"))
    model = GPT2Model.from_pretrained(model_dir("torch")).eval()

    def run(texts: list[str]) -> np.ndarray:
        vectors = []
        for text in texts:
            encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=1024)
            with torch.no_grad():
                hidden = model(**encoded).last_hidden_state
            vectors.append(hidden[0].mean(dim=0).numpy())
        return np.stack(vectors)

    return run


def gpt2cli_runner(variant: str, backend: str, dtype: str):  # noqa: ANN201
    import numpy as np

    from gpt2cli.embedding import EmbedOptions, embed_encoded, encode_texts
    from gpt2cli.loader import load_backend

    engine = load_backend(str(model_dir(variant)), backend=backend, dtype=dtype)
    options = EmbedOptions()

    def run(texts: list[str]) -> np.ndarray:
        encoded = encode_texts(engine, texts, [str(i) for i in range(len(texts))], truncate="right")
        return np.stack([e.vector for e in embed_encoded(engine, encoded, options)])

    return run


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_TEXTS} texts only")
    parser.add_argument("--texts", type=int, default=TEXTS, help="embed the first N lines")
    parser.add_argument("--only", nargs="+", choices=list(CASES), help="cases to run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parse_args(parser)
    count = SMOKE_TEXTS if smoke() else QUICK_TEXTS if args.quick else args.texts
    if args.worker:
        worker(args.worker, count)
        return
    if not WIKITEXT.is_file():
        sys.exit(f"{WIKITEXT} is missing: this benchmark needs the shared WikiText-2 file")
    names = args.only or list(CASES)
    if BASELINE not in names:
        names.insert(0, BASELINE)
    ensure_models({CASES[name][1] for name in names})

    workers = start_workers(__file__, names, ["--texts", str(count)])
    size = SMOKE_TEXTS // 2 if smoke() else BLOCK
    blocks = [(s, min(s + size, count)) for s in range(0, count, size)]
    seconds = dict.fromkeys(names, 0.0)
    vectors: dict[str, list] = {name: [] for name in names}

    def add(name: str, block: tuple[int, int], result: dict) -> None:
        seconds[name] += result["seconds"]
        vectors[name].extend(result["vectors"])

    def after(number: int) -> None:
        print(f"\rblock {number + 1}/{len(blocks)}", end="", file=sys.stderr)

    round_robin(workers, blocks, add, after)
    print(file=sys.stderr)
    close_workers(workers)

    baseline = np.array(vectors[BASELINE])
    base_rate = count / seconds[BASELINE]
    print(f"\nembed: {count} lines of WikiText-2 raw test, mean pooling; {describe_model()}, "
          f"{machine()}\n")  # fmt: skip
    print("| case | texts/s | speed-up | max abs diff from transformers |")
    print("|---|---:|---:|---:|")
    rows = []
    for name in names:
        rate = count / seconds[name]
        diff = float(np.abs(np.array(vectors[name]) - baseline).max())
        rows.append(
            {"case": name, "what": CASES[name][0], "seconds": seconds[name],
             "texts_per_s": rate, "speedup": rate / base_rate, "max_abs_diff": diff}
        )  # fmt: skip
        print(f"| {CASES[name][0]} | {rate:.1f} | {rate / base_rate:.2f}x | {diff:.1e} |")
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {"texts": count, "results": rows}
    (OUT / ("bench_embed-smoke.json" if smoke() else "bench_embed.json")).write_text(
        json.dumps(summary, indent=2)
    )


if __name__ == "__main__":
    main()
