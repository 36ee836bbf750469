"""`gpt2cli info`: what a model is, from its files alone (no weights load, no torch import)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gpt2cli import options
from gpt2cli.outputs import escape_controls, output_stream, to_json

DEFAULT_MODEL = "gpt2"

# What each file of a model directory is for (exact names first, then name patterns).
_ROLES = {
    "config.json": "config",
    "generation_config.json": "generation config",
    "gpt2cli-export.json": "export manifest",
    "model.onnx": "ONNX graph",
    "model.onnx_data": "ONNX weights (external data)",
    "model.onnx.data": "ONNX weights (external data)",
    "model.safetensors": "torch weights (safetensors)",
    "model.safetensors.index.json": "torch weights index (safetensors)",
    "pytorch_model.bin": "torch weights (pickle)",
    "pytorch_model.bin.index.json": "torch weights index (pickle)",
}
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
              "special_tokens_map.json")  # fmt: skip
# Buffers that old checkpoints saved beside the weights: not parameters.
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def info(
    model: options.Model = None,
    fmt: options.FormatOpt = None,
    as_json: options.JsonFlag = False,
    as_jsonl: options.JsonlFlag = False,
    output: options.Output = None,
    force: options.Force = False,
) -> None:
    """Show a model: sizes, context, vocabulary, files, backends and generation defaults.

    Read from config.json, generation_config.json, the export manifest and the
    safetensors headers: no weights load. A Hub model's metadata is fetched,
    never its weights; its files are listed as cached. --format json prints
    one object.
    """
    from gpt2cli.outputs import check_output

    check_output(output, force)
    output_format = options.output_format(fmt, as_json, as_jsonl)
    report = describe(model or DEFAULT_MODEL)
    with output_stream(output, force) as out:
        if output_format == "json":
            out.write(to_json(report, indent=2) + "\n")
        elif output_format == "jsonl":
            out.write(to_json(report) + "\n")
        else:
            out.write(render(report))


def describe(model: str) -> dict[str, Any]:
    """The `info` object of `model` (a directory or a Hub id)."""
    from gpt2cli.backends import registry
    from gpt2cli.loader import locate_model
    from gpt2cli.model_files import (
        METADATA_FILES,
        is_local,
        read_config,
        resolve_model_dir,
    )
    from gpt2cli.model_info import model_info

    if is_local(model):
        located = locate_model(model)  # a local directory: nothing is downloaded
        directory, auto, model_config = located.directory, located.backend, located.info
        config = read_config(directory)
    else:
        # Only the metadata: `info` never downloads weights.
        directory = resolve_model_dir(model, METADATA_FILES)
        auto = registry.choose_hub(directory)
        config = read_config(directory)
        model_config = model_info(directory, model, config)
    files = _files(directory)
    parameters, counted_from = _parameters(directory, config, model_config)
    from_model = dict(model_config.generation_defaults)
    defaults = _generation_defaults(directory, from_model)
    manifest = _manifest(directory)
    present = [name for name in registry.NAMES if registry.get(name).detect(directory)]
    return {
        "model": model,
        "directory": str(directory),
        "model_type": config.get("model_type", "gpt2"),
        "n_layer": model_config.n_layer,
        "n_head": model_config.n_head,
        "n_embd": model_config.n_embd,
        "n_inner": config.get("n_inner") or 4 * model_config.n_embd,
        "context_length": model_config.n_positions,
        "vocab_size": model_config.vocab_size,
        "parameters": parameters,
        "parameters_from": counted_from,
        "eos_token_id": model_config.eos_token_id,
        "bos_token_id": model_config.bos_token_id,
        "backends": present,
        "auto_backend": auto,
        "quantization": manifest.get("quantization") if manifest else None,
        "export": manifest,
        "generation_defaults": defaults,
        "generation_settings_from_model": from_model,
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files),
    }


def _files(directory: Path) -> list[dict[str, Any]]:
    """Every file in the directory (not below it), with its size and what it is for."""
    files = []
    for path in sorted(directory.iterdir()):
        if not path.is_file():  # follows the Hub cache's symlinks to its blobs
            continue
        files.append({"name": path.name, "bytes": path.stat().st_size, "role": _role(path.name)})
    return files


def _role(name: str) -> str | None:
    if name in _ROLES:
        return _ROLES[name]
    if name in _TOKENIZER:
        return "tokenizer"
    if name.startswith("model-") and name.endswith(".safetensors"):
        return "torch weights (safetensors shard)"
    if name.startswith("pytorch_model-") and name.endswith(".bin"):
        return "torch weights (pickle shard)"
    return None


def _parameters(
    directory: Path, config: dict[str, Any], model_config: Any  # noqa: ANN401 - ModelInfo
) -> tuple[int, str]:
    """The parameter count: from the safetensors headers when the directory has them (the
    tied output layer and attention-mask buffers not counted), else from config.json's
    sizes (GPT-2's formula)."""
    from gpt2cli.model_files import safetensors_shapes

    shards = sorted(directory.glob("model-*.safetensors"))
    paths = [directory / "model.safetensors"] if (directory / "model.safetensors").is_file() \
        else shards  # fmt: skip
    if paths:
        shapes: dict[str, list[int]] = {}
        for path in paths:
            shapes.update(safetensors_shapes(path))
        tied = any(k.endswith("wte.weight") for k in shapes)
        count = sum(
            math.prod(shape)
            for name, shape in shapes.items()
            if not name.endswith(_BUFFERS) and not (tied and name == "lm_head.weight")
        )
        return count, f"{paths[0].name} header" if len(paths) == 1 else "safetensors headers"
    n_embd, vocab = model_config.n_embd, model_config.vocab_size
    inner = config.get("n_inner") or 4 * n_embd
    per_layer = 4 * n_embd * n_embd + 2 * n_embd * inner + 9 * n_embd + inner
    count = (vocab + model_config.n_positions) * n_embd + model_config.n_layer * per_layer
    return count + 2 * n_embd, "config.json"


def _manifest(directory: Path) -> dict[str, Any] | None:
    """The export manifest's summary (no file list or library versions), or None."""
    from gpt2cli.model_files import MANIFEST_NAME

    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(manifest, dict):
        return None
    keep = ("source", "source_revision", "graph", "dtype", "quantization", "opset", "created",
            "validation")  # fmt: skip
    return {key: manifest.get(key) for key in keep}


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def render(report: dict[str, Any]) -> str:
    """The report as aligned `key  value` lines, files and generation defaults indented."""
    e = escape_controls
    rows: list[tuple[str, str]] = [
        ("model", e(report["model"])),
        ("directory", e(report["directory"])),
        ("architecture", f"{report['model_type']}: {report['n_layer']} layers, "
                         f"{report['n_head']} heads, {report['n_embd']} wide "
                         f"(MLP {report['n_inner']})"),  # fmt: skip
        ("parameters", f"{report['parameters']:,} (from {report['parameters_from']})"),
        ("context", f"{report['context_length']} tokens"),
        ("vocabulary", f"{report['vocab_size']} tokens (eos {report['eos_token_id']}, "
                       f"bos {report['bos_token_id']})"),  # fmt: skip
        ("backends", f"{', '.join(report['backends']) or 'none'} "
                     f"(auto picks {report['auto_backend']})"),  # fmt: skip
    ]
    export = report["export"]
    if export is not None:
        quantization = export.get("quantization")
        method = quantization.get("method") if isinstance(quantization, dict) else None
        graph = export.get("graph") or "optimum"  # exports before the fused graph: optimum's
        line = f"{graph} graph, {method or 'not quantized'}; {export.get('dtype')}"
        line += f", opset {export.get('opset')}, from {e(str(export.get('source')))}"
        validation = export.get("validation")
        if isinstance(validation, dict) and "kl_divergence" in validation:
            line += (f"; KL vs PyTorch {validation['kl_divergence']:.3g}, same top token "
                     f"{100 * validation['top1_agreement']:.2f}%")  # fmt: skip
        rows.append(("export", line))
    rows.append(("files", f"{_size(report['total_bytes'])} in {len(report['files'])} files"))
    width = max(len(key) for key, _ in rows)
    lines = [f"{key:<{width}}  {value}" for key, value in rows]
    names = max((len(e(f["name"])) for f in report["files"]), default=0)
    for entry in report["files"]:
        role = f"  {entry['role']}" if entry["role"] else ""
        lines.append(f"  {e(entry['name']):<{names}}  {_size(entry['bytes']):>9}{role}")
    lines.append("generation defaults (the model's settings, then transformers' defaults)")
    model_keys = set(report["generation_settings_from_model"])
    keys = max(len(k) for k in report["generation_defaults"])
    for key, value in report["generation_defaults"].items():
        where = "model" if key in model_keys else "transformers"
        lines.append(f"  {key:<{keys}}  {e(to_json(value)):<8}  {where}")
    return "\n".join(lines) + "\n"


def _generation_defaults(directory: Path, from_model: dict[str, Any]) -> dict[str, Any]:
    """The generation parameters `generate` will use when given none: transformers' defaults,
    the model's settings, and the pipeline's default of new tokens where no length is set."""
    from dataclasses import asdict

    from gpt2cli.generation_params import TRANSFORMERS_DEFAULTS, GenerationParams
    from gpt2cli.model_files import config_sets_length

    params = asdict(
        GenerationParams.resolve(from_model, {}, model_length=config_sets_length(directory))
    )
    return {name: params[name] for name in TRANSFORMERS_DEFAULTS if name in params}
