"""`gpt2cli export-onnx`: export a GPT-2 model to ONNX for the onnx backend (and optimum)."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from gpt2cli import options
from gpt2cli.outputs import log, show_progress, to_json


class Quantization(str, Enum):
    """--quantize choices."""

    int8 = "int8"
    int4 = "int4"


def export_onnx(
    model: Annotated[
        str,
        typer.Argument(metavar="MODEL", help="Hub model id (gpt2, ...) or a local directory."),
    ],
    outdir: Annotated[
        Path,
        typer.Argument(
            metavar="OUTDIR",
            help="Directory to create (written atomically; --force replaces only a previous "
            "export).",
        ),
    ],
    quantize: Annotated[
        Quantization | None,
        typer.Option(
            "--quantize",
            help="int8: dynamic quantization of every weight matrix; int4: 4-bit weight-only "
            "(MatMulNBits).",
            case_sensitive=False,
        ),
    ] = None,
    per_channel: Annotated[
        bool, typer.Option("--per-channel", help="int8: one scale per output channel.")
    ] = False,
    block_size: Annotated[
        int,
        typer.Option(
            "--block-size", min=16, help="int4: weights per quantization block (16 to 256, a "
            "power of two)."
        ),
    ] = 32,
    validate: Annotated[
        bool,
        typer.Option(
            "--validate/--no-validate",
            help="Compare the export's logits with PyTorch's and print the largest difference.",
        ),
    ] = True,
    opset: Annotated[
        int | None, typer.Option("--opset", min=14, help="ONNX opset (default: optimum's).")
    ] = None,
    force: options.Force = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the export manifest as JSON.")
    ] = False,
) -> None:
    """Export MODEL to ONNX in OUTDIR, for `--backend onnx` and optimum's ORTModelForCausalLM.

    Writes model.onnx (text-generation with KV cache, extra hidden-state outputs), the
    tokenizer, config.json, generation_config.json and gpt2cli-export.json (the manifest).
    Prints the largest absolute logit difference from PyTorch unless --no-validate.
    Needs the 'export' extra.
    """
    from gpt2cli.exporting import ExportOptions, export_model

    def progress(message: str) -> None:
        if show_progress():
            log(message)

    settings = ExportOptions(
        quantize=quantize.value if quantize is not None else None,
        per_channel=per_channel,
        block_size=block_size,
        validate=validate,
        force=force,
        opset=opset,
    )
    results_shown = _stdout_open()  # checked before the export opens any file
    manifest = export_model(model, outdir, settings, progress)
    total = sum(manifest["files"].values())
    log(f"wrote {outdir} ({total / 1e6:.1f} MB in {manifest['export_seconds']} s)")
    if not results_shown:  # `>&-`: the export is in OUTDIR, and the figure has nowhere to go
        return
    if as_json:
        sys.stdout.write(to_json(manifest, indent=2) + "\n")
    elif manifest["validation"] is not None:
        figure = manifest["validation"]["max_abs_logit_diff"]
        sys.stdout.write(f"max abs logit diff vs PyTorch: {figure:.3g}\n")


def _stdout_open() -> bool:
    try:
        os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return True
