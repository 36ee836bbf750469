"""The ONNX export engine behind `gpt2cli export-onnx`.

Two graphs. The default, `fused`, is GPT-2's decoder built directly from the weights with ONNX
Runtime's fused operators (`onnx_graph`: 9 nodes a layer). `optimum` is optimum's export
(text-generation-with-past) finished by a graph edit that stores GPT-2's tied embedding once and
adds `hidden_states.{i}` outputs and an overridable `logits_to_keep` input (default 0 = all
positions). Both have the same inputs and outputs. Optional quantization: the fused graph's
weight matrices become MatMulNBits (8- or 4-bit blocks, int8 arithmetic); the optimum graph's
int8 is dynamic quantization, its int4 MatMulNBits. Then validation against PyTorch; the
tokenizer, configs and a manifest beside the model. Everything is written to a temporary
directory beside OUTDIR and renamed into place at the end.

optimum, onnx and torch are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from gpt2cli.backends.onnx_format import (
    KEEP_INPUT,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    ONNX_DATA,
    ONNX_MODEL,
    hidden_name,
)
from gpt2cli.errors import InputError, MissingExtraError, ModelError
from gpt2cli.model_files import (
    METADATA_FILES,
    PYTORCH_BIN_FILES,
    SAFETENSORS_FILES,
    TOKENIZER_FILES,
    check_torch_weights,
    read_config,
    resolve_model_dir,
)
from gpt2cli.outputs import Settings, check_directory, temp_name

TASK = "text-generation-with-past"
QUANTIZATIONS = ("int8", "int4")
GRAPHS = ("fused", "optimum")
# Measured on a 2-core AVX-512 VNNI Xeon (README, "Against llama.cpp and CTranslate2"): 8-bit
# blocks of 32 (llama.cpp's Q8_0) keep the KL divergence at Q8_0's; 4-bit blocks of 128 decode
# about 1.3x faster than blocks of 32 with ONNX Runtime's kernels; the vocabulary projection
# stays 8-bit, as llama.cpp keeps its output matrix at Q6_K (12% less KL divergence than
# all-4-bit, for about 15% of the decode speed).
BLOCK_DEFAULTS = {"int8": 32, "int4": 128}
HEAD_BITS_DEFAULT = {"int8": 8, "int4": 8}
HEAD_BLOCK = 128
MS_DOMAIN = "com.microsoft"
# An fp32 export whose logits stray further than this from PyTorch's is refused.
FP32_TOLERANCE = 1e-3
VALIDATION_TEXTS = (
    "Hello, I'm a language model,",
    "The quick brown fox jumps over the lazy dog while the farmer sleeps.",
)
VALIDATION_STEPS = 20
# int4 blocks: powers of two that ONNX Runtime's MatMulNBits kernels (MLAS) implement.
BLOCK_SIZES = (16, 32, 64, 128, 256)
LIBRARIES = (
    "gpt2cli", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
    "accelerate",
)


@dataclass
class ExportOptions:
    """What `export-onnx` was asked to do."""

    quantize: str | None = None  # None, "int8" or "int4"
    per_channel: bool = False  # optimum graph's int8: one scale per output channel
    block_size: int | None = None  # weights per MatMulNBits block (None: BLOCK_DEFAULTS)
    head_bits: int | None = None  # the vocabulary projection's bits (None: HEAD_BITS_DEFAULT)
    graph: str = "fused"  # "fused" (onnx_graph) or "optimum"
    validate: bool = True
    force: bool = False
    opset: int | None = None


Progress = Callable[[str], None]


def _no_progress(message: str) -> None:
    pass


def export_model(
    model: str,
    outdir: str | Path,
    options: ExportOptions | None = None,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Export `model` (Hub id or directory) to `outdir`; returns the manifest written there."""
    options = options or ExportOptions()
    if not model.strip():
        raise InputError("MODEL: the model name is empty; give a Hub model id or a directory")
    if options.quantize not in (None, *QUANTIZATIONS):
        raise InputError(
            param="quantize", reason=f"expected int8 or int4, got {options.quantize!r}"
        )
    if options.graph not in GRAPHS:
        raise InputError(param="graph", reason=f"expected fused or optimum, got {options.graph!r}")
    if options.quantize and options.block_size is None:
        options = replace(options, block_size=BLOCK_DEFAULTS[options.quantize])
    if options.quantize and options.head_bits is None:
        options = replace(options, head_bits=HEAD_BITS_DEFAULT[options.quantize])
    if options.head_bits not in (None, 4, 8) or (options.quantize == "int8"
                                                 and options.head_bits != 8):
        raise InputError(
            param="head_bits", reason=f"expected 8, or 4 with int4, got {options.head_bits}"
        )
    if options.head_bits == 4 and options.graph != "fused":
        raise InputError(param="head_bits", reason="applies to the fused graph only")
    if options.block_size is not None and options.block_size not in BLOCK_SIZES:
        raise InputError(
            param="block_size",
            reason=f"expected one of {', '.join(map(str, BLOCK_SIZES))}, "
            f"got {options.block_size}"
        )
    if options.per_channel and options.graph == "fused":
        raise InputError(
            param="per_channel", reason="applies to the optimum graph's int8 only",
            hint="add {graph} optimum, or leave it out (the fused graph's blocks have a scale "
            "each)",
        )
    outdir = Path(outdir).expanduser()
    source = Path(model).expanduser()
    check_outdir(outdir, options.force, source if source.is_dir() else None)
    _require_export_packages()

    source_dir = _resolve_source(model)
    _check_apart(outdir, source_dir)
    config = read_config(source_dir)
    started = time.monotonic()
    try:
        outdir.parent.mkdir(parents=True, exist_ok=True)
        staging = outdir.parent / temp_name(outdir.name)
        staging.mkdir(mode=0o700)
    except OSError as exc:
        raise InputError(f"{outdir}: cannot create the export there: {exc.strerror}") from None
    try:
        raw, edited, final = staging / "optimum", staging / "edited", staging / "final"
        fused = _fused(options, config)
        if fused:
            progress(f"building the fused GPT-2 graph of {model}")
            _run_stage(
                "ONNX graph build",
                staging,
                lambda: build_fused(source_dir, edited, config, options),
            )
            progress("checking the graph")
        else:
            progress(f"exporting {model} with optimum ({TASK})")
            _optimum_export(source_dir, raw, options.opset)
            progress("tying the embedding, adding hidden-state outputs and logits_to_keep")
            _run_stage("ONNX graph edit", staging, lambda: finish_graph(raw, edited, config))
            shutil.rmtree(raw)
        if options.quantize:
            progress(f"quantizing to {options.quantize}")
            final.mkdir()
            _run_stage(
                "quantization",
                staging,
                lambda: quantize(edited / ONNX_MODEL, final / ONNX_MODEL, options, fused),
            )
            _copy_metadata(edited, final)
            shutil.rmtree(edited)
        else:
            edited.rename(final)
        _ensure_metadata(source_dir, final)
        validation = None
        if options.validate:
            progress("validating against PyTorch")
            validation = validate(source_dir, final, exact=options.quantize is None)
        manifest = _manifest(model, source_dir, final, options, validation, started, fused)
        (final / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _move_into_place(final, outdir, staging, options.force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def check_outdir(outdir: Path, force: bool, source: Path | None = None) -> bool:
    """Refuse an OUTDIR that export-onnx must not create or replace, before anything runs
    (overlapping a local `source` model directory included). True when it is a previous
    export (a directory holding the manifest and only the files it lists), which --force
    replaces; False when it does not exist yet."""
    if outdir.name in ("", "..") or str(outdir).endswith("/."):
        raise InputError(f"{outdir}: OUTDIR must name a new directory (or, with --force, a "
                         "previous export), not '.', '..' or '/'")
    if source is not None:
        _check_apart(outdir, source)
    try:
        mode = os.lstat(outdir).st_mode
    except FileNotFoundError:
        _check_creatable(outdir)
        return False
    except NotADirectoryError:
        raise InputError(f"{outdir}: a parent of OUTDIR is not a directory") from None
    except OSError as exc:
        raise InputError(f"{outdir}: {exc.strerror}") from None
    if stat.S_ISLNK(mode):
        state = "a symlink" if outdir.exists() else "a dangling symlink"
        raise InputError(f"{outdir}: is {state} ({os.readlink(outdir)}); give a new directory "
                         "(or, with --force, a previous export itself)")
    if not stat.S_ISDIR(mode):
        raise InputError(f"{outdir}: exists and is not a directory")
    if not force:
        raise InputError(f"{outdir}: already exists (pass --force to replace it)")
    _check_previous_export(outdir)
    return True


def _check_previous_export(outdir: Path) -> None:
    """--force replaces only what an export wrote: anything else is refused, nothing deleted."""
    refusal = f"{outdir}: --force replaces only a previous gpt2cli export, and this directory "
    manifest = outdir / MANIFEST_NAME
    try:
        data = json.loads(manifest.read_text(encoding="utf-8")) if not manifest.is_symlink() \
            else None
    except (OSError, ValueError):
        data = None
    listed = data.get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(
        listed, dict
    ):
        raise InputError(refusal + f"has no valid {MANIFEST_NAME}; nothing was deleted")
    foreign = sorted(
        entry.name
        for entry in os.scandir(outdir)
        if entry.name != MANIFEST_NAME
        and (entry.name not in listed or not entry.is_file(follow_symlinks=False))
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                           else "")
        raise InputError(refusal + f"also holds {shown}; nothing was deleted")


def _check_creatable(outdir: Path) -> None:
    """The nearest existing ancestor of a new OUTDIR is a directory that takes new entries."""
    ancestor = outdir.absolute().parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    check_directory(str(outdir), str(ancestor))


def _check_apart(outdir: Path, source_dir: Path) -> None:
    """OUTDIR must be neither the source model directory, nor inside it, nor around it."""
    out, source = Path(os.path.realpath(outdir)), Path(os.path.realpath(source_dir))
    if out == source:
        raise InputError(f"{outdir}: is the source model directory; give another OUTDIR")
    if source in out.parents:
        raise InputError(f"{outdir}: is inside the source model directory {source_dir}; "
                         "give a directory outside it")
    if out in source.parents:
        raise InputError(f"{outdir}: contains the source model directory {source_dir}; "
                         "give a directory outside it")


def _require_export_packages() -> None:
    for module in ("torch", "transformers", "optimum.exporters.onnx", "onnx", "accelerate"):
        try:
            __import__(module)
        except ImportError:
            extra = "torch" if module in ("torch", "transformers") else "export"
            raise MissingExtraError("export-onnx", extra) from None


def _resolve_source(model: str) -> Path:
    """The source model's directory, with PyTorch weights (safetensors preferred)."""
    directory = resolve_model_dir(model, METADATA_FILES + SAFETENSORS_FILES)
    if not any(any(directory.glob(p)) for p in SAFETENSORS_FILES):
        directory = resolve_model_dir(model, METADATA_FILES + PYTORCH_BIN_FILES)
    if not any(any(directory.glob(p)) for p in SAFETENSORS_FILES + PYTORCH_BIN_FILES):
        raise ModelError(f"{model}: no model.safetensors or pytorch_model.bin to export")
    return directory


@contextlib.contextmanager
def _third_party_output(log_path: Path) -> Iterator[None]:
    """Send the exporters' own prints, warnings and logs to `log_path` (to stderr with --debug),
    and never to stdout, which carries only results."""
    names = ("optimum", "transformers", "torch", "onnx", "onnxruntime")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with contextlib.suppress(OSError):  # a closed stdout (its stand-in has no descriptor)
        sys.stdout.flush()
        sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    with open(log_path, "ab") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if Settings.debug:
                os.dup2(2, 1)
            else:
                for lg in loggers:
                    lg.setLevel(logging.ERROR)
                os.dup2(sink.fileno(), 1)
                os.dup2(sink.fileno(), 2)
            yield
        finally:
            with contextlib.suppress(OSError):
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _run_stage(what: str, log_dir: Path, step: Callable[[], None]) -> None:
    """Run a third-party step quietly; its failure becomes one ModelError line."""
    try:
        with _third_party_output(log_dir / "exporter.log"):
            step()
    except (KeyboardInterrupt, SystemExit, ModelError):
        raise
    except Exception as exc:
        if Settings.debug:
            raise
        from gpt2cli.backends.torch import weights_error

        # The earliest error of the chain: optimum's fallbacks (a TensorFlow checkpoint, ...)
        # hide the real one behind messages such as "No module named 'tensorflow'".
        detail = weights_error(exc)
        raise ModelError(f"{what} failed: {detail} (rerun with --debug for details)") from None


def _optimum_export(source_dir: Path, target: Path, opset: int | None) -> None:
    from optimum.exporters.onnx import main_export

    from gpt2cli.backends.torch import check_pickled_weights

    # config.json against the weights before optimum builds a model from its sizes; a pickle
    # holding more than tensors is refused here with the reason, not optimum's fallbacks.
    config = read_config(source_dir)
    try:
        check_torch_weights(source_dir, config)
        if not any(source_dir.glob("model*.safetensors")):
            check_pickled_weights(source_dir, config)
    except ModelError as exc:
        raise ModelError(f"ONNX export failed: {exc.message}") from None
    _run_stage(
        "ONNX export",
        target.parent,
        lambda: main_export(
            str(source_dir),
            output=target,
            task=TASK,
            opset=opset,
            do_validation=False,
            # optimum's post-processing only ties the embedding, and fails on models over
            # 2 GB (it measures the whole protobuf): finish_graph ties it instead.
            no_post_process=True,
            local_files_only=True,
            trust_remote_code=False,
            library_name="transformers",
        ),
    )
    if not (target / ONNX_MODEL).is_file():
        raise ModelError(f"ONNX export failed: optimum wrote no {ONNX_MODEL}")


def _fused(options: ExportOptions, config: dict[str, Any]) -> bool:
    """Whether this export builds the fused graph: asked for, and the model is one it can
    express (otherwise optimum's export, said on stderr)."""
    from gpt2cli.onnx_graph import unsupported

    if options.graph != "fused":
        return False
    reason = unsupported(config)
    if reason:
        from gpt2cli.outputs import warn

        warn(f"the fused graph does not support {reason}; exporting optimum's graph instead")
        return False
    return True


def build_fused(
    source_dir: Path, target: Path, config: dict[str, Any], options: ExportOptions
) -> None:
    """The fused graph (`onnx_graph.build_decoder`) of the checkpoint in `source_dir`, saved in
    `target` with its weights in model.onnx_data."""
    import onnx
    import torch
    from transformers import GPT2LMHeadModel

    from gpt2cli.backends.torch import check_pickled_weights
    from gpt2cli.onnx_graph import OPSET, build_decoder

    opset = options.opset or OPSET
    if opset < OPSET:
        raise InputError(
            param="opset", reason=f"the fused graph needs opset {OPSET} or later, got {opset}",
            hint="use {graph} optimum for an older opset",
        )
    try:
        check_torch_weights(source_dir, config)
        if not any(source_dir.glob("model*.safetensors")):
            check_pickled_weights(source_dir, config)
    except ModelError as exc:
        raise ModelError(f"ONNX export failed: {exc.message}") from None
    model = GPT2LMHeadModel.from_pretrained(
        str(source_dir), local_files_only=True, dtype=torch.float32
    )
    weights = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}
    graph = build_decoder(weights, config, quantizable=bool(options.quantize), opset=opset)
    del model, weights
    target.mkdir()
    path = target / ONNX_MODEL
    onnx.save(
        graph,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=ONNX_DATA,
        size_threshold=1024,
    )
    onnx.checker.check_model(str(path))


def _load_graph(path: Path, with_weights: bool = False) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=with_weights)


def finish_graph(source: Path, target: Path, config: dict[str, Any]) -> None:
    """optimum's raw export in `source`, finished into `target`: `hidden_states.{i}` outputs,
    the overridable `logits_to_keep` input, and the tied embedding stored once.

    The weights go to model.onnx_data beside model.onnx: ONNX Runtime maps that file instead
    of parsing the weights out of the protobuf, which halves the load time, and it is the only
    way past protobuf's 2 GB limit.
    """
    import onnx

    model = onnx.load(str(source / ONNX_MODEL))  # with the weights, wherever they are
    add_gpt2cli_io(model, config)
    tie_embedding(model)
    fold_attention_scale(model, config)
    target.mkdir()
    _copy_metadata(source, target)
    path = target / ONNX_MODEL
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=ONNX_DATA,
        size_threshold=1024,
    )
    onnx.checker.check_model(str(path))  # by path: external data is checked where it lies


def tie_embedding(model: Any) -> bool:
    """When the vocabulary projection's weight is the token embedding transposed, project
    with FusedMatMul(hidden, embedding, transB=1) instead: GPT-2's tied weight is stored once,
    and ONNX Runtime neither folds nor keeps a transposed copy of it at load time."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    heads = [n for n in graph.node if "logits" in n.output and n.op_type == "MatMul"]
    if len(heads) != 1 or heads[0].input[1] not in initializers:
        return False
    head = heads[0]
    projection = initializers[head.input[1]]
    for node in graph.node:
        table = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or list(table.dims) != list(reversed(projection.dims)):
            continue
        if not np.array_equal(numpy_helper.to_array(table).T, numpy_helper.to_array(projection)):
            continue
        head.op_type, head.domain = "FusedMatMul", MS_DOMAIN
        head.input[1] = table.name
        head.attribute.extend([helper.make_attribute("transB", 1)])
        if not any(op.domain == MS_DOMAIN for op in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        graph.initializer.remove(projection)
        return True
    return False


SCALE_NAME = "gpt2cli/attention_scale"


def fold_attention_scale(model: Any, config: dict[str, Any]) -> int:
    """Scale only the query by 1/sqrt(head_dim), not query and transposed key by its root each.

    torch's SDPA decomposition exports `MatMul(Mul(q, r), Mul(Transpose(k), r))` with
    r = head_dim ** -0.25. The Mul between the transpose and the MatMul stops ONNX Runtime from
    fusing them into one FusedMatMul(transB), so every step transposed and rescaled the whole
    key cache of every layer: about 15% of a batched decode step. For head_dim 64 the single
    scale is 1/8, exact in float32, like transformers' eager `(q @ k^T) / 8`. Returns the number
    of attention blocks changed (0 where the pattern or the standard GPT-2 scaling is absent).
    """
    from onnx import numpy_helper

    if not config.get("scale_attn_weights", True) or config.get(
        "scale_attn_by_inverse_layer_idx", False
    ):
        return 0
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    changed = 0
    for matmul in graph.node:
        if matmul.op_type != "MatMul":
            continue
        query_mul, key_mul = (producer.get(name) for name in matmul.input)
        if not (query_mul and key_mul and query_mul.op_type == key_mul.op_type == "Mul"):
            continue
        transpose = producer.get(key_mul.input[0])
        query_scale = [i for i, name in enumerate(query_mul.input) if name in producer
                       and producer[name].op_type == "Sqrt"]
        if (
            transpose is None
            or transpose.op_type != "Transpose"
            or [list(a.ints) for a in transpose.attribute if a.name == "perm"] != [[0, 1, 3, 2]]
            or len(query_scale) != 1
        ):
            continue
        query_mul.input[query_scale[0]] = SCALE_NAME
        matmul.input[1] = transpose.output[0]
        changed += 1
    if changed:
        scale = np.array(1.0 / np.sqrt(_head_dim(config)), dtype=np.float32)
        graph.initializer.append(numpy_helper.from_array(scale, SCALE_NAME))
        _remove_unused_nodes(graph)
    return changed


def _head_dim(config: dict[str, Any]) -> int:
    n_embd = config.get("n_embd", config.get("hidden_size"))
    return n_embd // config.get("n_head", config.get("num_attention_heads"))


def _remove_unused_nodes(graph: Any) -> None:
    """Drop nodes none of whose outputs is used, repeatedly (the graph stays in order)."""
    outputs = {output.name for output in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        unused = [node for node in graph.node if not any(o in used for o in node.output)]
        if not unused:
            return
        for node in unused:
            graph.node.remove(node)


def add_gpt2cli_io(model: Any, config: dict[str, Any]) -> None:
    """Add `hidden_states.{i}` outputs and the overridable `logits_to_keep` input, in place.

    hidden_states[i] (i < n_layer) is the input of block i's first LayerNormalization, and
    hidden_states[n_layer] the input of the vocabulary projection (ln_f's output), matching
    transformers' hidden_states tuple.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    n_layer = config.get("n_layer", config.get("num_hidden_layers"))
    n_embd = config.get("n_embd", config.get("hidden_size"))
    norms = [node for node in graph.node if node.op_type == "LayerNormalization"]
    heads = [node for node in graph.node if "logits" in node.output]
    if len(norms) != 2 * n_layer + 1 or len(heads) != 1 or heads[0].op_type != "MatMul":
        raise ModelError(
            "ONNX export has an unexpected structure (layer norms or vocabulary projection "
            "not found); cannot add hidden-state outputs"
        )
    head = heads[0]
    hidden_inputs = [norms[2 * i].input[0] for i in range(n_layer)] + [head.input[0]]
    for index, tensor in enumerate(hidden_inputs):
        name = hidden_name(index)
        graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"gpt2cli/{name}"))
        graph.output.append(
            helper.make_tensor_value_info(
                name, TensorProto.FLOAT, ["batch_size", "sequence_length", n_embd]
            )
        )

    # logits = MatMul(Slice(hidden, -logits_to_keep, end, axis 1), W): 0 keeps every position.
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), KEEP_INPUT),
            numpy_helper.from_array(np.array([np.iinfo(np.int64).max]), "gpt2cli/keep_end"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "gpt2cli/keep_axis"),
        ]
    )
    graph.input.append(helper.make_tensor_value_info(KEEP_INPUT, TensorProto.INT64, [1]))
    negated = helper.make_node("Neg", [KEEP_INPUT], ["gpt2cli/keep_start"], name="gpt2cli/Neg")
    kept = helper.make_node(
        "Slice",
        [head.input[0], "gpt2cli/keep_start", "gpt2cli/keep_end", "gpt2cli/keep_axis"],
        ["gpt2cli/kept_hidden"],
        name="gpt2cli/Slice",
    )
    position = list(graph.node).index(head)
    graph.node.insert(position, kept)
    graph.node.insert(position, negated)
    head.input[0] = "gpt2cli/kept_hidden"


def _prepare_for_quantization(model: Any) -> None:
    """Rewrite weights into the form ONNX Runtime's quantizers take, in place.

    Both quantizers handle MatMul with a constant weight only: GPT-2's Conv1D layers export as
    Gemm, and the tied vocabulary projection is a FusedMatMul with the embedding (transB).
    Gemm becomes MatMul + Add, and the projection gets its own transposed weight (stored
    quantized; the embedding table stays for the token lookup).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    rewritten = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type == "Gemm"
            and node.input[1] in initializers
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and not attrs.get("transA", 0)
        ):
            weight = node.input[1]
            if attrs.get("transB", 0):
                array = np.ascontiguousarray(numpy_helper.to_array(initializers[weight]).T)
                weight = f"{weight}_transposed"
                graph.initializer.append(numpy_helper.from_array(array, weight))
            product = f"{node.name}/MatMul_output" if len(node.input) > 2 else node.output[0]
            rewritten.append(
                helper.make_node(
                    "MatMul", [node.input[0], weight], [product], name=f"{node.name}/MatMul"
                )
            )
            if len(node.input) > 2 and node.input[2]:
                rewritten.append(
                    helper.make_node(
                        "Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}/Add"
                    )
                )
            continue
        if node.op_type == "FusedMatMul" and "logits" in node.output:
            table = initializers.get(node.input[1])
            if table is not None and attrs.get("transB", 0) and not attrs.get("transA", 0):
                array = np.ascontiguousarray(numpy_helper.to_array(table).T)
                name = "lm_head.weight_transposed"
                graph.initializer.append(numpy_helper.from_array(array, name))
                node = helper.make_node(
                    "MatMul", [node.input[0], name], list(node.output), name=node.name
                )
        rewritten.append(node)
    del graph.node[:]
    graph.node.extend(rewritten)
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def quantize(source: Path, target: Path, options: ExportOptions, fused: bool = False) -> None:
    """The fused graph: see `_quantize_fused`. optimum's graph: int8 dynamic quantization of
    every weight matrix, or int4 weight-only quantization of every weight matrix and embedding
    table."""
    model = _load_graph(source, with_weights=True)
    if fused:
        _quantize_fused(model, target, options)
        return
    _prepare_for_quantization(model)
    if options.quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            model,
            str(target),
            op_types_to_quantize=["MatMul"],
            per_channel=options.per_channel,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
            # contrib-op outputs have no inferred type: say float
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1},
        )
        return
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # The embedding tables (token and position lookups) are quantized too, as
    # GatherBlockQuantized: without that the fp32 token table would be most of the file.
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=options.block_size or 32,
        is_symmetric=False,
        accuracy_level=4,
        op_types_to_quantize=("MatMul", "Gather"),
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=True)


def _quantize_fused(model: Any, target: Path, options: ExportOptions) -> None:
    """The fused graph's weight matrices as MatMulNBits: symmetric blocks of 8 or 4 bits (the
    layout of llama.cpp's Q8_0 and Q4_0), multiplied in int8 (accuracy level 4: the activations
    are quantized per row and block too, so the dot products run on VNNI and a row never
    depends on its batch). The vocabulary projection gets `head_bits` (8-bit blocks of
    HEAD_BLOCK when the rest is 4-bit). int4 also stores the embedding tables in 4 bits
    (GatherBlockQuantized); int8 keeps them in float32 (only looked up, a row per token)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from gpt2cli.onnx_graph import LM_HEAD_NODE

    four = options.quantize == "int4"
    bits = 4 if four else 8
    separate_head = options.head_bits != bits
    if separate_head:  # (the quantizer's nodes_to_include does not restrict it; exclusion does)
        others = [n.name for n in model.graph.node if n.op_type == "MatMul"
                  and n.name != LM_HEAD_NODE]  # fmt: skip
        head = MatMulNBitsQuantizer(
            model, bits=options.head_bits, block_size=HEAD_BLOCK, is_symmetric=True,
            accuracy_level=4, op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),),
            nodes_to_exclude=others,
        )
        head.process()
        model = head.model.model
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=options.block_size,
        is_symmetric=True,
        accuracy_level=4,
        op_types_to_quantize=("MatMul", "Gather") if four else ("MatMul",),
        quant_axes=(("MatMul", 0), ("Gather", 1)),
        nodes_to_exclude=[LM_HEAD_NODE] if separate_head else [],
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=True)


def _copy_metadata(source: Path, target: Path) -> None:
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith(ONNX_MODEL) and path.suffix != ".log":
            shutil.copy2(path, target / path.name)


def _ensure_metadata(source_dir: Path, final: Path) -> None:
    """config.json, generation_config.json and the tokenizer files beside the model."""
    for name in ("config.json", "generation_config.json", *TOKENIZER_FILES):
        if not (final / name).exists() and (source_dir / name).is_file():
            shutil.copy2(source_dir / name, final / name)
    if not (final / "tokenizer.json").exists() and not (final / "vocab.json").exists():
        from gpt2cli.outputs import warn

        warn(f"{source_dir}: no tokenizer files to copy; gpt2cli will use its built-in GPT-2 one")


def validate(source_dir: Path, onnx_dir: Path, exact: bool = True) -> dict[str, Any]:
    """Max |logit| difference between PyTorch and the export over a padded prompt batch and
    VALIDATION_STEPS cached decode steps (same tokens fed to both), plus hidden states."""
    from gpt2cli.backends.base import position_ids_from_mask
    from gpt2cli.loader import load_backend
    from gpt2cli.scoring import kl_divergence_rows

    reference = load_backend(str(source_dir), backend="torch")
    candidate = load_backend(str(onnx_dir), backend="onnx")
    encoded = [reference.tokenizer.encode(text) for text in VALIDATION_TEXTS]
    width = max(map(len, encoded))
    ids = np.full((len(encoded), width), reference.info.eos_token_id or 0, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :], mask[row, width - len(tokens) :] = tokens, 1
    positions = position_ids_from_mask(mask, width)
    layer = reference.info.n_layer
    ref = reference.forward(ids, mask, positions, logits="all", hidden_layer=layer)
    got = candidate.forward(ids, mask, positions, logits="all", hidden_layer=layer)
    valid = mask.astype(bool)
    logit_diff = float(np.abs(ref.logits - got.logits)[valid].max())
    hidden_diff = float(np.abs(ref.hidden - got.hidden)[valid].max())
    agree = [np.argmax(ref.logits, -1)[valid] == np.argmax(got.logits, -1)[valid]]
    # KL(PyTorch || export) per position, as `score --kl-base` computes it.
    kl = [kl_divergence_rows(ref.logits[valid], got.logits[valid])[0]]
    ref_cache, got_cache = ref.cache, got.cache
    next_ids = np.argmax(ref.logits[:, -1], axis=-1)[:, None]
    steps = min(VALIDATION_STEPS, reference.info.n_positions - width)
    for _ in range(steps):
        mask = np.concatenate([mask, np.ones_like(next_ids)], axis=1)
        step_positions = position_ids_from_mask(mask, 1)
        ref = reference.forward(next_ids, mask, step_positions, ref_cache)
        got = candidate.forward(next_ids, mask, step_positions, got_cache)
        ref_cache, got_cache = ref.cache, got.cache
        logit_diff = max(logit_diff, float(np.abs(ref.logits - got.logits).max()))
        agree.append(np.argmax(ref.logits, -1) == np.argmax(got.logits, -1))
        kl.append(kl_divergence_rows(ref.logits, got.logits)[0])
        next_ids = np.argmax(ref.logits, axis=-1)[:, None]
    divergences = np.concatenate(kl)
    result = {
        "max_abs_logit_diff": logit_diff,
        "max_abs_hidden_diff": hidden_diff,
        "top1_agreement": float(np.concatenate(agree).mean()),
        "kl_divergence": float(divergences.mean()),
        "kl_divergence_max": float(divergences.max()),
        "prompt_tokens": int(valid.sum()),
        "decode_steps": steps,
    }
    from gpt2cli.outputs import log

    log(
        f"validation against PyTorch: KL divergence {result['kl_divergence']:.3g} (mean; max "
        f"{result['kl_divergence_max']:.3g}), same top token {100 * result['top1_agreement']:.2f}%"
        f" over {len(divergences)} positions"
    )
    if exact and max(logit_diff, hidden_diff) > FP32_TOLERANCE:
        raise ModelError(
            f"validation failed: the export's logits differ from PyTorch's by {logit_diff:.3g} "
            f"(hidden states by {hidden_diff:.3g}; tolerance {FP32_TOLERANCE:g})"
        )
    return result


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _revision(source_dir: Path) -> str | None:
    """The commit of a Hub cache snapshot (…/snapshots/<sha>), or None for a local directory."""
    if source_dir.parent.name == "snapshots" and len(source_dir.name) == 40:
        return source_dir.name
    return None


def _manifest(
    model: str,
    source_dir: Path,
    final: Path,
    options: ExportOptions,
    validation: dict[str, Any] | None,
    started: float,
    fused: bool,
) -> dict[str, Any]:
    graph = _load_graph(final / ONNX_MODEL)
    opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    quantization = None
    if fused and options.quantize:
        bits = 8 if options.quantize == "int8" else 4
        quantization = {
            "method": f"onnxruntime MatMulNBits {bits}-bit weight-only, symmetric, int8 "
            "arithmetic (accuracy level 4)",
            "block_size": options.block_size,
            "vocabulary_projection": f"{options.head_bits}-bit, blocks of "
            f"{options.block_size if options.head_bits == bits else HEAD_BLOCK}",
            "embeddings": "int4 (GatherBlockQuantized)" if bits == 4 else "float32",
        }
    elif options.quantize == "int8":
        quantization = {"method": "onnxruntime dynamic int8", "per_channel": options.per_channel}
    elif options.quantize == "int4":
        quantization = {
            "method": "onnxruntime MatMulNBits int4 weight-only",
            "block_size": options.block_size,
            "embeddings": "int4 (GatherBlockQuantized)",
        }
    files = {p.name: p.stat().st_size for p in sorted(final.iterdir()) if p.is_file()}
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "source": model,
        "source_revision": _revision(source_dir),
        "task": TASK,
        "graph": "fused" if fused else "optimum",
        "opset": opset,
        "dtype": "float32",
        "quantization": quantization,
        "validation": validation,
        "extras": {"hidden_states_outputs": True, "logits_to_keep_input": KEEP_INPUT},
        "libraries": {name: _version(name) for name in LIBRARIES},
        "export_seconds": round(time.monotonic() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }


def _default_permissions(directory: Path) -> None:
    """mkdtemp's private 0700 (and onnx's 0600 data file) would outlive the rename: give the
    export the modes a plain mkdir and open would have."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _move_into_place(final: Path, outdir: Path, staging: Path, force: bool) -> None:
    """Rename the finished export to `outdir`. Without --force only where nothing exists: the
    name is claimed by an exclusive mkdir, so an OUTDIR that appeared during the export is
    never replaced. With --force an old export is replaced, once checked again."""
    _default_permissions(final)
    if force and os.path.lexists(outdir):
        check_outdir(outdir, force=True)  # again: it may have changed during the export
        old = staging / "replaced"
        outdir.rename(old)
        try:
            final.rename(outdir)
        except BaseException:
            old.rename(outdir)
            raise
        return
    try:
        outdir.mkdir()
    except FileExistsError:
        raise InputError(
            f"{outdir}: already exists (it appeared during the export; pass --force to "
            "replace it)"
        ) from None
    try:
        final.rename(outdir)  # onto the empty directory just made
    except BaseException:
        with contextlib.suppress(OSError):
            outdir.rmdir()
        raise
