"""`gpt2cli classify`: run a fine-tuned text- or token-classification model over texts."""

from __future__ import annotations

from typing import Annotated, Any

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.outputs import Progress, RecordWriter, output_stream
from gpt2cli.session import BLOCK_TEXTS

DEFAULT_BATCH_SIZE = 16


def classify(
    texts: options.Texts = None,
    prompts: options.Prompts = None,
    files: options.Files = None,
    lines: options.Lines = False,
    keep_newline: options.KeepNewline = False,
    replace_invalid: options.ReplaceInvalid = False,
    model: options.Model = None,
    threads: options.ThreadsOpt = None,
    top_k: Annotated[
        int | None,
        options.panel_option(
            "--top-k", metavar="N", min=1, panel="Output",
            help="Text classifiers: the N best labels with their scores (default: the best).",
        ),
    ] = None,
    all_labels: Annotated[
        bool,
        options.panel_option("--all", panel="Output",
                             help="Text classifiers: every label's score."),
    ] = False,
    batch_size: Annotated[
        int,
        options.panel_option("--batch-size", "-b", metavar="N", min=1, panel="Output",
                             help=f"Texts per forward pass ({DEFAULT_BATCH_SIZE})."),
    ] = DEFAULT_BATCH_SIZE,
    output_format: options.FormatOpt = None,
    as_json: options.JsonFlag = False,
    as_jsonl: options.JsonlFlag = False,
    output: options.Output = None,
    force: options.Force = False,
) -> None:
    """Classify texts with a fine-tuned model (what `gpt2cli finetune classify|ner` writes).

    A text classifier gives each text's label and score (softmax, as transformers'
    text-classification pipeline); --top-k N or --all list more labels. A token classifier
    (NER) gives each text's entities, grouped as the token-classification pipeline groups them
    (aggregation "first"), and every token's label in json/jsonl. Text output: one line per
    text, the source last. A file or piped text loses the one line break that ends it, unless
    --keep-newline.
    """
    from gpt2cli.classifying import SEQUENCE, classifier_kind, load_classifier
    from gpt2cli.classifying import classify as run_classifier
    from gpt2cli.inputs import read_texts, resolve_sources
    from gpt2cli.outputs import check_output

    fmt = options.output_format(output_format, as_json, as_jsonl)
    if top_k is not None and all_labels:
        raise InputError("--top-k and --all given together; choose one")
    texts = [*(texts or []), *(prompts or [])]
    check_output(output, force)
    resolve_sources(texts, files)
    inputs = read_texts(texts, files, lines=lines, replace_invalid=replace_invalid,
                        drop_final_newline=not keep_newline)
    name = model or "gpt2"
    kind = classifier_kind(name)  # before the weights load
    if kind != SEQUENCE and (top_k is not None or all_labels):
        raise InputError("--top-k and --all are for text classifiers; this is a token "
                         "classifier (NER), whose records list every token's label")
    classifier = load_classifier(name, threads)
    wanted = None if all_labels else (top_k or 1)
    render = _render_sequence if kind == SEQUENCE else _render_entities
    with (
        output_stream(output, force) as out,
        Progress("classifying", total=len(inputs), unit="texts") as progress,
    ):
        writer = RecordWriter(out, fmt, render)
        for start in range(0, len(inputs), BLOCK_TEXTS):
            block = inputs[start : start + BLOCK_TEXTS]
            results = run_classifier(classifier, [t.text for t in block], batch_size=batch_size,
                                     top_k=wanted, progress=progress.advance)
            for offset, (text, result) in enumerate(zip(block, results, strict=True)):
                writer.write({"index": start + offset, "source": text.source, **result})
        writer.close()


def _render_sequence(record: dict[str, Any]) -> str:
    """LABEL<TAB>SCORE (per label with --top-k/--all), then the source."""
    pairs = record.get("labels") or [{"label": record["label"], "score": record["score"]}]
    fields = [f"{p['label']}\t{p['score']:.6f}" for p in pairs]
    return "\t".join([*fields, record["source"]]) + "\n"


def _render_entities(record: dict[str, Any]) -> str:
    """TYPE:WORD (SCORE) per entity, separated by tabs, then the source."""
    fields = [f"{e['entity_group']}:{e['word']} ({e['score']:.4f})".replace("\t", " ")
              .replace("\n", " ") for e in record["entities"]]
    return "\t".join([*fields, record["source"]]) + "\n"
