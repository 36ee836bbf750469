"""Finding and loading a model: a local directory or a Hub id, and the backend that runs it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2cli.backends.base import Backend, ModelInfo
from gpt2cli.errors import CliError, InputError, ModelError
from gpt2cli.tokenizer import HFTokenizer, Tokenizer

TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
]
# Written by export-onnx beside the model; its presence marks a gpt2cli ONNX export.
MANIFEST_NAME = "gpt2cli-export.json"
ONNX_MODEL = "model.onnx"
METADATA_FILES = ["config.json", "generation_config.json", MANIFEST_NAME, *TOKENIZER_FILES]
# Hub downloads fetch only what a backend reads: never TF, Flax, Rust or tflite weights.
SAFETENSORS_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
PYTORCH_BIN_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]
ONNX_FILES = [ONNX_MODEL, "model.onnx_data", "model.onnx.data"]

BACKENDS = ("auto", "torch", "onnx")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def resolve_model_dir(model: str, patterns: list[str] | None = None) -> Path:
    """A local directory holding `model`'s files, downloading from the Hub when needed.

    Respects HF_HOME and HF_HUB_OFFLINE; a model that is neither cached nor reachable is one
    clear error (exit 1), not a retry loop.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"{model}: is a file; --model takes a directory or a Hub id")
    if _looks_like_path(model):
        raise ModelError(f"{model}: no such model directory")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(model, allow_patterns=patterns))
    except HFValidationError:
        raise ModelError(f"{model}: not a directory, and not a valid Hub model id") from None
    except GatedRepoError:
        raise ModelError(f"{model}: gated on the Hub; log in with `hf auth login`") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{model}: no such model on the Hugging Face Hub") from None
    except RevisionNotFoundError:
        raise ModelError(f"{model}: no such revision on the Hub") from None
    except LocalEntryNotFoundError:
        raise ModelError(
            f"{model}: not in the local Hub cache and the Hugging Face Hub cannot be reached "
            "(check the network, HF_HOME, or HF_HUB_OFFLINE)"
        ) from None
    except OSError as exc:
        raise ModelError(f"{model}: download failed: {exc}") from None


def _is_local(model: str) -> bool:
    path = Path(model).expanduser()
    return path.exists() or _looks_like_path(model)


def is_onnx_dir(directory: Path) -> bool:
    """Whether `directory` holds an ONNX export that the onnx backend can run."""
    return (directory / ONNX_MODEL).is_file()


def has_torch_weights(directory: Path) -> bool:
    return any(any(directory.glob(p)) for p in SAFETENSORS_FILES + PYTORCH_BIN_FILES)


def resolve_model(model: str, backend: str = "auto") -> tuple[Path, str]:
    """The model directory and the concrete backend ("torch" or "onnx") for `model`.

    A Hub model is fetched in two steps: small metadata first, then only the weights of the
    chosen backend (safetensors, else pytorch_model.bin; or the ONNX files of an export).
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if _is_local(model):
        directory = resolve_model_dir(model)
        chosen = backend if backend != "auto" else ("onnx" if is_onnx_dir(directory) else "torch")
        return directory, chosen

    directory = resolve_model_dir(model, METADATA_FILES)
    chosen = backend
    if backend == "auto":
        chosen = "onnx" if (directory / MANIFEST_NAME).is_file() else "torch"
    if chosen == "onnx":
        directory = resolve_model_dir(model, METADATA_FILES + ONNX_FILES)
    else:
        directory = resolve_model_dir(model, METADATA_FILES + SAFETENSORS_FILES)
        if not any(any(directory.glob(p)) for p in SAFETENSORS_FILES):
            directory = resolve_model_dir(model, METADATA_FILES + PYTORCH_BIN_FILES)
    return directory, chosen


def read_config(directory: Path) -> dict[str, Any]:
    """config.json of a GPT-2-architecture model, checked."""
    path = directory / "config.json"
    if not path.is_file():
        raise ModelError(f"{directory}: no config.json; not a model directory, or incomplete")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: expected a JSON object")
    model_type = config.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ModelError(f"{directory}: model_type {model_type!r} is not the GPT-2 architecture")
    return config


def generation_defaults(directory: Path, config: dict[str, Any]) -> dict[str, Any]:
    """generation_config.json merged with task_specific_params["text-generation"].

    transformers' text-generation pipeline applies the task-specific parameters on top of the
    generation config; for gpt2 that gives do_sample=True, max_length=50.
    """
    defaults: dict[str, Any] = {}
    path = directory / "generation_config.json"
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: not valid JSON: {exc}") from None
        if isinstance(loaded, dict):
            defaults.update(
                {k: v for k, v in loaded.items() if k != "transformers_version" and k[0] != "_"}
            )
    task = (config.get("task_specific_params") or {}).get("text-generation") or {}
    defaults.update(task)
    return defaults


def model_info(directory: Path, source: str, config: dict[str, Any]) -> ModelInfo:
    """ModelInfo from a checked config.json."""

    def size(*keys: str, default: int | None = None) -> int:
        for key in keys:
            if isinstance(config.get(key), int):
                return config[key]
        if default is None:
            raise ModelError(f"{directory}/config.json: missing {keys[0]}")
        return default

    return ModelInfo(
        model_dir=directory,
        source=source,
        vocab_size=size("vocab_size", default=50257),
        n_positions=size("n_positions", "max_position_embeddings", default=1024),
        n_layer=size("n_layer", "num_hidden_layers"),
        n_head=size("n_head", "num_attention_heads"),
        n_embd=size("n_embd", "hidden_size"),
        eos_token_id=config.get("eos_token_id"),
        bos_token_id=config.get("bos_token_id"),
        generation_defaults=generation_defaults(directory, config),
    )


def load_model_tokenizer(directory: Path) -> Tokenizer:
    """The model's own tokenizer; the built-in GPT-2 one when the directory has none."""
    if any((directory / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        return HFTokenizer.from_dir(directory)
    from gpt2cli.outputs import warn
    from gpt2cli.tokenizer import GPT2Tokenizer

    warn(f"{directory}: no tokenizer files; using the built-in GPT-2 tokenizer")
    return GPT2Tokenizer()


def check_hidden_layer(info: ModelInfo, hidden_layer: int | None) -> int | None:
    """`hidden_layer` as a non-negative index into hidden_states (n_layer + 1 entries)."""
    if hidden_layer is None:
        return None
    count = info.n_layer + 1
    if not -count <= hidden_layer < count:
        raise InputError(
            f"layer {hidden_layer} is out of range: this model has hidden states "
            f"0..{info.n_layer} (or -{count}..-1)"
        )
    return hidden_layer % count


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
    if device not in DEVICES:
        raise InputError(f"--device: expected one of {', '.join(DEVICES)}, got {device!r}")
    if dtype not in DTYPES:
        raise InputError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads: expected a positive number, got {threads}")
    located = model if isinstance(model, LocatedModel) else locate_model(model, backend)
    directory, info, name = located.directory, located.info, located.name
    if located.backend == "onnx":
        if not is_onnx_dir(directory):
            raise ModelError(
                f"{name}: no {ONNX_MODEL} here; create one with `gpt2cli export-onnx {name} DIR`"
            )
        from gpt2cli.backends.onnx import OnnxBackend

        return OnnxBackend(info, load_model_tokenizer(directory), device, dtype, threads)
    if not has_torch_weights(directory):
        hint = " (it holds an ONNX export: use --backend onnx)" if is_onnx_dir(directory) else ""
        raise ModelError(
            f"{name}: no model.safetensors or pytorch_model.bin: incomplete model directory{hint}"
        )
    from gpt2cli.backends.torch import TorchBackend

    return TorchBackend(info, load_model_tokenizer(directory), device, dtype, threads)


def device_error(device: str, why: str) -> CliError:
    """A one-line error for a device that cannot be used."""
    return CliError(f"--device {device}: {why}")
