"""The PyTorch backend: transformers' GPT2LMHeadModel under inference mode."""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpt2cli.backends.base import ForwardResult, LogitsWanted
from gpt2cli.errors import CliError, MissingExtraError, ModelError
from gpt2cli.model_files import adapter_base, check_weight_shapes, read_config
from gpt2cli.model_info import TANH_GELU, ModelInfo
from gpt2cli.tokenizer import Tokenizer

# Buffers that checkpoints legitimately lack; anything else missing means broken weights.
_OPTIONAL_KEYS = ("lm_head.weight", ".attn.bias", ".attn.masked_bias")


def import_torch() -> tuple[Any, Any]:
    """torch and transformers, or a MissingExtraError naming the extra."""
    if "torch" not in sys.modules:
        # Idle OpenMP threads sleep instead of spinning: on shared cores, spinning threads
        # make decode steps up to 10x slower. OMP_WAIT_POLICY=ACTIVE restores spinning.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
        import transformers
    except ImportError:
        raise MissingExtraError("the torch backend", "torch") from None
    return torch, transformers


class TorchBackend:
    """GPT2LMHeadModel on CPU or CUDA, in float32, bfloat16 or float16."""

    name = "torch"

    def __init__(
        self,
        info: ModelInfo,
        tokenizer: Tokenizer,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
    ) -> None:
        torch, _ = import_torch()
        self.info = info
        self.tokenizer = tokenizer
        self.torch = torch
        if threads is not None:
            torch.set_num_threads(threads)
        if device == "cuda" and not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no GPU found"
            raise CliError(
                param="device", reason=f"cuda: CUDA is not available ({why})",
                hint="use {device} cpu",
            )
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        if dtype == "bfloat16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            raise CliError(
                param="dtype", reason="bfloat16: this GPU does not support it",
                hint="use {dtype} float16",
            )
        self.model = load_model(info, self.dtype, self.device)
        self._plain_gpt2 = is_plain_gpt2(self.model.config)
        self._scratch = threading.local()

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        cache: Any = None,
        *,
        logits: LogitsWanted = "last",
        hidden_layer: int | None = None,
        use_cache: bool = True,
    ) -> ForwardResult:
        """One forward pass; see base.Backend.forward. The cache (a DynamicCache) is updated
        in place, so a cache must not be reused after being passed in."""
        torch = self.torch
        layer = self.info.hidden_state_index(hidden_layer)
        with torch.inference_mode():
            ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.device)
            mask = torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64))
            pos = torch.from_numpy(np.ascontiguousarray(position_ids, dtype=np.int64))
            scoring = not use_cache and cache is None and layer is None
            if scoring and isinstance(logits, int) and self._plain_gpt2:
                hidden_states = plain_forward(self.model, ids, mask, pos.to(self.device))
                rows = hidden_states[:, -logits:, :]
                weight = self.model.lm_head.weight
                out = self._scoring_logits((*rows.shape[:-1], weight.shape[0]))
                scores = torch.matmul(rows, weight.t(), out=out)
                return ForwardResult(logits=_to_numpy(scores), hidden=None, cache=None)
            out = self.model.transformer(
                input_ids=ids,
                attention_mask=mask.to(self.device),
                position_ids=pos.to(self.device),
                past_key_values=cache,
                use_cache=use_cache,
                output_hidden_states=layer is not None,
                return_dict=True,
            )
            hidden_states = out.last_hidden_state
            if logits == "all":
                scores = self.model.lm_head(hidden_states)
            elif logits == "last":
                scores = self.model.lm_head(hidden_states[:, -1, :])
            elif isinstance(logits, int):
                scores = self.model.lm_head(hidden_states[:, -logits:, :])
            else:
                scores = None
            hidden = out.hidden_states[layer] if layer is not None else None
            return ForwardResult(
                logits=_to_numpy(scores),
                hidden=_to_numpy(hidden),
                cache=out.past_key_values,
            )

    def _scoring_logits(self, shape: tuple[int, ...]) -> Any:
        """This thread's logits array for scoring passes, reused from pass to pass (a fresh
        1,024 x 50,257 array costs 200 MB of page faults every pass); None where the logits
        are converted anyway (not float32, or not on the CPU)."""
        torch = self.torch
        if self.device.type != "cpu" or self.dtype != torch.float32:
            return None
        size = math.prod(shape)
        buffer = getattr(self._scratch, "logits", None)
        if buffer is None or buffer.numel() < size:
            self._scratch.logits = buffer = None  # the old array goes before the new one comes
            buffer = self._scratch.logits = torch.empty(size, dtype=torch.float32)
        return buffer[:size].view(shape)

    def select_rows(self, cache: Any, rows: np.ndarray) -> Any:
        """The cache of batch `rows` (drop, reorder or repeat); see base.Backend.select_rows."""
        index = self.torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)
        with self.torch.inference_mode():
            cache.batch_select_indices(index)
        return cache

    def join_rows(self, parts: Sequence[tuple[Any, np.ndarray]], length: int) -> Any:
        """Caches stacked along the batch, right-aligned to `length` positions; see
        base.Backend.join_rows."""
        if not length:
            return None
        torch = self.torch
        _, transformers = import_torch()
        batch = sum(len(rows) for _, rows in parts)
        shape = (batch, self.info.n_head, length, self.info.n_embd // self.info.n_head)
        layers: list[tuple[Any, Any]] = []
        with torch.inference_mode():
            for layer in range(self.info.n_layer):
                joined = []
                for kind in range(2):
                    out = torch.empty(shape, dtype=self.model.dtype, device=self.device)
                    start = 0
                    for cache, rows in parts:
                        size = min(cache.get_seq_length(), length) if cache is not None else 0
                        out[start : start + len(rows), :, : length - size] = 0
                        if size:
                            stored = cache.layers[layer]
                            tensor = stored.keys if kind == 0 else stored.values
                            for offset, row in enumerate(np.asarray(rows).tolist()):
                                out[start + offset, :, length - size :] = tensor[row, :, -size:]
                        start += len(rows)
                    joined.append(out)
                layers.append((joined[0], joined[1]))
            return transformers.DynamicCache(layers)

    def release(self, cache: Any) -> None:
        """Nothing to do: torch's allocator reuses freed memory; see base.Backend.release."""

    def write_rows(self, cache: Any, slots: np.ndarray, source: Any, rows: np.ndarray) -> Any:
        """Rows `rows` of `source` into batch rows `slots` of `cache`, in place; see
        base.Backend.write_rows."""
        length = cache.get_seq_length()
        size = source.get_seq_length() if source is not None else 0
        if size > length:
            raise ValueError("write_rows: the source is longer than the cache")
        pairs = list(zip(np.asarray(slots).tolist(), np.asarray(rows).tolist(), strict=True))
        with self.torch.inference_mode():
            for layer in range(self.info.n_layer):
                target = cache.layers[layer]
                stored = source.layers[layer] if source is not None and size else None
                for kind in ("keys", "values"):
                    tensor = getattr(target, kind)
                    for slot, row in pairs:
                        tensor[slot, :, : length - size] = 0
                        if stored is not None:
                            tensor[slot, :, length - size :] = getattr(stored, kind)[row, :, -size:]
        return cache


def is_plain_gpt2(config: Any) -> bool:
    """Whether plain_forward computes this config's model: GPT-2's own attention scaling and
    its tanh GELU (checkpoints may name other activations or scalings)."""
    return (
        config.activation_function in TANH_GELU
        and config.scale_attn_weights
        and not config.scale_attn_by_inverse_layer_idx
        and not config.reorder_and_upcast_attn
        and not getattr(config, "add_cross_attention", False)
    )


def plain_forward(model: Any, ids: Any, mask: Any, positions: Any) -> Any:
    """GPT2LMHeadModel's hidden states after ln_f for a pass without a KV cache (scoring),
    as nanoGPT's model.py writes the forward: the same weights and operations, with the tanh
    GELU in torch's one kernel (transformers' gelu_new is five elementwise passes over the
    largest activations) and causal attention without a mask tensor when no row is padded;
    faster than transformers' forward on 1,024-token windows (bench/eval_forward.py), and
    within float32 rounding of it. Rows may be left-padded (mask 0): padded positions attend
    to themselves only, so they stay finite, and no real position attends to them."""
    import torch
    import torch.nn.functional as F

    transformer = model.transformer
    config = model.config
    batch, length = ids.shape
    width, heads = config.n_embd, config.n_head
    eps = config.layer_norm_epsilon
    attn_mask = None
    if not bool(mask.all()):
        real = mask.to(ids.device, torch.bool)[:, -length:]
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        diagonal = torch.eye(length, dtype=torch.bool, device=ids.device)
        attn_mask = (causal & real[:, None, :]) | diagonal
        attn_mask = attn_mask[:, None]  # one mask for every head

    def linear(x: Any, conv: Any) -> Any:  # transformers' Conv1D: x @ weight + bias
        flat = torch.addmm(conv.bias, x.reshape(-1, x.shape[-1]), conv.weight)
        return flat.view(batch, length, -1)

    x = transformer.wte(ids) + transformer.wpe(positions)
    for block in transformer.h:
        h = F.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, eps)
        q, k, v = (
            part.view(batch, length, heads, -1).transpose(1, 2)
            for part in linear(h, block.attn.c_attn).split(width, dim=2)
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None
        )
        x = x + linear(attended.transpose(1, 2).reshape(batch, length, width), block.attn.c_proj)
        h = F.layer_norm(x, (width,), block.ln_2.weight, block.ln_2.bias, eps)
        x = x + linear(F.gelu(linear(h, block.mlp.c_fc), approximate="tanh"), block.mlp.c_proj)
    return F.layer_norm(x, (width,), transformer.ln_f.weight, transformer.ln_f.bias, eps)


def _to_numpy(tensor: Any) -> np.ndarray | None:
    if tensor is None:
        return None
    return tensor.float().cpu().numpy()


def weights_error(exc: BaseException) -> str:
    """What went wrong reading a checkpoint, in one line.

    transformers and optimum wrap the real failure in retries (as text, then as a TensorFlow
    checkpoint) whose messages mislead ("set from_tf=True", "No module named 'tensorflow'"):
    the earliest exception of the chain is the one that tells.
    """
    chain = [exc]
    while (earlier := chain[-1].__cause__ or chain[-1].__context__) is not None:
        if any(earlier is seen for seen in chain):
            break
        chain.append(earlier)
    texts = [str(e).strip() for e in chain]
    for text in texts:
        if called := re.search(r"unsupported GLOBAL (\S+)", text, re.IGNORECASE):
            return (
                f"the pickle would call {called.group(1)}: refused (weights are loaded "
                "weights-only, never running a checkpoint's code)"
            )
    if any(type(e).__name__ == "UnpicklingError" for e in chain):
        return (
            "not a checkpoint that loads weights-only (damaged, truncated, or a pickle of "
            "other objects); refused"
        )
    first, text = chain[-1], texts[-1]
    return text.splitlines()[0] if text else type(first).__name__


def check_pickled_weights(directory: Path, config: dict[str, Any]) -> None:
    """The shapes in pytorch_model*.bin against config.json, before transformers builds (and
    randomly fills) a model from config.json's sizes. The weights are mapped, not read, and
    loaded weights-only: a pickle holding anything but tensors is refused here."""
    torch, _ = import_torch()
    files = sorted(directory.glob("pytorch_model*.bin"))
    shapes: dict[str, list[int]] = {}
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # The legacy (pre-zip) format cannot be mapped, only read.
                mmap = zipfile.is_zipfile(path)
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as exc:
            raise ModelError(
                f"{directory}: cannot load the weights: {path.name}: {weights_error(exc)}"
            ) from None
        if not isinstance(state, dict):
            raise ModelError(
                f"{directory}: cannot load the weights: {path.name} holds no tensor dictionary"
            )
        shapes.update({k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")})
        del state
    if files:
        name = files[0].name if len(files) == 1 else "pytorch_model.bin's shards"
        check_weight_shapes(directory, config, name, shapes)


def load_model(info: ModelInfo, dtype: Any, device: Any) -> Any:
    """GPT2LMHeadModel from safetensors (or weights-only pickle), checked for missing weights."""
    torch, transformers = import_torch()
    directory = info.model_dir
    if adapter_base(directory) is not None:
        return _load_adapter(info, dtype, device)
    use_safetensors = any(directory.glob("model*.safetensors"))
    if not use_safetensors:
        check_pickled_weights(directory, read_config(directory))
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, loading = transformers.GPT2LMHeadModel.from_pretrained(
                directory,
                dtype=dtype,
                use_safetensors=use_safetensors,
                trust_remote_code=False,
                local_files_only=True,
                output_loading_info=True,
            )
    except Exception as exc:  # safetensors, pickle and config errors have many types
        raise ModelError(f"{directory}: cannot load the weights: {weights_error(exc)}") from None
    missing = [k for k in loading["missing_keys"] if not k.endswith(_OPTIONAL_KEYS)]
    if missing:
        raise ModelError(
            f"{directory}: the weights lack {len(missing)} tensors (e.g. {missing[0]}): "
            "incomplete or not a GPT-2 checkpoint"
        )
    model.eval()
    model.requires_grad_(False)
    return model.to(device)



def _load_adapter(info: ModelInfo, dtype: Any, device: Any) -> Any:
    """A LoRA adapter directory: its base model (a Hub id or a directory) loaded, checked
    against the adapter's config.json, and the adapter merged into it (PEFT), so that decoding
    runs at the base model's speed."""
    from dataclasses import replace

    from gpt2cli.model_files import check_torch_weights, resolve_model_dir

    directory = info.model_dir
    base = adapter_base(directory)
    assert base is not None
    try:
        from peft import PeftModel
    except ImportError:
        raise MissingExtraError("a LoRA adapter directory", "train") from None
    base_dir = resolve_model_dir(base, ["*.json", "*.safetensors", "*.txt"])
    if adapter_base(base_dir) is not None:
        raise ModelError(f"{directory}: its base model {base} is an adapter too")
    check_torch_weights(base_dir, read_config(directory))
    model = load_model(replace(info, model_dir=base_dir), dtype, device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adapted = PeftModel.from_pretrained(model, directory, is_trainable=False)
            merged = adapted.merge_and_unload()
    except Exception as exc:
        raise ModelError(f"{directory}: cannot apply the LoRA adapter: {weights_error(exc)}") \
            from None
    merged.eval()
    merged.requires_grad_(False)
    return merged
