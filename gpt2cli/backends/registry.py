"""The backends gpt2cli can run, each declared once: its name, how its files are recognised in a
directory, which Hub files it downloads, its checks before the weights load, what it supports,
and how it loads. The loader and the --backend choices come from here, so a new backend touches
this file and its own module only.

Light: the backend modules (and torch or onnxruntime) are imported only to load one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2cli.backends.onnx_format import dtype_error, onnx_export_dtype
from gpt2cli.errors import InputError
from gpt2cli.model_files import (
    MANIFEST_NAME,
    ONNX_FILES,
    ONNX_MODEL,
    PYTORCH_BIN_FILES,
    SAFETENSORS_FILES,
    check_torch_weights,
    has_torch_weights,
    is_onnx_dir,
    read_config,
)

if TYPE_CHECKING:
    from gpt2cli.backends.base import Backend
    from gpt2cli.model_info import ModelInfo
    from gpt2cli.tokenizer import Tokenizer

AUTO = "auto"
DEVICES = ("cpu", "cuda")  # every --device value; a backend declares the ones it runs on
DTYPES = ("float32", "bfloat16", "float16")  # every --dtype value, likewise

Loader = Callable[["ModelInfo", "Tokenizer", str, str, "int | None"], "Backend"]


@dataclass(frozen=True)
class BackendSpec:
    """One backend, as the loader sees it."""

    name: str  # its --backend value
    files: str  # what its files are, for messages ("an ONNX export")
    detect: Callable[[Path], bool]  # whether a local directory holds its files
    # Hub patterns to download beside the metadata, in order of preference: the first set that
    # matches a file in the repository is used (safetensors before pickles).
    hub_files: tuple[tuple[str, ...], ...]
    missing: str  # why a directory without its files cannot load; {model} is the model's name
    load: Loader  # (info, tokenizer, device, dtype, threads) -> Backend
    hub_marker: str | None = None  # a Hub metadata file that makes `auto` pick this backend
    check: Callable[[Path, str], None] | None = None  # (directory, dtype), before weights load
    devices: tuple[str, ...] = DEVICES
    dtypes: tuple[str, ...] = DTYPES


def _load_torch(
    info: ModelInfo, tokenizer: Tokenizer, device: str, dtype: str, threads: int | None
) -> Backend:
    from gpt2cli.backends.torch import TorchBackend

    return TorchBackend(info, tokenizer, device, dtype, threads)


def _check_torch(directory: Path, dtype: str) -> None:
    check_torch_weights(directory, read_config(directory))


def _load_onnx(
    info: ModelInfo, tokenizer: Tokenizer, device: str, dtype: str, threads: int | None
) -> Backend:
    from gpt2cli.backends.onnx import OnnxBackend

    return OnnxBackend(info, tokenizer, device, dtype, threads)


def _check_onnx(directory: Path, dtype: str) -> None:
    exported = onnx_export_dtype(directory)
    if exported is not None and dtype not in ("float32", exported):
        raise dtype_error(dtype, exported)


_SPECS = (
    BackendSpec(
        name="torch",
        files="PyTorch weights",
        detect=has_torch_weights,
        hub_files=(tuple(SAFETENSORS_FILES), tuple(PYTORCH_BIN_FILES)),
        missing="no model.safetensors or pytorch_model.bin: incomplete model directory",
        load=_load_torch,
        check=_check_torch,
    ),
    BackendSpec(
        name="onnx",
        files="an ONNX export",
        detect=is_onnx_dir,
        hub_files=(tuple(ONNX_FILES),),
        missing=f"no {ONNX_MODEL} here; create one with `gpt2cli export-onnx {{model}} DIR`",
        load=_load_onnx,
        hub_marker=MANIFEST_NAME,
        check=_check_onnx,
        # The export's own precision (checked from its manifest, then from the graph).
        dtypes=("float32", "float16"),
    ),
)
BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in _SPECS}
NAMES = tuple(BACKENDS)
CHOICES = (AUTO, *NAMES)  # the --backend values
# `auto` takes the first of these whose files a directory holds (an export over plain weights),
# else DEFAULT.
AUTO_ORDER = ("onnx", "torch")
DEFAULT = "torch"


def get(name: str) -> BackendSpec:
    """The backend called `name`; anything else is an InputError on `backend`."""
    spec = BACKENDS.get(name)
    if spec is None:
        raise InputError(
            param="backend", reason=f"expected one of {', '.join(CHOICES)}, got {name!r}"
        )
    return spec


def check_choice(name: str) -> None:
    """`name` is a --backend value: a backend's name or `auto`."""
    if name != AUTO:
        get(name)


def choose_local(directory: Path) -> str:
    """The backend `auto` picks for a local directory."""
    return next((name for name in AUTO_ORDER if BACKENDS[name].detect(directory)), DEFAULT)


def choose_hub(metadata: Path) -> str:
    """The backend `auto` picks for a Hub model, from its downloaded metadata alone."""
    for name in AUTO_ORDER:
        marker = BACKENDS[name].hub_marker
        if marker is not None and (metadata / marker).is_file():
            return name
    return DEFAULT


def holding(directory: Path, besides: str) -> BackendSpec | None:
    """Another backend whose files `directory` holds, to suggest when `besides` cannot load."""
    return next(
        (BACKENDS[n] for n in AUTO_ORDER if n != besides and BACKENDS[n].detect(directory)), None
    )
