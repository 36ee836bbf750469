"""A model's files: where they are (a local directory, or a Hub id through the HF cache), which
files each part needs, and the checks on the files themselves (config.json, generation settings,
weight headers) before anything is sized from them.

The bottom layer above errors.py: it imports nothing else of gpt2cli, and no heavy module at
import time (huggingface_hub is imported when a download is needed).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from gpt2cli.errors import InputError, ModelError
from gpt2cli.generation_params import GLOBAL_MAX_LENGTH, PARAMETERS, Parameter

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
ONNX_DATA = "model.onnx_data"  # the weights beside model.onnx (export-onnx's name)
METADATA_FILES = ["config.json", "generation_config.json", MANIFEST_NAME, *TOKENIZER_FILES]
# Hub downloads fetch only what a backend reads: never TF, Flax, Rust or tflite weights.
SAFETENSORS_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
PYTORCH_BIN_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]
ONNX_FILES = [ONNX_MODEL, ONNX_DATA, "model.onnx.data"]
# A LoRA adapter (PEFT's files) that `finetune --lora` writes beside config.json; it names its
# base model, whose weights the torch backend loads and merges it into.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = [ADAPTER_CONFIG, "adapter_model.safetensors"]


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def resolve_model_dir(model: str, patterns: list[str] | None = None) -> Path:
    """A local directory holding `model`'s files, downloading from the Hub when needed.

    Respects HF_HOME and HF_HUB_OFFLINE; a model that is neither cached nor reachable is one
    clear error (exit 1), not a retry loop.
    """
    if not model.strip():  # Path("") is ".": never take the working directory for a model
        raise InputError("the model name is empty; give a Hub model id or a directory")
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"{model}: is a file; a model is a directory or a Hub id")
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


def is_local(model: str) -> bool:
    """Whether `model` names a local path rather than a Hub id."""
    path = Path(model).expanduser()
    return path.exists() or _looks_like_path(model)


def has_files(directory: Path, patterns: list[str]) -> bool:
    """Whether any file in `directory` matches one of the glob `patterns`."""
    return any(any(directory.glob(p)) for p in patterns)


def is_onnx_dir(directory: Path) -> bool:
    """Whether `directory` holds an ONNX export that the onnx backend can run."""
    return (directory / ONNX_MODEL).is_file()


def has_torch_weights(directory: Path) -> bool:
    """Whether `directory` holds PyTorch weights (safetensors or pickled), or a LoRA adapter."""
    return has_files(directory, SAFETENSORS_FILES + PYTORCH_BIN_FILES) or (
        adapter_base(directory) is not None
    )


def adapter_base(directory: Path) -> str | None:
    """The base model a LoRA adapter directory names (PEFT's base_model_name_or_path), or None
    when `directory` holds no adapter."""
    path = directory / ADAPTER_CONFIG
    if not path.is_file() or not (directory / ADAPTER_FILES[1]).is_file():
        return None
    settings = read_json_settings(path)
    base = settings.get("base_model_name_or_path") if isinstance(settings, dict) else None
    if not isinstance(base, str) or not base.strip():
        raise ModelError(f"{path}: base_model_name_or_path: expected the base model's name "
                         f"{MODEL_FAULT}")
    return base


SETTINGS_FILE_LIMIT = 16 << 20  # config.json and generation_config.json are kilobytes


def read_json_settings(path: Path) -> Any:
    """A model's JSON settings file, parsed; too large, not UTF-8 or not JSON is a ModelError."""
    try:
        if path.stat().st_size > SETTINGS_FILE_LIMIT:
            raise ModelError(f"{path}: over {SETTINGS_FILE_LIMIT >> 20} MiB; not a settings file")
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ModelError(f"{path}: not valid JSON: nested too deeply") from None


def read_config(directory: Path) -> dict[str, Any]:
    """config.json of a GPT-2-architecture model, checked."""
    path = directory / "config.json"
    if not path.is_file():
        raise ModelError(f"{directory}: no config.json; not a model directory, or incomplete")
    config = read_json_settings(path)
    if not isinstance(config, dict):
        raise ModelError(f"{path}: expected a JSON object")
    model_type = config.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ModelError(
            f"{directory}: model_type {shown(model_type)} is not the GPT-2 architecture"
        )
    check_config(path, config)
    return config


# Bounds on config.json's sizes: far above every published GPT-2-architecture model (gpt2-xl:
# 48 layers, 25 heads, 1600 wide, 1024 positions, 50257 tokens), yet low enough that a typo or
# a hostile file cannot make the loader build tables or allocate without end.
CONFIG_LIMITS: dict[str, int] = {
    "vocab_size": 1 << 24,
    "n_positions": 1 << 20,
    "n_layer": 1024,
    "n_head": 1024,
    "n_embd": 1 << 16,
}
# transformers' GPT2Config reads these names too.
CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "vocab_size": ("vocab_size",),
    "n_positions": ("n_positions", "max_position_embeddings"),
    "n_layer": ("n_layer", "num_hidden_layers"),
    "n_head": ("n_head", "num_attention_heads"),
    "n_embd": ("n_embd", "hidden_size"),
}
CONFIG_DEFAULTS: dict[str, int] = {"vocab_size": 50257, "n_positions": 1024}
MODEL_FAULT = "(a fault in the model's files)"


def shown(value: Any, limit: int = 40) -> str:
    """`value` for an error message, cut short: model files may hold anything."""
    text = json.dumps(value) if isinstance(value, str | bool) or value is None else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def config_sizes(path: Path, config: dict[str, Any]) -> dict[str, int]:
    """The model's sizes from config.json, each an integer within CONFIG_LIMITS."""
    sizes: dict[str, int] = {}
    for name, keys in CONFIG_ALIASES.items():
        key = next((k for k in keys if config.get(k) is not None), keys[0])
        value = config.get(key, CONFIG_DEFAULTS.get(name))
        if value is None:
            raise ModelError(f"{path}: missing {key}")
        limit = CONFIG_LIMITS[name]
        if not _is_int(value) or not 1 <= value <= limit:
            raise ModelError(
                f"{path}: {key}: must be an integer from 1 to {limit}, got {shown(value)} "
                f"{MODEL_FAULT}"
            )
        sizes[name] = value
    if sizes["n_embd"] % sizes["n_head"]:
        raise ModelError(
            f"{path}: n_embd {sizes['n_embd']} is not divisible by n_head {sizes['n_head']} "
            f"{MODEL_FAULT}"
        )
    inner = config.get("n_inner")
    if inner is not None and (not _is_int(inner) or not 1 <= inner <= 4 * CONFIG_LIMITS["n_embd"]):
        raise ModelError(
            f"{path}: n_inner: must be null or an integer from 1 to {4 * CONFIG_LIMITS['n_embd']}, "
            f"got {shown(inner)} {MODEL_FAULT}"
        )
    return sizes


def check_token_ids(where: str, value: Any, vocab_size: int) -> None:
    """A token id setting (eos/bos/pad): null, an id in the vocabulary, or a list of them."""
    ids = value if isinstance(value, list) else [value]
    if value is None or (isinstance(value, list) and not value):
        return
    for token_id in ids:
        if not _is_int(token_id) or not 0 <= token_id < vocab_size:
            raise ModelError(
                f"{where}: must be a token id from 0 to {vocab_size - 1} (or a list of them), "
                f"got {shown(value)} {MODEL_FAULT}"
            )


def check_config(path: Path, config: dict[str, Any]) -> None:
    """Refuse sizes and token ids that no real model has, before anything is sized from them."""
    sizes = config_sizes(path, config)
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        check_token_ids(f"{path}: {key}", config.get(key), sizes["vocab_size"])


# The generation settings a model's files may set, as gpt2cli uses them: the parameter table's.
GENERATION_RULES: dict[str, Parameter] = {p.name: p for p in PARAMETERS if p.model_setting}
TOKEN_ID_SETTINGS = ("eos_token_id", "bos_token_id", "pad_token_id")
MAX_SETTING = 2**31 - 1  # integer settings above this are typos (or attacks), not lengths
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false"}


def check_generation_settings(where: str, settings: Any, vocab_size: int) -> dict[str, Any]:
    """The generation settings of one model file, checked; `where` names the file (and key).

    A bad value is the model's fault (ModelError), so that it is never blamed on a flag. Nulls
    mean "unset", as in transformers; settings gpt2cli does not use are passed over unchecked.
    """
    if not isinstance(settings, dict):
        raise ModelError(f"{where}: expected a JSON object, got {shown(settings)} {MODEL_FAULT}")
    checked: dict[str, Any] = {}
    for key, value in settings.items():
        if not isinstance(key, str) or key == "transformers_version" or key.startswith("_"):
            continue
        if value is None:
            continue
        raw = value
        if key in TOKEN_ID_SETTINGS:
            check_token_ids(f"{where}: {key}", value, vocab_size)
        elif key in GENERATION_RULES:
            parameter = GENERATION_RULES[key]
            kind = parameter.type
            if kind is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            if kind is float and _is_int(value):
                value = float(value) if abs(value) <= MAX_SETTING else math.inf
            typed = isinstance(value, bool) if kind is bool else (
                isinstance(value, kind) and not isinstance(value, bool)
            )
            if not typed:
                raise ModelError(
                    f"{where}: {key}: expected {_TYPE_WORDS[kind]}, got {shown(raw)} "
                    f"{MODEL_FAULT}"
                )
            if kind is int and value > MAX_SETTING:
                problem: str | None = f"must be at most {MAX_SETTING}, got {shown(raw)}"
            elif kind is float and not math.isfinite(value):
                problem = f"must be a finite number, got {shown(raw)}"
            else:
                broken = next((rule for rule in parameter.rules if not rule.ok(value)), None)
                problem = None if broken is None else f"{broken.reason}, got {shown(raw)}"
            if problem is not None:
                raise ModelError(f"{where}: {key}: {problem} {MODEL_FAULT}")
        checked[key] = value
    return checked


def generation_defaults(
    directory: Path, config: dict[str, Any], vocab_size: int | None = None
) -> dict[str, Any]:
    """generation_config.json merged with task_specific_params["text-generation"], checked.

    transformers' text-generation pipeline applies the task-specific parameters on top of the
    generation config; for gpt2 that gives do_sample=True, max_length=50.
    """
    if vocab_size is None:
        vocab_size = config_sizes(directory / "config.json", config)["vocab_size"]
    defaults: dict[str, Any] = {}
    path = directory / "generation_config.json"
    if path.is_file():
        loaded = read_json_settings(path)
        defaults.update(check_generation_settings(str(path), loaded, vocab_size))
    tasks = config.get("task_specific_params")
    if tasks is not None and not isinstance(tasks, dict):
        raise ModelError(
            f"{directory / 'config.json'}: task_specific_params: expected a JSON object "
            f"{MODEL_FAULT}"
        )
    task = (tasks or {}).get("text-generation")
    if task is not None:
        where = f"{directory / 'config.json'}: task_specific_params.text-generation"
        defaults.update(check_generation_settings(where, task, vocab_size))
    return defaults


SAFETENSORS_HEADER_LIMIT = 100 << 20  # the safetensors format's own cap on its JSON header
_LAYER = re.compile(r"h\.(\d+)\.")


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors file's JSON header (its first 8 bytes give the
    header's length), reading no tensor data; a damaged or truncated file is a ModelError."""

    def damaged(why: str) -> ModelError:
        return ModelError(f"{path.parent}: cannot load the weights: {path.name}: {why}")

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            length = int.from_bytes(f.read(8), "little") if size >= 8 else 0
            if not 2 <= length <= min(SAFETENSORS_HEADER_LIMIT, size - 8):
                raise damaged("not a safetensors file (no valid header)")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise damaged(exc.strerror or str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise damaged("not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise damaged("not a safetensors file (its header is not a JSON object)")
    shapes: dict[str, list[int]] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(shape, list)
            and all(_is_int(d) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(_is_int(o) for o in offsets)
        ):
            raise damaged(f"the header's entry for {shown(name)} is malformed")
        shapes[name] = shape
        data_end = max(data_end, offsets[1])
    if 8 + length + data_end > size:
        raise damaged(
            f"truncated: {size} bytes, but its header describes {8 + length + data_end}"
        )
    return shapes


def _weight_shapes(directory: Path) -> tuple[str, dict[str, list[int]]] | None:
    """The tensor shapes of the safetensors weights (all shards), and the file to name."""
    single = directory / "model.safetensors"
    if single.is_file():
        return single.name, safetensors_shapes(single)
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        return None
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, AttributeError):
        raise ModelError(f"{index}: not a valid safetensors index") from None
    shapes: dict[str, list[int]] = {}
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise ModelError(f"{index}: shard {shown(shard)} is not a file name in the directory")
        if (directory / shard).is_file():
            shapes.update(safetensors_shapes(directory / shard))
    return index.name, shapes


def check_torch_weights(directory: Path, config: dict[str, Any]) -> None:
    """config.json against the safetensors weights' shapes (read from their headers), before
    transformers builds a model from config.json's sizes. Pickled weights have no header: the
    torch backend reads their shapes (see backends/torch.py) and calls check_weight_shapes."""
    found = _weight_shapes(directory)
    if found is not None:
        check_weight_shapes(directory, config, *found)


def check_weight_shapes(
    directory: Path, config: dict[str, Any], file: str, shapes: dict[str, list[int]]
) -> None:
    """The embedding tables, layer count and layer widths in `shapes` (the tensors of `file`)
    against config.json; a disagreement is a ModelError: the model is inconsistent."""
    sizes = config_sizes(directory / "config.json", config)
    vocab, positions, layers, width = (
        sizes[k] for k in ("vocab_size", "n_positions", "n_layer", "n_embd")
    )
    inner = config.get("n_inner") or 4 * width

    def inconsistent(what: str) -> ModelError:
        return ModelError(
            f"{directory}: the model is inconsistent: {what}; fix config.json or the weights"
        )

    shapes = {k.removeprefix("transformer."): v for k, v in shapes.items()}
    expected = {"wte.weight": [vocab, width], "wpe.weight": [positions, width]}
    names = {"wte.weight": "vocab_size and n_embd", "wpe.weight": "n_positions and n_embd"}
    for key, shape in expected.items():
        if key in shapes and shapes[key] != shape:
            raise inconsistent(
                f"config.json's {names[key]} give {key} {'x'.join(map(str, shape))}, "
                f"but {file} holds {'x'.join(map(str, shapes[key]))}"
            )
    held = {int(m.group(1)) for k in shapes if (m := _LAYER.match(k))}
    if held and len(held) != layers:
        raise inconsistent(
            f"config.json says n_layer {layers}, but {file} holds {len(held)} layers"
        )
    for key, shape in shapes.items():
        want = None
        if key.endswith(".attn.c_attn.weight"):
            want = [width, 3 * width]
        elif key.endswith(".mlp.c_fc.weight"):
            want = [width, inner]
        if want is not None and shape != want:
            raise inconsistent(
                f"config.json's sizes give {key} {'x'.join(map(str, want))}, "
                f"but {file} holds {'x'.join(map(str, shape))}"
            )


def config_sets_length(directory: Path) -> bool:
    """Whether `directory`'s generation_config.json sets a length (max_new_tokens, or a
    max_length other than transformers' 20). The text-generation pipeline looks there only: a
    max_length in config.json's task_specific_params (gpt2's 50) does not replace its default
    of new tokens."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return False
    settings = read_json_settings(path)  # checked when the model was located
    if not isinstance(settings, dict):
        return False
    return settings.get("max_new_tokens") is not None or settings.get("max_length") not in (
        None, GLOBAL_MAX_LENGTH,
    )
