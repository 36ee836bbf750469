"""`gpt2cli export-onnx`: export a GPT-2 model to ONNX for the onnx backend (and optimum)."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.outputs import Progress, log, to_json


class ExportFormat(str, Enum):
    """--format choices: one object about one export, so no jsonl."""

    text = "text"
    json = "json"


class Quantization(str, Enum):
    """--quantize choices."""

    int8 = "int8"
    int4 = "int4"


class Graph(str, Enum):
    """--graph choices."""

    fused = "fused"
    optimum = "optimum"


def export_onnx(
    first: Annotated[
        str | None,
        typer.Argument(
            metavar="MODEL",
            help="Hub model id (gpt2, ...) or a local directory; with -m MODEL, leave it out.",
            show_default=False,
        ),
    ] = None,
    second: Annotated[
        str | None,
        typer.Argument(
            metavar="OUTDIR",
            help="Directory to create (written atomically; --force replaces only a previous "
            "export).",
            show_default=False,
        ),
    ] = None,
    model_option: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="MODEL",
            help="The model to export: Hub id (gpt2, ...) or a local directory (the same as the "
            "MODEL argument).",
            callback=options.check_model,
        ),
    ] = None,
    quantize: Annotated[
        Quantization | None,
        typer.Option(
            "--quantize",
            help="int8 or int4 weights: 8- or 4-bit blocks (MatMulNBits; with --graph optimum, "
            "int8 is dynamic quantization).",
            case_sensitive=False,
        ),
    ] = None,
    graph: Annotated[
        Graph,
        typer.Option(
            "--graph",
            help="fused: GPT-2 built from ONNX Runtime's fused operators (fastest); optimum: "
            "optimum's export, for models the fused graph does not cover. Both load in "
            "optimum's ORTModelForCausalLM.",
            case_sensitive=False,
        ),
    ] = Graph.fused,
    per_channel: Annotated[
        bool,
        typer.Option(
            "--per-channel", help="--graph optimum's int8: one scale per output channel."
        ),
    ] = False,
    block_size: Annotated[
        int | None,
        typer.Option(
            "--block-size", metavar="N", min=16, help="Weights per quantization block (16 to "
            "256, a power of two; default: 32 for int8, like llama.cpp's Q8_0, and 128 for "
            "int4).", show_default=False,
        ),
    ] = None,
    head_bits: Annotated[
        int | None,
        typer.Option(
            "--head-bits", metavar="N", help="int4: bits of the vocabulary projection, 8 "
            "(default: less error) or 4 (all-4-bit: the fastest decode).",
            show_default=False,
        ),
    ] = None,
    validate: Annotated[
        bool,
        typer.Option(
            "--validate/--no-validate",
            help="Compare the export's logits with PyTorch's and print the largest difference.",
        ),
    ] = True,
    opset: Annotated[
        int | None,
        typer.Option("--opset", metavar="N", min=14, help="ONNX opset (default: optimum's)."),
    ] = None,
    force: options.Force = False,
    output_format: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            help="text (default): the validation figure; json: the export manifest, one object.",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    as_json: options.JsonFlag = False,
) -> None:
    """Export MODEL to ONNX in OUTDIR, for `--backend onnx` and optimum's ORTModelForCausalLM.

    Writes model.onnx (text-generation with KV cache, extra hidden-state outputs), the
    tokenizer, config.json, generation_config.json and gpt2cli-export.json (the manifest).
    Prints the largest absolute logit difference from PyTorch unless --no-validate.
    Needs the 'export' extra.
    """
    from gpt2cli.exporting import ExportOptions, export_model

    fmt = options.output_format(output_format, as_json)
    model, outdir = _model_and_outdir([p for p in (first, second) if p is not None], model_option)
    settings = ExportOptions(
        quantize=quantize.value if quantize is not None else None,
        per_channel=per_channel,
        block_size=block_size,
        head_bits=head_bits,
        graph=graph.value,
        validate=validate,
        force=force,
        opset=opset,
    )
    results_shown = _stdout_open()  # checked before the export opens any file
    steps = 2 + bool(quantize) + bool(validate)  # export, graph edit, quantize, validate
    with Progress(f"exporting {model}", total=steps, unit="steps") as progress:
        started = False

        def step(message: str) -> None:  # the engine names each step as it starts it
            nonlocal started
            if started:
                progress.advance()
            started = True
            progress.update(description=message)

        manifest = export_model(model, outdir, settings, step)
        progress.update(completed=steps)
    total = sum(manifest["files"].values())
    log(f"wrote {outdir} ({total / 1e6:.1f} MB in {manifest['export_seconds']} s)")
    if not results_shown:  # `>&-`: the export is in OUTDIR, and the figure has nowhere to go
        return
    if fmt == "json":
        sys.stdout.write(to_json(manifest, indent=2) + "\n")
    elif manifest["validation"] is not None:
        figure = manifest["validation"]["max_abs_logit_diff"]
        sys.stdout.write(f"max abs logit diff vs PyTorch: {figure:.3g}\n")


def _model_and_outdir(paths: list[str], model_option: str | None) -> tuple[str, Path]:
    """MODEL OUTDIR as arguments, or -m MODEL and OUTDIR; both forms at once only if they agree."""
    if not paths:
        raise InputError("missing OUTDIR: export-onnx MODEL OUTDIR, or -m MODEL OUTDIR")
    if len(paths) == 1:
        if model_option is None:
            raise InputError(
                f"one argument ({paths[0]}) given: export-onnx MODEL OUTDIR, or -m MODEL OUTDIR"
            )
        return model_option, Path(paths[0])
    model, outdir = paths
    if model_option is not None and model_option != model:
        raise InputError(
            f"--model: {model_option!r} and the MODEL argument {model!r} differ; give one"
        )
    return model, Path(outdir)


def _stdout_open() -> bool:
    try:
        os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return True
