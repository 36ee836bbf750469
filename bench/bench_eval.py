"""eval speed and agreement: gpt2cli eval's lambada_openai and wikitext2 against
lm-evaluation-harness's `hf` model on the same data, model and machine, in one run.

Run:  .venv/bin/python bench/bench_eval.py [--lambada-docs 500] [--wikitext-docs N] [--rounds 1]
        [--only CASE ...] [--tasks lambada_openai wikitext2] [--slices N]
      .venv/bin/python bench/bench_eval.py --smoke

Data. wikitext2: the shared WikiText-2 raw test file (../shared/data/wikitext-2-raw-test.txt),
cut into its 62 articles as `--data wikitext2=FILE` reads it (--wikitext-docs N: the first N).
lambada_openai: LAMBADA's test set is not on this machine (the Hub is out of reach), so the
benchmark builds a LAMBADA-shaped set from the same file: 500 passages, each the first 40 to
110 words (seeded) of a WikiText paragraph, detokenized, ending on a word; the task scores the
last word given the rest, exactly as on LAMBADA. The timings hold; the figures are not LAMBADA's.

Model: the gpt2 124M shape with random weights and its exports (bench/common.py). Cases, all in
this process, taking turns task by task (common.interleaved), or with `--slices N` over N
slices of wikitext2's articles (`sliced`), so machine load falls on each:
lm-eval's HFLM (transformers fp32, batch size 8: its loglikelihood and loglikelihood_rolling
with the requests its lambada_openai and wikitext tasks make), gpt2cli eval's engine on torch
fp32, onnx fp32 and onnx int8 (batch size 8). Reported: wall seconds per task, throughput
relative to lm-eval, and each metric with its relative change against lm-eval's (fp32 must be
identical to about 1e-6; int8 shows what quantization costs). Results also go to
bench/out/bench_eval.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from typing import Any

from common import (
    OUT,
    WIKITEXT,
    describe_model,
    ensure_models,
    interleaved,
    log,
    machine,
    model_dir,
    parse_args,
    smoke,
    timed,
)

BATCH = 8
SEED = 0

# name: (description, model variant, backend)
CASES: dict[str, tuple[str, str, str]] = {
    "lm-eval-hf": ("lm-eval 0.4.13 HFLM, transformers fp32", "torch", "hf"),
    "torch-fp32": ("gpt2cli eval --backend torch, fp32", "torch", "torch"),
    "onnx-fp32": ("gpt2cli eval --backend onnx, fp32", "onnx-fp32", "onnx"),
    "onnx-int8": ("gpt2cli eval --backend onnx, int8", "onnx-int8", "onnx"),
}
BASELINE = "lm-eval-hf"
TASK_NAMES = ["lambada_openai", "wikitext2"]


def lambada_shaped(articles: list[str], count: int) -> list[str]:
    """LAMBADA-like passages from WikiText paragraphs: detokenized, 40-110 words, cut after a
    word (the target), seeded."""
    from gpt2cli.evaluation.detokenize import wikitext

    rng = random.Random(SEED)
    paragraphs = [
        wikitext(line).strip()
        for article in articles
        for line in article.split("\n")
        if len(line.split()) >= 60 and not line.strip().startswith("=")
    ]
    passages = []
    for paragraph in paragraphs:
        words = paragraph.split(" ")
        cut = rng.randint(40, min(110, len(words)))
        passage = " ".join(words[:cut])
        if re.search(r"\w$", passage):
            passages.append(passage)
        if len(passages) == count:
            break
    return passages


def lm_eval_case(variant: str) -> dict[str, Any]:
    """lm-eval's HFLM running the requests its tasks make, and lm-eval's aggregations."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

    from gpt2cli.evaluation.tasks import lambada_pair

    lm = HFLM(pretrained=str(model_dir(variant)), batch_size=BATCH, device="cpu")

    def lambada(docs: list[str]) -> dict[str, float]:
        requests = [Instance("loglikelihood", {}, lambada_pair(text), number)
                    for number, text in enumerate(docs)]  # fmt: skip
        results = lm.loglikelihood(requests, disable_tqdm=True)
        lls = [ll for ll, _ in results]
        return {"perplexity": math.exp(-sum(lls) / len(lls)),
                "acc": sum(greedy for _, greedy in results) / len(results)}  # fmt: skip

    def wikitext(pages: list[str]) -> dict[str, float]:
        requests = [Instance("loglikelihood_rolling", {}, (wikitext_detokenizer({"page": page}),),
                             number) for number, page in enumerate(pages)]  # fmt: skip
        lls = lm.loglikelihood_rolling(requests, disable_tqdm=True)
        items = [process_results({"page": page}, [ll]) for page, ll in zip(pages, lls, strict=True)]
        words = sum(item["word_perplexity"][1] for item in items)
        n_bytes = sum(item["bits_per_byte"][1] for item in items)
        total = sum(lls)
        return {"word_perplexity": math.exp(-total / words),
                "byte_perplexity": math.exp(-total / n_bytes),
                "bits_per_byte": -total / n_bytes / math.log(2)}  # fmt: skip

    return {"lambada_openai": lambada, "wikitext2": wikitext}


def gpt2cli_case(variant: str, backend: str) -> dict[str, Any]:
    from gpt2cli.evaluation.tasks import TASKS, EvalOptions
    from gpt2cli.session import ModelOptions, open_model

    session = open_model(ModelOptions(str(model_dir(variant)), backend))
    options = EvalOptions(ctx=session.info.n_positions, batch_size=BATCH)

    def run(task: str) -> Any:
        def evaluate(docs: list[str]) -> dict[str, float]:
            result = session.evaluate(TASKS[task], docs, options)
            return {metric.name: metric.value for metric in result.metrics}

        return evaluate

    return {"lambada_openai": run("lambada_openai"), "wikitext2": run("wikitext2")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lambada-docs", type=int, default=500)
    parser.add_argument("--wikitext-docs", type=int, help="the first N articles (all 62)")
    parser.add_argument("--rounds", type=int, default=1, help="turns per case (best is kept)")
    parser.add_argument("--only", nargs="+", choices=list(CASES), help="cases to run")
    parser.add_argument("--tasks", nargs="+", choices=TASK_NAMES, default=TASK_NAMES,
                        help="tasks to run")  # fmt: skip
    parser.add_argument("--slices", type=int, default=1,
                        help="wikitext2: cases take turns over N slices of articles")  # fmt: skip
    args = parse_args(parser)
    if not WIKITEXT.is_file():
        sys.exit(f"{WIKITEXT} is missing: this benchmark needs the shared WikiText-2 file")
    from gpt2cli.evaluation.data import read_local

    articles = read_local(str(WIKITEXT), "wikitext", "page")
    lambada_count, wikitext_count = args.lambada_docs, args.wikitext_docs
    if smoke():
        lambada_count, wikitext_count = 20, 2
    pages = articles[:wikitext_count]
    passages = lambada_shaped(articles, lambada_count)
    names = args.only or list(CASES)
    if BASELINE not in names:
        names.insert(0, BASELINE)
    ensure_models({CASES[name][1] for name in names})
    log(f"{machine()}; {describe_model()}; lambada-shaped {len(passages)} passages, "
        f"wikitext2 {len(pages)} articles")  # fmt: skip
    cases = {}
    for name in names:
        _, variant, backend = CASES[name]
        cases[name] = lm_eval_case(variant) if backend == "hf" else gpt2cli_case(variant, backend)
    tasks = [(task, docs) for task, docs in (("lambada_openai", passages), ("wikitext2", pages))
             if task in args.tasks]  # fmt: skip
    for name in names:  # warm-up: first calls allocate and load kernels
        for task, docs in tasks:
            cases[name][task](docs[:1])
    rows = []
    for task, docs in tasks:
        if task == "wikitext2" and args.slices > 1:
            times, results = sliced(args.slices, {name: cases[name][task] for name in names}, docs)
        else:
            fns = {name: (lambda run=cases[name][task], docs=docs: run(docs)) for name in names}
            times, results = interleaved(args.rounds, fns)
        base_time, base = times[BASELINE], results[BASELINE]
        for name in names:
            changes = {metric: _change(value, base[metric])
                       for metric, value in results[name].items()}  # fmt: skip
            rows.append({"task": task, "case": name, "what": CASES[name][0], "docs": len(docs),
                         "seconds": times[name], "speedup": base_time / times[name],
                         "metrics": results[name], "relative_change": changes})  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / ("bench_eval-smoke.json" if smoke() else "bench_eval.json")).write_text(
        json.dumps({"machine": machine(), "rows": rows}, indent=2)
    )
    report(rows)


def sliced(
    count: int, runs: dict[str, Any], pages: list[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """wikitext2 with the cases taking turns slice by slice (the first case rotating), so that
    a slow spell of a noisy machine falls on every case alike: each case's seconds summed over
    the slices, and its metrics over the whole set, recombined from the slices' word
    perplexities with lm-eval's word and byte counts."""
    size = math.ceil(len(pages) / count)
    slices = [pages[start : start + size] for start in range(0, len(pages), size)]
    names = list(runs)
    seconds = dict.fromkeys(names, 0.0)
    nll = dict.fromkeys(names, 0.0)
    words = 0
    for number, part in enumerate(slices):
        part_words = sum(len(re.split(r"\s+", page)) for page in part)
        words += part_words
        for name in names[number % len(names) :] + names[: number % len(names)]:
            took, metrics = timed(lambda run=runs[name], part=part: run(part))
            seconds[name] += took
            nll[name] += math.log(metrics["word_perplexity"]) * part_words
    n_bytes = sum(len(page.encode("utf-8")) for page in pages)
    results = {name: {"word_perplexity": math.exp(total / words),
                      "byte_perplexity": math.exp(total / n_bytes),
                      "bits_per_byte": total / n_bytes / math.log(2)}
               for name, total in nll.items()}  # fmt: skip
    return seconds, results


def _change(value: float, base: float) -> float:
    """Relative change; for an accuracy of 0 (random weights), the difference itself."""
    return value / base - 1 if base else value - base


def report(rows: list[dict[str, Any]]) -> None:
    print(f"\neval against lm-eval's hf model ({describe_model()}; {machine()})")
    print(f"{'task':<15} {'case':<11} {'docs':>5} {'seconds':>9} {'speedup':>8}  metrics "
          "(relative change against lm-eval)")  # fmt: skip
    for row in rows:
        figures = ", ".join(f"{metric} {value:.6g} ({row['relative_change'][metric]:+.1e})"
                            for metric, value in row["metrics"].items())  # fmt: skip
        print(f"{row['task']:<15} {row['case']:<11} {row['docs']:>5} {row['seconds']:>9.2f} "
              f"{row['speedup']:>7.2f}x  {figures}")  # fmt: skip


if __name__ == "__main__":
    main()
