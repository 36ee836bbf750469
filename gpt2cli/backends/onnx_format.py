"""The ONNX export format that `export-onnx` writes and the ONNX backend runs: file names, graph
input and output names, and the manifest. Both sides import it, so neither spells a name alone.

Light: no numpy, onnx or onnxruntime (the registry reads the manifest before anything loads).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gpt2cli.errors import InputError
from gpt2cli.model_files import MANIFEST_NAME, ONNX_DATA, ONNX_MODEL

__all__ = [
    "EMBEDDING_TABLES",
    "HIDDEN_PREFIX",
    "KEEP_INPUT",
    "LOGITS_OUTPUT",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "ONNX_DATA",
    "ONNX_MODEL",
    "PAST_KEY",
    "ROW_LENGTHS_KEY",
    "SHARED_CACHE_KEY",
    "dtype_error",
    "hidden_name",
    "onnx_export_dtype",
    "past_name",
    "present_name",
]

# Graph inputs and outputs (optimum's text-generation-with-past names, plus gpt2cli's extras).
LOGITS_OUTPUT = "logits"
HIDDEN_PREFIX = "hidden_states."  # hidden_states.{i}: an export-onnx extra, one per layer + 1
# An overridable initializer (default 0 = all positions): how many last positions get logits.
KEEP_INPUT = "logits_to_keep"
PAST_KEY = re.compile(r"past_key_values\.(\d+)\.key")
# A model property (metadata_props) of graphs whose attention appends each step's keys and values
# in place when a past input and its present output are the same buffer (IO binding): the ONNX
# backend then keeps the cache in preallocated buffers that no step copies.
SHARED_CACHE_KEY = "gpt2cli.shared_cache"
# A model property of shared-cache graphs whose attention, on a step with a past, reads each row
# up to the last 1 of its attention_mask row: the backend may keep a row's keys and values
# left-aligned at [0, its length) so that steps read none of the batch's padding. Without it,
# every row spans the mask's width (rows right-aligned).
ROW_LENGTHS_KEY = "gpt2cli.row_lengths"
# Embedding tables whose shapes config.json must match (optimum's names; int4 exports add `_Q4`).
EMBEDDING_TABLES = ("transformer.wte.weight", "transformer.wpe.weight")

MANIFEST_FORMAT = "gpt2cli-onnx-export"
MANIFEST_VERSION = 1
EXPORT_DTYPES = ("float32", "bfloat16", "float16")  # what a manifest's "dtype" may say


def past_name(layer: int, kind: str) -> str:
    """The cache input of `layer`; `kind` is "key" or "value"."""
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    """The cache output of `layer`; `kind` is "key" or "value"."""
    return f"present.{layer}.{kind}"


def hidden_name(index: int) -> str:
    """The output holding transformers' hidden_states[index] (an export-onnx extra)."""
    return f"{HIDDEN_PREFIX}{index}"


def onnx_export_dtype(directory: Path) -> str | None:
    """The precision a gpt2cli export records in its manifest, when it has one."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    dtype = manifest.get("dtype") if isinstance(manifest, dict) else None
    return dtype if dtype in EXPORT_DTYPES else None


def dtype_error(dtype: str, model_dtype: str) -> InputError:
    """`dtype` asks for a precision that an ONNX export does not have."""
    return InputError(
        param="dtype",
        reason=f"got {dtype}, but the ONNX backend runs only the export's own precision, "
        f"{model_dtype}",
        hint=f"export-onnx writes float32; use {{dtype}} {model_dtype}, or {{backend}} torch",
    )
