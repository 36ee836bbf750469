"""Choosing and loading a model: find its files (model_files), read its config (model_info),
pick a backend from the registry and load it with the model's tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2cli.backends import registry
from gpt2cli.errors import InputError, ModelError
from gpt2cli.model_files import (
    METADATA_FILES,
    has_files,
    is_local,
    read_config,
    resolve_model_dir,
)
from gpt2cli.model_info import ModelInfo, model_info
from gpt2cli.tokenizer import Tokenizer, check_threads, model_tokenizer

if TYPE_CHECKING:
    from gpt2cli.backends.base import Backend


def resolve_model(model: str, backend: str = "auto") -> tuple[Path, str]:
    """The model directory and the concrete backend (a registry name, never "auto") for `model`.

    A Hub model is fetched in two steps: small metadata first, then only the files of the
    chosen backend (for torch: safetensors, else pytorch_model.bin; for onnx: the export).
    """
    registry.check_choice(backend)
    if is_local(model):
        directory = resolve_model_dir(model)
        chosen = backend if backend != registry.AUTO else registry.choose_local(directory)
        return directory, chosen

    directory = resolve_model_dir(model, METADATA_FILES)
    chosen = backend if backend != registry.AUTO else registry.choose_hub(directory)
    for patterns in registry.get(chosen).hub_files:
        directory = resolve_model_dir(model, METADATA_FILES + list(patterns))
        if has_files(directory, list(patterns)):
            break
    return directory, chosen


def load_model_tokenizer(directory: Path, vocab_size: int | None = None) -> Tokenizer:
    """The model's own tokenizer; the built-in GPT-2 one when the directory has none.

    With `vocab_size` (config.json's), a tokenizer that can produce ids beyond it is refused:
    they would index past the embedding table.
    """
    if any((directory / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        tokenizer = model_tokenizer(directory)
        if vocab_size is not None and tokenizer.id_bound() > vocab_size:
            name = "tokenizer.json" if (directory / "tokenizer.json").is_file() else "vocab.json"
            raise ModelError(
                f"{directory / name}: the tokenizer has ids up to {tokenizer.id_bound() - 1}, "
                f"beyond config.json's vocab_size {vocab_size}: the model is inconsistent"
            )
        return tokenizer
    from gpt2cli.outputs import warn
    from gpt2cli.tokenizer import GPT2_VOCAB_SIZE, GPT2Tokenizer

    if vocab_size is not None and vocab_size < GPT2_VOCAB_SIZE:
        raise ModelError(
            f"{directory}: no tokenizer files, and the built-in GPT-2 tokenizer's "
            f"{GPT2_VOCAB_SIZE} tokens are more than config.json's vocab_size {vocab_size}"
        )
    warn(f"{directory}: no tokenizer files; using the built-in GPT-2 tokenizer")
    return GPT2Tokenizer()


@dataclass(frozen=True)
class LocatedModel:
    """A model found and its config read, weights not yet loaded: enough to check options
    against (context length, generation defaults, layer count) before the slow part."""

    name: str
    directory: Path
    backend: str  # "torch" or "onnx", never "auto"
    info: ModelInfo


def locate_model(model: str, backend: str = "auto") -> LocatedModel:
    """Find `model` (Hub id or directory) and read its config; loads no weights."""
    backend = str(getattr(backend, "value", backend))
    directory, chosen = resolve_model(model, backend)
    config = read_config(directory)
    return LocatedModel(model, directory, chosen, model_info(directory, model, config))


def _choice(param: str, value: str, allowed: tuple[str, ...], why: str = "") -> None:
    """`value` is one of `allowed`, else an InputError on `param`."""
    if value not in allowed:
        choices = ", ".join(allowed)
        reason = (
            f"{why} {choices}, got {value}" if why else f"expected one of {choices}, got {value!r}"
        )
        raise InputError(param=param, reason=reason)


def load_backend(
    model: str | LocatedModel,
    backend: str = "auto",
    device: str = "cpu",
    dtype: str = "float32",
    threads: int | None = None,
) -> Backend:
    """Load `model` (Hub id, directory, or one already located) on the requested backend,
    device and dtype.

    `auto` picks ONNX when the directory holds an ONNX export (model.onnx), PyTorch otherwise.
    """
    backend, device, dtype = (str(getattr(v, "value", v)) for v in (backend, device, dtype))
    _choice("device", device, registry.DEVICES)
    _choice("dtype", dtype, registry.DTYPES)
    check_threads(threads)
    located = model if isinstance(model, LocatedModel) else locate_model(model, backend)
    directory, info = located.directory, located.info
    spec = registry.get(located.backend)
    if not spec.detect(directory):
        other = registry.holding(directory, spec.name)
        hint = f"it holds {other.files}: use {{backend}} {other.name}" if other else None
        raise ModelError(
            where=located.name, reason=spec.missing.format(model=located.name), hint=hint
        )
    if spec.check is not None:
        spec.check(directory, dtype)  # before the weights load
    _choice("device", device, spec.devices, f"the {spec.name} backend runs only")
    _choice("dtype", dtype, spec.dtypes, f"the {spec.name} backend runs only")
    tokenizer = load_model_tokenizer(directory, info.vocab_size)
    return spec.load(info, tokenizer, device, dtype, threads)
