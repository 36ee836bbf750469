"""`gpt2cli finetune clm|classify|ner`: fine-tune a GPT-2 model into a new model directory."""

from __future__ import annotations

import sys
from enum import Enum
from functools import partial
from typing import Annotated, Any

import typer

from gpt2cli import options
from gpt2cli.outputs import Progress, log, to_json

DATA = "Data"
TRAINING = "Training"
LORA = "LoRA"
OUTPUT = "Output"

_data = partial(options.panel_option, panel=DATA)
_training = partial(options.panel_option, panel=TRAINING)
_lora = partial(options.panel_option, panel=LORA)
_output = partial(options.panel_option, panel=OUTPUT)

finetune_app = typer.Typer(
    name="finetune",
    help="Fine-tune a GPT-2 model: clm (your own text), classify (text classification), ner "
    "(token classification). Needs the 'train' extra.",
    no_args_is_help=True,
)


class SummaryFormat(str, Enum):
    """--format choices: one summary about one model, so no jsonl."""

    text = "text"
    json = "json"


class TrainDtype(str, Enum):
    """--dtype choices for training (bfloat16: mixed precision, float32 master weights)."""

    float32 = "float32"
    bfloat16 = "bfloat16"


Model = options.Model
Train = Annotated[
    str, _data("--train", metavar="FILE", help="Training data (a local file, or hf:NAME[:SPLIT]).")
]
Valid = Annotated[
    str | None,
    _data("--valid", metavar="FILE", help="Validation data, evaluated before and after training "
          "(and every --eval-every steps)."),
]
OutputDir = Annotated[
    str,
    _output("--output-dir", "-o", metavar="DIR", help="The new model directory (written "
            "atomically; --force replaces only a previous finetune output)."),
]
TextField = Annotated[str, _data("--text-field", metavar="NAME", help="JSONL/CSV text field.")]
LabelField = Annotated[str, _data("--label-field", metavar="NAME", help="JSONL/CSV label field.")]
TokensField = Annotated[str, _data("--tokens-field", metavar="NAME", help="JSONL token list.")]
TagsField = Annotated[str, _data("--tags-field", metavar="NAME", help="JSONL tag list.")]
LabelNames = Annotated[
    str | None,
    _data("--label-names", metavar="A,B,...", help="Names of integer labels 0, 1, ... "
          "(default: LABEL_0, LABEL_1, ...)."),
]
Epochs = Annotated[
    float | None, _training("--epochs", metavar="N", help="Passes over the data (default 3).")
]
MaxSteps = Annotated[
    int | None, _training("--max-steps", metavar="N", help="Optimizer steps (instead of --epochs).")
]
Lr = Annotated[float, _training("--lr", metavar="RATE", help="Peak learning rate (AdamW, "
                                "linear decay).")]
BatchSize = Annotated[int, _training("--batch-size", "-b", metavar="N", help="Examples per step.")]
GradAccum = Annotated[
    int, _training("--grad-accum", metavar="N", help="Batches accumulated per optimizer step.")
]
BlockSize = Annotated[
    int | None,
    _training("--block-size", metavar="N", help="Tokens per example (clm: texts are packed into "
              "blocks of N; default: the model's context)."),
]
Seed = Annotated[int, _training("--seed", metavar="N", help="Seed for weights, dropout and "
                                "data order.")]
EvalEvery = Annotated[
    int | None, _training("--eval-every", metavar="N", help="Evaluate every N steps.")
]
SaveEvery = Annotated[
    int | None,
    _training("--save-every", metavar="N", help="Checkpoint every N steps (for --resume)."),
]
Resume = Annotated[
    bool, _training("--resume", help="Continue an interrupted run from its last checkpoint.")
]
Dtype = Annotated[
    TrainDtype,
    _training("--dtype", help="float32, or bfloat16 mixed precision.", case_sensitive=False),
]
Lora = Annotated[bool, _lora("--lora", help="Train LoRA adapters only (PEFT).")]
LoraR = Annotated[int, _lora("--lora-r", metavar="N", help="LoRA rank.")]
LoraAlpha = Annotated[float, _lora("--lora-alpha", metavar="N", help="LoRA alpha.")]
LoraDropout = Annotated[float, _lora("--lora-dropout", metavar="P", help="LoRA dropout.")]
LoraTargets = Annotated[
    str,
    _lora("--lora-targets", metavar="A,B,...", help="Modules to adapt (names or dotted suffixes)."),
]
Merge = Annotated[
    bool,
    _lora("--merge", help="Write merged weights (default for clm: the adapter and a reference "
          "to the base model)."),
]
Force = Annotated[
    bool, _output("--force", help="Replace a previous finetune output, or an interrupted run's "
                  "checkpoints.")
]
Format = Annotated[
    SummaryFormat | None,
    _output("--format", help="text (default): one summary line; json: the manifest.",
            case_sensitive=False, show_default=False),
]


def _names(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _run(task: str, values: dict[str, Any]) -> None:
    from gpt2cli.training.lora import LoraOptions
    from gpt2cli.training.trainer import FinetuneOptions, finetune

    fmt = options.output_format(values["output_format"])
    targets = _names(values["lora_targets"]) or ()
    settings = FinetuneOptions(
        task=task,
        model=values["model"] or "gpt2",
        train=values["train"],
        valid=values["valid"],
        output_dir=values["output_dir"],
        text_field=values.get("text_field", "text"),
        label_field=values.get("label_field", "label"),
        tokens_field=values.get("tokens_field", "tokens"),
        tags_field=values.get("tags_field", "ner_tags"),
        label_names=_names(values.get("label_names")),
        epochs=values["epochs"],
        max_steps=values["max_steps"],
        lr=values["lr"],
        batch_size=values["batch_size"],
        grad_accum=values["grad_accum"],
        block_size=values["block_size"],
        seed=values["seed"],
        lora=values["lora"],
        lora_options=LoraOptions(values["lora_r"], values["lora_alpha"], values["lora_dropout"],
                                 targets),
        merge=values["merge"],
        resume=values["resume"],
        eval_every=values["eval_every"],
        save_every=values["save_every"],
        threads=values["threads"],
        dtype=values["dtype"].value,
        force=values["force"],
    )
    with Progress(f"fine-tuning ({task})", total=None, unit="steps") as progress:

        def report(step: int, total: int, logs: dict[str, float]) -> None:
            described = ", ".join(
                f"{name} {logs[key]:.3g}" for key, name in (("loss", "loss"),
                                                            ("learning_rate", "lr")) if key in logs
            )
            progress.update(completed=step, total=total,
                            description=f"fine-tuning ({task})" + (f": {described}" if described
                                                                   else ""))

        manifest = finetune(settings, report)
    log(f"wrote {settings.output_dir} ({manifest['train']['steps']} steps in "
        f"{manifest['seconds']} s)")
    if fmt == "json":
        sys.stdout.write(to_json(manifest, indent=2) + "\n")
    else:
        sys.stdout.write(summary_line(manifest, settings.output_dir) + "\n")


def summary_line(manifest: dict[str, Any], outdir: str) -> str:
    """The one line `finetune` prints: where, how long, and the validation figure."""
    from gpt2cli.training.trainer import _describe

    train = manifest["train"]
    parts = [f"{outdir}: {train['steps']} steps"]
    if train.get("loss") is not None:
        parts.append(f"train loss {train['loss']:.4g}")
    final, initial = manifest.get("final_eval"), manifest.get("initial_eval")
    if final:
        text = "valid " + _describe(final)
        if initial and "perplexity" in initial:
            text += f" (was {initial['perplexity']:.4g})"
        parts.append(text)
    return ", ".join(parts)


@finetune_app.command("clm")
def clm(
    train: Train,
    output_dir: OutputDir,
    model: Model = None,
    valid: Valid = None,
    text_field: TextField = "text",
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    lr: Lr = 5e-5,
    batch_size: BatchSize = 8,
    grad_accum: GradAccum = 1,
    block_size: BlockSize = None,
    seed: Seed = 42,
    eval_every: EvalEvery = None,
    save_every: SaveEvery = None,
    resume: Resume = False,
    threads: options.ThreadsOpt = None,
    dtype: Dtype = TrainDtype.float32,
    lora: Lora = False,
    lora_r: LoraR = 8,
    lora_alpha: LoraAlpha = 16.0,
    lora_dropout: LoraDropout = 0.05,
    lora_targets: LoraTargets = "c_attn,attn.c_proj",
    merge: Merge = False,
    force: Force = False,
    output_format: Format = None,
) -> None:
    """Fine-tune on your own text (causal language modelling).

    --train is plain text (one text) or JSONL with a text field (one text per row); texts
    are joined with <|endoftext|> and packed into --block-size blocks. The result works in
    generate, score, embed, export-onnx and serve. Prints one summary line (--format json:
    the manifest, gpt2cli-finetune.json).
    """
    _run("clm", locals())


@finetune_app.command("classify")
def classify(
    train: Train,
    output_dir: OutputDir,
    model: Model = None,
    valid: Valid = None,
    text_field: TextField = "text",
    label_field: LabelField = "label",
    label_names: LabelNames = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    lr: Lr = 5e-5,
    batch_size: BatchSize = 8,
    grad_accum: GradAccum = 1,
    block_size: BlockSize = None,
    seed: Seed = 42,
    eval_every: EvalEvery = None,
    save_every: SaveEvery = None,
    resume: Resume = False,
    threads: options.ThreadsOpt = None,
    dtype: Dtype = TrainDtype.float32,
    lora: Lora = False,
    lora_r: LoraR = 8,
    lora_alpha: LoraAlpha = 16.0,
    lora_dropout: LoraDropout = 0.05,
    lora_targets: LoraTargets = "c_attn,attn.c_proj",
    merge: Merge = False,
    force: Force = False,
    output_format: Format = None,
) -> None:
    """Fine-tune a text classifier (GPT2ForSequenceClassification).

    --train is CSV (a header row) or JSONL with a text and a label field (dair-ai/emotion's
    layout: {"text": ..., "label": 3}); labels are names or integers. Accuracy and macro-F1
    are reported. Run the result with `gpt2cli classify`.
    """
    _run("classify", locals())


@finetune_app.command("ner")
def ner(
    train: Train,
    output_dir: OutputDir,
    model: Model = None,
    valid: Valid = None,
    tokens_field: TokensField = "tokens",
    tags_field: TagsField = "ner_tags",
    label_names: LabelNames = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    lr: Lr = 5e-5,
    batch_size: BatchSize = 8,
    grad_accum: GradAccum = 1,
    block_size: BlockSize = None,
    seed: Seed = 42,
    eval_every: EvalEvery = None,
    save_every: SaveEvery = None,
    resume: Resume = False,
    threads: options.ThreadsOpt = None,
    dtype: Dtype = TrainDtype.float32,
    lora: Lora = False,
    lora_r: LoraR = 8,
    lora_alpha: LoraAlpha = 16.0,
    lora_dropout: LoraDropout = 0.05,
    lora_targets: LoraTargets = "c_attn,attn.c_proj",
    merge: Merge = False,
    force: Force = False,
    output_format: Format = None,
) -> None:
    """Fine-tune a named-entity tagger (GPT2ForTokenClassification).

    --train is a CoNLL-2003 column file (-DOCSTART- lines, blank lines between sentences,
    the tag in the last column) or JSONL with token and tag lists. Words get a prefix space;
    a word's first sub-token carries its tag. seqeval's entity F1 is reported. Run the result
    with `gpt2cli classify`.
    """
    _run("ner", locals())
