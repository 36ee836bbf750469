"""`finetune`'s engine: data to examples, the model for the task, transformers' Trainer (with
PEFT's LoRA where asked), checkpoints for `--resume`, and the finished model directory.

Tasks: `clm` (GPT2LMHeadModel on texts packed into blocks), `classify`
(GPT2ForSequenceClassification) and `ner` (GPT2ForTokenClassification).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from gpt2cli.errors import InputError, MissingExtraError, ModelError
from gpt2cli.model_files import TOKENIZER_FILES
from gpt2cli.model_info import TANH_GELU
from gpt2cli.outputs import log
from gpt2cli.training import data as data_files
from gpt2cli.training.lora import LoraOptions, apply_lora, parameter_counts
from gpt2cli.training.outdir import MANIFEST_FORMAT, Staging, check_outdir

TASKS = ("clm", "classify", "ner")
DTYPES = ("float32", "bfloat16")
# The classification pad token: not <|endoftext|>, so that a text that ends with
# <|endoftext|> is pooled at that token (GPT2ForSequenceClassification pools at the last
# token that is not the pad token).
PAD_TOKEN = "<|pad|>"
IGNORE = -100  # labels the loss skips: padding, and NER's later sub-tokens
LIBRARIES = ("gpt2cli", "torch", "transformers", "peft", "accelerate", "datasets", "seqeval")
FORMAT_VERSION = 1

# progress(step, total_steps, logs): logs holds the latest loss and learning rate.
ProgressFn = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class FinetuneOptions:
    """Everything one finetune run needs, by engine parameter names."""

    task: str
    model: str
    train: str
    output_dir: str
    valid: str | None = None
    text_field: str = "text"
    label_field: str = "label"
    tokens_field: str = "tokens"
    tags_field: str = "ner_tags"
    label_names: tuple[str, ...] | None = None
    epochs: float | None = None  # default 3 when neither this nor max_steps is given
    max_steps: int | None = None
    lr: float = 5e-5
    batch_size: int = 8
    grad_accum: int = 1
    block_size: int | None = None  # default: the model's context (clm), or for classify/ner
    seed: int = 42
    lora: bool = False
    lora_options: LoraOptions = field(default_factory=LoraOptions)
    merge: bool = False
    resume: bool = False
    eval_every: int | None = None
    save_every: int | None = None
    threads: int | None = None
    dtype: str = "float32"
    force: bool = False

    def training_arguments(self) -> dict[str, Any]:
        """The arguments that decide the result, recorded in the manifest; --resume must
        repeat them."""
        values = asdict(self)
        for name in ("resume", "force", "threads", "output_dir"):
            values.pop(name)
        return values


def _check(options: FinetuneOptions) -> None:
    def positive(name: str, value: float | None) -> None:
        if value is not None and not value > 0:
            raise InputError(param=name, reason=f"must be more than 0, got {value}")

    if options.task not in TASKS:
        raise InputError(param="task", reason=f"expected one of {', '.join(TASKS)}")
    if options.dtype not in DTYPES:
        raise InputError(param="dtype", reason=f"training runs in {' or '.join(DTYPES)}")
    if options.epochs is not None and options.max_steps is not None:
        raise InputError(param="max_steps", reason="give --epochs or --max-steps, not both")
    for name in ("epochs", "max_steps", "lr", "batch_size", "grad_accum", "block_size",
                 "eval_every", "save_every"):
        positive(name, getattr(options, name))
    if options.lr is not None and not math.isfinite(options.lr):
        raise InputError(param="lr", reason="must be a finite number")
    lora = options.lora_options
    positive("lora_r", lora.r)
    positive("lora_alpha", lora.alpha)
    if not 0 <= lora.dropout < 1:
        raise InputError(param="lora_dropout", reason=f"must be in [0, 1), got {lora.dropout}")
    if options.merge and not options.lora:
        raise InputError(param="merge", reason="only with {lora}")


def require_training_packages() -> None:
    """The 'train' extra: torch, transformers, PEFT, accelerate (and seqeval for ner)."""
    for module in ("seqeval", "peft", "accelerate", "torch", "transformers"):
        try:
            __import__(module)
        except ImportError:
            raise MissingExtraError("finetune", "train") from None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class Prepared:
    """Tokenized examples ready for the Trainer, and what the manifest says about them."""

    train: list[dict[str, list[int]]]
    valid: list[dict[str, list[int]]] | None
    labels: list[str] | None
    tokens: int  # real tokens in one pass over the training examples


def read_data(options: FinetuneOptions) -> tuple[data_files.Examples, data_files.Examples | None]:
    """The training and validation files, checked row by row (before any model loads)."""
    def read(path: str, split: str) -> data_files.Examples:
        if options.task == "clm":
            return data_files.read_clm(path, options.text_field, split)
        if options.task == "classify":
            return data_files.read_classify(path, options.text_field, options.label_field, split)
        return data_files.read_ner(path, options.tokens_field, options.tags_field, split)

    train = read(options.train, "train")
    valid = read(options.valid, "validation") if options.valid else None
    return train, valid


def _flat(values: list[Any], task: str) -> list[Any]:
    return [tag for tags in values for tag in tags] if task == "ner" else list(values)


def prepare(
    options: FinetuneOptions,
    tokenizer: Any,
    train: data_files.Examples,
    valid: data_files.Examples | None,
    context: int,
) -> Prepared:
    block = min(options.block_size or context, context)
    if options.block_size and options.block_size > context:
        raise InputError(
            param="block_size", reason=f"{options.block_size} is more than the model's context "
            f"of {context}"
        )
    if options.task == "clm":
        train_rows = _clm_blocks(tokenizer, train, block)
        valid_rows = _clm_blocks(tokenizer, valid, block) if valid else None
        return Prepared(train_rows, valid_rows, None, sum(len(r["input_ids"]) for r in train_rows))
    names = data_files.label_names(
        _flat(train.labels, options.task),
        _flat(valid.labels, options.task) if valid else [],
        list(options.label_names) if options.label_names else None,
        train.sources,
        [s for s, tags in zip(valid.sources, valid.labels, strict=True)
         for _ in (tags if options.task == "ner" else [tags])] if valid else [],
    )
    index = {name: i for i, name in enumerate(names)}

    def label_id(value: Any) -> int:
        return value if isinstance(value, int) else index[value]

    encode = _classify_rows if options.task == "classify" else _ner_rows
    train_rows = encode(tokenizer, train, label_id, block)
    valid_rows = encode(tokenizer, valid, label_id, block) if valid else None
    return Prepared(train_rows, valid_rows, names, sum(len(r["input_ids"]) for r in train_rows))


def _clm_blocks(tokenizer: Any, examples: data_files.Examples, block: int) -> list[dict]:
    """Every text's tokens followed by <|endoftext|>, concatenated and cut into blocks of
    `block` tokens (run_clm's grouping); the remainder is a last, shorter block."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in examples.texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    if len(ids) < 2:
        raise InputError(f"{examples.path}: too short to train on")
    blocks = [ids[i : i + block] for i in range(0, len(ids), block)]
    if len(blocks) > 1 and len(blocks[-1]) < 2:
        blocks.pop()
    return [{"input_ids": b, "attention_mask": [1] * len(b), "labels": list(b)} for b in blocks]


def _classify_rows(
    tokenizer: Any, examples: data_files.Examples, label_id: Callable[[Any], int], block: int
) -> list[dict]:
    rows = []
    for text, label in zip(examples.texts, examples.labels, strict=True):
        encoded = tokenizer(text, truncation=True, max_length=block)
        rows.append({"input_ids": encoded["input_ids"],
                     "attention_mask": encoded["attention_mask"], "labels": label_id(label)})
    return rows


def _ner_rows(
    tokenizer: Any, examples: data_files.Examples, label_id: Callable[[Any], int], block: int
) -> list[dict]:
    """Words tokenized with a prefix space each; a word's first sub-token carries its tag, the
    rest are masked (-100) from the loss."""
    rows = []
    for words, tags in zip(examples.texts, examples.labels, strict=True):
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=block)
        labels, previous = [], None
        for word in encoded.word_ids():
            labels.append(IGNORE if word is None or word == previous else label_id(tags[word]))
            previous = word
        rows.append({"input_ids": encoded["input_ids"],
                     "attention_mask": encoded["attention_mask"], "labels": labels})
    return rows


def _pad_collator(pad_id: int) -> Callable[[list[dict]], dict]:
    """Right padding: ids with `pad_id`, mask 0, labels -100 (sequence labels stay scalars)."""
    import torch

    def collate(rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        batch: dict[str, Any] = {}
        batch["input_ids"] = torch.tensor(
            [r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows])
        batch["attention_mask"] = torch.tensor(
            [r["attention_mask"] + [0] * (width - len(r["attention_mask"])) for r in rows])
        if isinstance(rows[0]["labels"], list):
            batch["labels"] = torch.tensor(
                [r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in rows])
        else:
            batch["labels"] = torch.tensor([r["labels"] for r in rows])
        return batch

    return collate


def _metrics_fn(task: str, names: list[str] | None) -> Callable[[Any], dict[str, float]] | None:
    import numpy as np

    if task == "classify":
        def classify_metrics(prediction: Any) -> dict[str, float]:
            predicted = np.argmax(prediction.predictions, axis=-1)
            truth = prediction.label_ids
            f1s = []
            for label in range(len(names or [])):
                tp = int(np.sum((predicted == label) & (truth == label)))
                fp = int(np.sum((predicted == label) & (truth != label)))
                fn = int(np.sum((predicted != label) & (truth == label)))
                if tp + fp + fn:
                    f1s.append(2 * tp / (2 * tp + fp + fn))
            return {"accuracy": float(np.mean(predicted == truth)),
                    "macro_f1": float(np.mean(f1s)) if f1s else 0.0}

        return classify_metrics
    if task == "ner":
        def ner_metrics(prediction: Any) -> dict[str, float]:
            from seqeval.metrics import f1_score, precision_score, recall_score

            predicted = np.argmax(prediction.predictions, axis=-1)
            truth_tags, predicted_tags = [], []
            for row_pred, row_truth in zip(predicted, prediction.label_ids, strict=True):
                keep = row_truth != IGNORE
                truth_tags.append([names[i] for i in row_truth[keep]])
                predicted_tags.append([names[i] for i in row_pred[keep]])
            flat_truth = [t for row in truth_tags for t in row]
            flat_pred = [t for row in predicted_tags for t in row]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # seqeval warns on tags that are not IOB
                return {
                    "f1": float(f1_score(truth_tags, predicted_tags)),
                    "precision": float(precision_score(truth_tags, predicted_tags)),
                    "recall": float(recall_score(truth_tags, predicted_tags)),
                    "accuracy": float(np.mean([a == b for a, b in
                                               zip(flat_truth, flat_pred, strict=True)])),
                }

        return ner_metrics
    return None


def _clean_metrics(metrics: dict[str, float], task: str) -> dict[str, float]:
    cleaned = {k.removeprefix("eval_"): v for k, v in metrics.items()
               if k.removeprefix("eval_") not in ("runtime", "samples_per_second",
                                                  "steps_per_second")}
    if task == "clm" and "loss" in cleaned:
        cleaned["perplexity"] = math.exp(min(cleaned["loss"], 700.0))
    return cleaned


def _describe(metrics: dict[str, float]) -> str:
    order = ("perplexity", "loss", "accuracy", "macro_f1", "f1", "precision", "recall")
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in order if k in metrics)


def _load_tokenizer(directory: Path, task: str) -> Any:
    from transformers import AutoTokenizer

    kwargs = {"add_prefix_space": True} if task == "ner" else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, use_fast=True, **kwargs)
    except Exception as exc:  # missing or broken tokenizer files
        raise ModelError(f"{directory}: cannot load the tokenizer: {exc}") from None
    tokenizer.padding_side = "right"
    if task == "classify":
        if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_model(directory: Path, options: FinetuneOptions, tokenizer: Any,
                labels: list[str] | None) -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    classes = {"clm": transformers.AutoModelForCausalLM,
               "classify": transformers.AutoModelForSequenceClassification,
               "ner": transformers.AutoModelForTokenClassification}
    kwargs: dict[str, Any] = {}
    if labels is not None:
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                  "label2id": {name: i for i, name in enumerate(labels)}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = classes[options.task].from_pretrained(
                directory, local_files_only=True, trust_remote_code=False, **kwargs)
    except Exception as exc:
        from gpt2cli.backends.torch import weights_error

        raise ModelError(f"{directory}: cannot load the weights: {weights_error(exc)}") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    fuse_gelu(model)
    model.config.pad_token_id = tokenizer.pad_token_id
    if options.task == "clm" and model.generation_config is not None:
        model.generation_config.pad_token_id = None  # as the base model: only config says it
    return model


def fuse_gelu(model: Any) -> int:
    """Give GPT-2's blocks torch's one-kernel tanh GELU in place of transformers' `gelu_new`
    (model_info.TANH_GELU): the same function, but gelu_new is five elementwise operations
    whose intermediates autograd keeps, about 7% of an fp32 training step. The config keeps its
    activation's name, so the saved model is unchanged. The number of blocks changed."""
    from transformers.activations import ACT2FN

    if getattr(model.config, "activation_function", None) not in TANH_GELU:
        return 0
    body = getattr(model, "transformer", None)
    blocks = getattr(body, "h", None) or []
    for block in blocks:
        block.mlp.act = ACT2FN["gelu_pytorch_tanh"]
    return len(blocks)


def _callbacks(progress: ProgressFn, task: str, evaluations: list[dict[str, Any]]) -> Any:
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):
        """Progress (loss, learning rate) to the front end; evaluations to stderr."""

        def __init__(self) -> None:
            self.latest: dict[str, float] = {}

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            for key in ("loss", "learning_rate"):
                if logs and key in logs:
                    self.latest[key] = float(logs[key])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            progress(state.global_step, state.max_steps, dict(self.latest))

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None,
                        **kw: Any) -> None:
            cleaned = _clean_metrics(metrics or {}, task)
            record = {"step": state.global_step, "epoch": state.epoch, **cleaned}
            evaluations.append(record)
            log(f"eval at step {state.global_step}: {_describe(cleaned)}")

    return Reporter()


def _base_reference(model: str, directory: Path) -> str:
    """How an adapter names its base model: a Hub id as given, a local one by absolute path."""
    from gpt2cli.model_files import is_local

    return str(directory.resolve()) if is_local(model) else model


def finetune(options: FinetuneOptions, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train, write OUTDIR atomically, and return the manifest written there."""
    _check(options)
    outdir = Path(options.output_dir).expanduser()
    source = Path(options.model).expanduser()
    check_outdir(outdir, options.force, source if source.is_dir() else None)
    train, valid = read_data(options)  # bad rows fail before any model loads
    require_training_packages()
    from gpt2cli.loader import locate_model

    located = locate_model(options.model, "torch")
    base_dir = located.directory
    started = time.monotonic()
    staging = Staging(outdir, options.resume, options.force)
    finished = False
    import torch

    threads = torch.get_num_threads()
    try:
        manifest = _run(options, located, base_dir, train, valid, staging, progress, started)
        staging.write_manifest(manifest)
        staging.commit(options.force)
        finished = True
        return manifest
    finally:
        torch.set_num_threads(threads)  # --threads is for this run (tests run in-process)
        if not finished:
            if staging.last_checkpoint() is not None:
                staging.release()
                log(f"checkpoints kept in {staging.path}: --resume continues from "
                    f"{staging.last_checkpoint().name}")
            else:
                staging.remove()


def _run(
    options: FinetuneOptions,
    located: Any,
    base_dir: Path,
    train: data_files.Examples,
    valid: data_files.Examples | None,
    staging: Staging,
    progress: ProgressFn | None,
    started: float,
) -> dict[str, Any]:
    import torch
    from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

    arguments = options.training_arguments()
    recorded = staging.path / "arguments.json"
    if options.resume:
        previous = json.loads(recorded.read_text("utf-8")) if recorded.is_file() else None
        if previous != json.loads(json.dumps(arguments)):
            changed = sorted(k for k in arguments if previous is None or
                             json.loads(json.dumps(arguments[k])) != previous.get(k))
            raise InputError(
                param="resume", reason="the arguments differ from the interrupted run's "
                f"({', '.join(changed[:4])}); give the same ones"
            )
        if staging.last_checkpoint() is None:
            raise InputError(param="resume", reason=f"no checkpoint in {staging.checkpoints} "
                             "(the run was stopped before its first --save-every step)")
    else:
        recorded.write_text(json.dumps(arguments), "utf-8")
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    set_seed(options.seed)
    tokenizer = _load_tokenizer(base_dir, options.task)
    prepared = prepare(options, tokenizer, train, valid, located.info.n_positions)
    model = _load_model(base_dir, options, tokenizer, prepared.labels)
    trainable, total = parameter_counts(model)
    if options.lora:
        model = apply_lora(model, options.task, options.lora_options)
        trainable, total = parameter_counts(model)
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    evaluations: list[dict[str, Any]] = []
    max_steps = options.max_steps or -1
    epochs = options.epochs if options.epochs is not None else 3.0
    report = progress or (lambda step, total, logs: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = TrainingArguments(
            output_dir=str(staging.checkpoints),
            num_train_epochs=epochs,
            max_steps=max_steps,
            learning_rate=options.lr,
            per_device_train_batch_size=options.batch_size,
            per_device_eval_batch_size=options.batch_size,
            gradient_accumulation_steps=options.grad_accum,
            seed=options.seed,
            bf16=options.dtype == "bfloat16",
            eval_strategy="steps" if options.eval_every and valid else "no",
            eval_steps=options.eval_every,
            save_strategy="steps" if options.save_every else "no",
            save_steps=options.save_every or 500,
            save_total_limit=2,  # --resume needs the last; keep one more in case it is torn
            save_safetensors=True,
            logging_strategy="steps",
            logging_steps=1,
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            use_cpu=not torch.cuda.is_available(),
            label_names=["labels"],
        )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.valid,
        data_collator=_pad_collator(tokenizer.pad_token_id),
        compute_metrics=_metrics_fn(options.task, prepared.labels),
        callbacks=[_callbacks(report, options.task, evaluations)],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log line on stdout
    initial = None
    if prepared.valid and not options.resume:
        initial = _clean_metrics(trainer.evaluate(), options.task)
        evaluations.clear()
    resume_from = str(staging.last_checkpoint()) if options.resume else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = trainer.train(resume_from_checkpoint=resume_from)
    final = None
    steps = trainer.state.global_step
    if prepared.valid:
        if evaluations and evaluations[-1]["step"] == steps:  # --eval-every ended on it
            last = evaluations.pop()
            final = {k: v for k, v in last.items() if k not in ("step", "epoch")}
        else:
            final = _clean_metrics(trainer.evaluate(), options.task)
            evaluations.pop()  # on_evaluate recorded it too; it is `final`
    _save(trainer.model, tokenizer, options, located, base_dir, staging.final)
    train_metrics = result.metrics
    return {
        "format": MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "task": options.task,
        "base_model": options.model,
        "base_revision": base_dir.name if base_dir.parent.name == "snapshots" else None,
        "data": {"train": {**data_files.describe_file(options.train), "rows": len(train)},
                 "valid": {**data_files.describe_file(options.valid), "rows": len(valid)}
                 if options.valid and valid is not None else None},
        "arguments": json.loads(json.dumps(arguments)),
        "labels": prepared.labels,
        "lora": {"r": options.lora_options.r, "alpha": options.lora_options.alpha,
                 "dropout": options.lora_options.dropout,
                 "targets": list(options.lora_options.targets), "merged": _merged(options)}
        if options.lora else None,
        "parameters": {"trainable": trainable, "total": total},
        "train": {
            "steps": steps,
            "epochs": trainer.state.epoch,
            "loss": train_metrics.get("train_loss"),
            "seconds": train_metrics.get("train_runtime"),
            "examples": len(prepared.train),
            "tokens_per_epoch": prepared.tokens,
            "resumed_from": Path(resume_from).name if resume_from else None,
        },
        "initial_eval": initial,
        "evaluations": evaluations,
        "final_eval": final,
        "libraries": {name: _version(name) for name in LIBRARIES},
        "seconds": round(time.monotonic() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _merged(options: FinetuneOptions) -> bool:
    """Classification models are always written whole: their new head and pad-token row are
    not LoRA weights, and the classify command loads plain models."""
    return options.merge or options.task != "clm"


def _save(model: Any, tokenizer: Any, options: FinetuneOptions, located: Any, base_dir: Path,
          final: Path) -> None:
    final.mkdir()
    if options.lora and _merged(options):
        model = model.merge_and_unload()
    if options.lora and not _merged(options):
        model.peft_config["default"].base_model_name_or_path = _base_reference(
            options.model, base_dir)
        model.save_pretrained(final, safe_serialization=True)
        shutil.copyfile(base_dir / "config.json", final / "config.json")
    else:
        model.save_pretrained(final, safe_serialization=True)
    tokenizer.save_pretrained(final)
    generation = base_dir / "generation_config.json"
    if options.task == "clm" and generation.is_file() and not (
        final / "generation_config.json"
    ).is_file():
        shutil.copyfile(generation, final / "generation_config.json")
    elif options.task != "clm":
        (final / "generation_config.json").unlink(missing_ok=True)
    for name in TOKENIZER_FILES:
        if not (final / name).is_file() and (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, final / name)
