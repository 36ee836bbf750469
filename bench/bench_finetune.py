"""Fine-tuning speed: `gpt2cli finetune clm` (fp32, bf16, LoRA) against a run_clm.py-style
transformers Trainer run with the same settings.

Run:  .venv/bin/python bench/bench_finetune.py [--steps 50] [--rounds 2] [--smoke]

Data: the first 1 MB of the shared WikiText-2 raw test file (bench/out/finetune-wikitext-1mb.txt).
Model: the gpt2 124M shape with random weights (bench/common.ensure_models). Settings: block
size 256, batch size 4, AdamW at 5e-5, seed 0, `--steps` optimizer steps, all cores.
The baseline is transformers' examples/pytorch/language-modeling/run_clm.py reduced to its
steps: `datasets.load_dataset("text")`, tokenize, `group_texts` into blocks, `Trainer` with
`default_data_collator` (this file run with --baseline, in its own process).

Every case is its own process; the cases take turns, `--rounds` times (the starting case
rotating), so that load from other processes falls on each alike. Reported per case: the
Trainer's own train_runtime (model load and tokenizing excluded), seconds per step, tokens per
second (steps x batch x block / train_runtime) and the process's peak RSS; the best round.
--smoke runs 5 steps on the tiny model with 20 KB of text.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import (
    OUT,
    ROOT,
    WIKITEXT,
    describe_model,
    ensure_models,
    log,
    machine,
    parse_args,
    run_process,
    smoke,
)

BLOCK = 256
BATCH = 4
LR = 5e-5


def _data() -> Path:
    size = 20_000 if smoke() else 1_000_000
    path = OUT / f"finetune-wikitext-{'smoke' if smoke() else '1mb'}.txt"
    if not path.is_file():
        if not WIKITEXT.is_file():
            sys.exit(f"{WIKITEXT}: missing (the shared WikiText-2 file)")
        path.parent.mkdir(parents=True, exist_ok=True)
        text = WIKITEXT.read_bytes()[:size].decode("utf-8", "ignore")
        path.write_text(text, encoding="utf-8")
    return path


def baseline(model: str, data: str, steps: int, output: str) -> None:
    """run_clm.py's pipeline, reduced: what a transformers user runs."""
    from itertools import chain

    import datasets
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    raw = datasets.load_dataset("text", data_files={"train": data}, keep_linebreaks=True)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenized = raw.map(lambda rows: tokenizer(rows["text"]), batched=True,
                        remove_columns=["text"])

    def group_texts(examples: dict) -> dict:
        joined = {k: list(chain(*examples[k])) for k in examples}
        total = len(joined["input_ids"]) // BLOCK * BLOCK
        result = {k: [t[i : i + BLOCK] for i in range(0, total, BLOCK)] for k, t in joined.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized.map(group_texts, batched=True)
    args = TrainingArguments(output_dir=output, max_steps=steps, learning_rate=LR,
                             per_device_train_batch_size=BATCH, seed=0, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True,
                             logging_steps=500)
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(model), args=args,
                      train_dataset=grouped["train"], data_collator=default_data_collator)
    metrics = trainer.train().metrics
    print(json.dumps({"seconds": metrics["train_runtime"], "steps": trainer.state.global_step}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=["fp32", "bf16", "lora", "trainer"],
                        help="cases to run (default: all)")  # fmt: skip
    parser.add_argument("--baseline", nargs=3, metavar=("MODEL", "DATA", "OUTDIR"),
                        help=argparse.SUPPRESS)
    args = parse_args(parser)
    steps = 5 if smoke() else args.steps
    if args.baseline:
        baseline(args.baseline[0], args.baseline[1], steps, args.baseline[2])
        return
    model = str(ensure_models(["torch"])["torch"])
    data = str(_data())
    common = ["--train", data, "--max-steps", str(steps), "--block-size", str(BLOCK),
              "--batch-size", str(BATCH), "--lr", str(LR), "--seed", "0", "--format", "json"]
    cases = {
        "gpt2cli fp32": ["finetune", "clm", "-m", model, *common],
        "gpt2cli bf16": ["finetune", "clm", "-m", model, *common, "--dtype", "bfloat16"],
        "gpt2cli LoRA": ["finetune", "clm", "-m", model, *common, "--lora"],
        "run_clm-style Trainer": None,
    }
    if args.only:
        keys = dict(zip(["fp32", "bf16", "lora", "trainer"], cases, strict=True))
        cases = {keys[key]: cases[keys[key]] for key in args.only}
    best: dict[str, dict] = {}
    names = list(cases)
    for round_number in range(args.rounds):
        order = names[round_number % len(names):] + names[: round_number % len(names)]
        for name in order:
            work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
            result_file = work / "result.json"
            try:
                with open(result_file, "w") as out:
                    if cases[name] is None:
                        command = [sys.executable, __file__, "--baseline", model, data,
                                   str(work / "trainer")]
                    else:
                        command = [sys.executable, "-m", "gpt2cli", *cases[name], "-o",
                                   str(work / "model")]
                    # This checkout's gpt2cli, whatever the venv's console script points at.
                    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
                    wall, rss, code = run_process(command, stdout=out, env=env)
                if code != 0:
                    sys.exit(f"{name}: exit {code}")
                text = result_file.read_text()
                # The baseline's Trainer prints its metrics first: its own figure is the last line.
                result = json.loads(text.splitlines()[-1] if cases[name] is None else text)
                seconds = result["seconds"] if "seconds" in result and "train" not in result \
                    else result["train"]["seconds"]
                steps_done = result.get("steps") or result["train"]["steps"]
                figures = {"train_seconds": seconds, "s_per_step": seconds / steps_done,
                           "tokens_per_s": steps_done * BATCH * BLOCK / seconds,
                           "peak_rss_mb": rss, "wall_s": wall}
                log(f"round {round_number + 1} {name}: {figures['tokens_per_s']:.0f} tokens/s")
                if name not in best or seconds < best[name]["train_seconds"]:
                    best[name] = figures
            finally:
                shutil.rmtree(work, ignore_errors=True)
    peer = best["run_clm-style Trainer"]["tokens_per_s"]
    print(f"# {describe_model()}; {machine()}; {steps} steps, block {BLOCK}, batch {BATCH}")
    print(f"{'case':<24}{'tokens/s':>10}{'s/step':>9}{'peak RSS MB':>13}{'vs peer':>9}")
    for name, f in best.items():
        print(f"{name:<24}{f['tokens_per_s']:>10.0f}{f['s_per_step']:>9.3f}"
              f"{f['peak_rss_mb']:>13.0f}{f['tokens_per_s'] / peer:>8.2f}x")
    (OUT / "bench_finetune.json").write_text(json.dumps(best, indent=2) + "\n")


if __name__ == "__main__":
    main()
