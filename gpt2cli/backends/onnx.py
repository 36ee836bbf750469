"""The ONNX Runtime backend: onnxruntime, numpy and tokenizers only (never torch).

It runs a `text-generation-with-past` decoder as exported by optimum (model.onnx). Exports made
by `gpt2cli export-onnx` add two things that plain optimum exports lack, both optional here:
`hidden_states.{i}` outputs (for `embed`) and a `logits_to_keep` input with a default of 0 (all
positions), so that a prefill can skip the vocabulary projection except at the last position.
The KV cache stays in ONNX Runtime's OrtValues between steps (fed back with
run_with_ort_values on CPU, IO binding on CUDA), so no copy of it crosses into numpy on the hot
path.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from gpt2cli.backends.base import ForwardResult, LogitsWanted, ModelInfo
from gpt2cli.errors import CliError, ModelError
from gpt2cli.tokenizer import Tokenizer

ONNX_FILE = "model.onnx"
KEEP_INPUT = "logits_to_keep"
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise CliError(
            "onnxruntime is not importable; it is a core dependency: reinstall gpt2cli"
        ) from None
    return onnxruntime


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OnnxCache:
    """The KV cache between steps: one OrtValue per past key/value, in input order."""

    __slots__ = ("values", "length")

    def __init__(self, values: list[Any], length: int) -> None:
        self.values = values
        self.length = length


class OnnxBackend:
    """An exported GPT-2 decoder with KV cache on ONNX Runtime (CPU or CUDA)."""

    name = "onnx"

    def __init__(
        self,
        info: ModelInfo,
        tokenizer: Tokenizer,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
    ) -> None:
        ort = import_onnxruntime()
        self.ort = ort
        self.info = info
        self.tokenizer = tokenizer
        self.device = device
        path = info.model_dir / ONNX_FILE

        options = ort.SessionOptions()
        options.log_severity_level = 3  # the overridable logits_to_keep default is intended
        # As for torch (see backends/torch.py): no spinning unless OMP_WAIT_POLICY=ACTIVE.
        spin = os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE"
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise CliError(
                    "--device cuda: this onnxruntime has no CUDA support "
                    "(install onnxruntime-gpu), or use --device cpu"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile, ... all mean a bad file
            raise ModelError(f"{path}: cannot load the ONNX model: {first_line(exc)}") from None

        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self.past_names = [
            f"past_key_values.{layer}.{kind}"
            for layer in range(info.n_layer)
            for kind in ("key", "value")
        ]
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        required = ["input_ids", "attention_mask", *self.past_names]
        missing = [n for n in required if n not in inputs]
        missing += [n for n in ["logits", *self.present_names] if n not in outputs]
        if missing:
            raise ModelError(
                f"{path}: not a GPT-2 text-generation-with-past export matching config.json "
                f"(no {missing[0]}); re-export with `gpt2cli export-onnx`"
            )
        self.has_position_ids = "position_ids" in inputs
        self.has_keep = KEEP_INPUT in {i.name for i in self.session.get_overridable_initializers()}
        self.hidden_outputs = {o for o in outputs if o.startswith("hidden_states.")}

        past = inputs[self.past_names[0]]
        self.cache_dtype = _NUMPY_TYPES.get(past.type)
        if self.cache_dtype is None:
            raise ModelError(f"{path}: unsupported cache type {past.type}")
        model_dtype = "float16" if self.cache_dtype == np.float16 else "float32"
        if dtype not in ("float32", model_dtype):
            raise CliError(
                f"--dtype {dtype}: the ONNX backend runs the export's own precision "
                f"({model_dtype}); re-export the model in that precision, or use --backend torch"
            )
        n_head, head_dim = past.shape[1], past.shape[3]
        self.n_head = n_head if isinstance(n_head, int) else info.n_head
        self.head_dim = head_dim if isinstance(head_dim, int) else info.n_embd // info.n_head
        self.output_device = "cuda" if device == "cuda" else "cpu"

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        cache: Any = None,
        *,
        logits: LogitsWanted = "last",
        hidden_layer: int | None = None,
    ) -> ForwardResult:
        """One forward pass; see base.Backend.forward."""
        from gpt2cli.loader import check_hidden_layer

        layer = check_hidden_layer(self.info, hidden_layer)
        hidden_name = None
        if layer is not None:
            hidden_name = f"hidden_states.{layer}"
            if hidden_name not in self.hidden_outputs:
                raise ModelError(
                    f"{self.info.model_dir}: this ONNX export has no hidden-state outputs; "
                    "re-export it with `gpt2cli export-onnx`, or use --backend torch"
                )
        batch, new_tokens = input_ids.shape
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
        }
        if self.has_position_ids:
            feeds["position_ids"] = np.ascontiguousarray(position_ids, dtype=np.int64)
        if self.has_keep:
            keep = logits if isinstance(logits, int) else 0 if logits == "all" else 1
            feeds[KEEP_INPUT] = np.array([keep], dtype=np.int64)
        if cache is None:
            empty = np.zeros((batch, self.n_head, 0, self.head_dim), dtype=self.cache_dtype)
            past = [self.ort.OrtValue.ortvalue_from_numpy(empty)] * len(self.past_names)
        else:
            past = cache.values
        wanted = ["logits", *self.present_names] + ([hidden_name] if hidden_name else [])
        if self.device == "cuda":
            values = self._run_bound(feeds, past, wanted)
        else:
            ort_value = self.ort.OrtValue.ortvalue_from_numpy
            inputs = {name: ort_value(array) for name, array in feeds.items()}
            inputs.update(zip(self.past_names, past, strict=True))
            values = self.session.run_with_ort_values(wanted, inputs)

        scores = None
        if logits != "none":
            scores = values[0].numpy()
            if logits == "last":
                scores = scores[:, -1]
            elif isinstance(logits, int):
                scores = scores[:, -logits:]  # without logits_to_keep, all came back
            scores = scores.astype(np.float32, copy=False)
        presents = values[1 : 1 + len(self.present_names)]
        hidden = values[-1].numpy().astype(np.float32, copy=False) if hidden_name else None
        length = (cache.length if cache is not None else 0) + new_tokens
        return ForwardResult(logits=scores, hidden=hidden, cache=OnnxCache(presents, length))

    def _run_bound(self, feeds: dict[str, np.ndarray], past: list[Any], wanted: list[str]) -> list:
        """Run with IO binding, the cache staying on the GPU (overridable initializers such as
        logits_to_keep cannot be bound, so all logits come back)."""
        binding = self.session.io_binding()
        for name, array in feeds.items():
            if name != KEEP_INPUT:
                binding.bind_cpu_input(name, array)
        for name, value in zip(self.past_names, past, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name in wanted:
            binding.bind_output(name, "cpu" if name == "logits" else self.output_device)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()

    def select_cache(self, cache: OnnxCache, rows: np.ndarray) -> OnnxCache:
        """The cache restricted (or repeated) to batch `rows`, e.g. to drop finished rows."""
        rows = np.asarray(rows, dtype=np.int64)
        values = [
            self.ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(value.numpy()[rows]), self.output_device
            )
            for value in cache.values
        ]
        return OnnxCache(values, cache.length)
