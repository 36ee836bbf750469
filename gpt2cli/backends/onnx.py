"""The ONNX Runtime backend: onnxruntime, numpy and tokenizers only (never torch).

It runs a `text-generation-with-past` decoder as exported by optimum (model.onnx). Exports made
by `gpt2cli export-onnx` add two things that plain optimum exports lack, both optional here:
`hidden_states.{i}` outputs (for `embed`) and a `logits_to_keep` input with a default of 0 (all
positions), so that a prefill can skip the vocabulary projection except at the last position.
The KV cache stays in ONNX Runtime's OrtValues between steps (fed back with
run_with_ort_values on CPU, IO binding on CUDA), so no copy of it crosses into numpy on the hot
path. With export-onnx's fused graph (`SHARED_CACHE_KEY`), the cache lives in preallocated
buffers with room to grow, bound as both past and present, so a step appends in place instead
of copying the whole cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from gpt2cli.backends.base import ForwardResult, LogitsWanted
from gpt2cli.backends.onnx_format import (
    EMBEDDING_TABLES,
    HIDDEN_PREFIX,
    KEEP_INPUT,
    LOGITS_OUTPUT,
    ONNX_MODEL,
    PAST_KEY,
    ROW_LENGTHS_KEY,
    SHARED_CACHE_KEY,
    dtype_error,
    hidden_name,
    past_name,
    present_name,
)
from gpt2cli.errors import CliError, ModelError
from gpt2cli.model_info import ModelInfo
from gpt2cli.tokenizer import Tokenizer

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def import_onnxruntime() -> Any:
    """onnxruntime, with its own logging silenced (errors come back as exceptions) unless
    --debug: its default logger colours lines and writes them straight to stderr."""
    try:
        with _stderr_silenced():
            # The import itself may log (a telemetry device id that cannot be saved when HOME is
            # not writable) before any severity can be set.
            import onnxruntime
    except ImportError:
        raise CliError(
            "onnxruntime is not importable; it is a core dependency: reinstall gpt2cli"
        ) from None
    onnxruntime.set_default_logger_severity(log_severity())
    return onnxruntime


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a while (not under --debug)."""
    from gpt2cli.outputs import Settings

    if Settings.debug or "onnxruntime" in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def log_severity() -> int:
    """ONNX Runtime's minimum log level: 4 (fatal only) normally, since its errors also come
    back as exceptions, which gpt2cli reports as one line; 2 (warnings) with --debug."""
    from gpt2cli.outputs import Settings

    return 2 if Settings.debug else 4


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OnnxCache:
    """The KV cache between steps: one OrtValue per past key/value, in input order, each
    (batch, heads, capacity, head_dim) with the first `length` positions in use (capacity ==
    length unless the graph appends in place). Rows are right-aligned (each ends at `length`)
    unless `left`: then row b's keys and values sit at [0, lengths[b]). `lengths`: each row's
    real tokens, where known. `buffers`: the numpy arrays behind the values when this backend
    allocated them (join_rows), which `release` hands back to its pool."""

    __slots__ = ("values", "length", "buffers", "lengths", "left")

    def __init__(
        self,
        values: list[Any],
        length: int,
        buffers: list[np.ndarray] | None = None,
        lengths: np.ndarray | None = None,
        left: bool = False,
    ) -> None:
        self.values = values
        self.length = length
        self.buffers = buffers
        self.lengths = lengths
        self.left = left

    def span(self, row: int, limit: int) -> tuple[int, int]:
        """Where row `row`'s last (at most `limit`) real positions are stored: (start, end)."""
        real = int(self.lengths[row]) if self.lengths is not None else self.length
        end = real if self.left else self.length
        return end - min(real, limit), end


class BufferPool:
    """Arrays of released caches, for the next join_rows to fill. A server rebuilds its batch
    cache whenever the batch grows, and fresh memory costs a page fault every 4 KB: for 16
    rows of GPT-2's cache, 0.3-0.6 s before the first token here (0.05 s reused). Holds at most
    `limit` arrays (the largest kept); a spare array serves a cache of at least half its size
    (a one-row cache does not take the memory the next whole batch needs)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._spare: list[np.ndarray] = []

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised array of `shape`: the smallest spare one that fits, else new."""
        need = int(np.prod(shape))
        fits = [
            i for i, a in enumerate(self._spare) if a.dtype == dtype and need <= a.size <= 2 * need
        ]
        if not fits:
            return np.empty(shape, dtype=dtype)
        spare = self._spare.pop(min(fits, key=lambda i: self._spare[i].size))
        return spare.reshape(-1)[:need].reshape(shape)

    def give(self, arrays: list[np.ndarray]) -> None:
        """Arrays that nothing will read or write again."""
        for array in arrays:
            self._spare.append(array if array.base is None else array.base)
        self._spare.sort(key=lambda a: a.size, reverse=True)
        del self._spare[self.limit :]

    @property
    def spare(self) -> int:
        """Arrays held."""
        return len(self._spare)


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
        path = info.model_dir / ONNX_MODEL

        check_tables(path, info)
        options = ort.SessionOptions()
        # Also hides the warning about the overridable logits_to_keep default, which is intended.
        options.log_severity_level = log_severity()
        # As for torch (see backends/torch.py): no spinning unless OMP_WAIT_POLICY=ACTIVE.
        spin = os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE"
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise CliError(
                    param="device", reason="cuda: this onnxruntime has no CUDA support",
                    hint="install onnxruntime-gpu, or use {device} cpu",
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile, ... all mean a bad file
            raise ModelError(f"{path}: cannot load the ONNX model: {first_line(exc)}") from None

        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        layers = check_graph(path, info, inputs, outputs)
        cache = [(layer, kind) for layer in range(layers) for kind in ("key", "value")]
        self.past_names = [past_name(layer, kind) for layer, kind in cache]
        self.pool = BufferPool(2 * len(self.past_names))  # two batch caches
        self.present_names = [present_name(layer, kind) for layer, kind in cache]
        self.has_position_ids = "position_ids" in inputs
        self.has_keep = KEEP_INPUT in {i.name for i in self.session.get_overridable_initializers()}
        self.hidden_outputs = {o for o in outputs if o.startswith(HIDDEN_PREFIX)}
        metadata = self.session.get_modelmeta().custom_metadata_map
        # CUDA keeps the plain path: its GroupQueryAttention kernels take float16 only.
        self.shared_cache = metadata.get(SHARED_CACHE_KEY) == "1" and device == "cpu"
        # Joined caches hold rows left-aligned, so a step reads no row's padding.
        self.left_aligned = self.shared_cache and metadata.get(ROW_LENGTHS_KEY) == "1"

        past = inputs[self.past_names[0]]
        self.cache_dtype = _NUMPY_TYPES[past.type]
        model_dtype = "float16" if self.cache_dtype == np.float16 else "float32"
        if dtype not in ("float32", model_dtype):
            raise dtype_error(dtype, model_dtype)
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
        use_cache: bool = True,  # the graph returns its cache either way
    ) -> ForwardResult:
        """One forward pass; see base.Backend.forward."""
        layer = self.info.hidden_state_index(hidden_layer)
        wanted_hidden = None
        if layer is not None:
            wanted_hidden = hidden_name(layer)
            if wanted_hidden not in self.hidden_outputs:
                raise ModelError(
                    where=str(self.info.model_dir),
                    reason="this ONNX export has no hidden-state outputs",
                    hint="re-export it with `gpt2cli export-onnx`, or use {backend} torch",
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
        if cache is not None and self.shared_cache:
            if new_tokens > 1 and batch > 1:  # the attention kernel appends 1 token per row
                return self._forward_token_by_token(
                    input_ids, attention_mask, position_ids, cache, logits, hidden_layer
                )
            return self._forward_in_place(feeds, cache, new_tokens, logits, wanted_hidden)
        if cache is None:
            empty = np.zeros((batch, self.n_head, 0, self.head_dim), dtype=self.cache_dtype)
            past = [self.ort.OrtValue.ortvalue_from_numpy(empty)] * len(self.past_names)
        else:
            past = cache.values
        wanted = [LOGITS_OUTPUT, *self.present_names] + ([wanted_hidden] if wanted_hidden else [])
        try:
            if self.device == "cuda":
                values = self._run_bound(feeds, past, wanted)
            else:
                ort_value = self.ort.OrtValue.ortvalue_from_numpy
                inputs = {name: ort_value(array) for name, array in feeds.items()}
                inputs.update(zip(self.past_names, past, strict=True))
                values = self.session.run_with_ort_values(wanted, inputs)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # onnxruntime's errors have no common base class
            raise self._failure(exc) from None

        presents = values[1 : 1 + len(self.present_names)]
        hidden = values[-1].numpy().astype(np.float32, copy=False) if wanted_hidden else None
        length = (cache.length if cache is not None else 0) + new_tokens
        # A prompt's rows are right-aligned; their real tokens tell a join what to keep.
        lengths = feeds["attention_mask"].sum(axis=1) if cache is None else None
        return ForwardResult(
            logits=_kept_logits(values[0], logits), hidden=hidden,
            cache=OnnxCache(presents, length, lengths=lengths),
        )

    def _failure(self, exc: Exception) -> Exception:
        if not type(exc).__module__.startswith("onnxruntime"):
            return exc
        return ModelError(
            f"{self.info.model_dir / ONNX_MODEL}: onnxruntime failed: {first_line(exc)}"
        )

    def _forward_in_place(
        self,
        feeds: dict[str, np.ndarray],
        cache: OnnxCache,
        new_tokens: int,
        logits: LogitsWanted,
        wanted_hidden: str | None,
    ) -> ForwardResult:
        """A step of the fused graph on a cache it appends to in place (IO binding: each past
        buffer is also its present). logits_to_keep cannot be bound, so every new position's
        logits come back; steps here are one token a row, or one row's continuation."""
        length = cache.length + new_tokens
        cache = self._reserve(cache, length)
        mask = feeds["attention_mask"]
        if cache.left:  # the caller's right-aligned mask, each row's 1s moved to its start
            feeds = {**feeds, "attention_mask": np.ascontiguousarray(mask[:, ::-1])}
        binding = self.session.io_binding()
        for name, array in feeds.items():
            if name != KEEP_INPUT:
                binding.bind_cpu_input(name, array)
        for past, present, value in zip(
            self.past_names, self.present_names, cache.values, strict=True
        ):
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        binding.bind_output(LOGITS_OUTPUT)
        if wanted_hidden:
            binding.bind_output(wanted_hidden)
        try:
            self.session.run_with_iobinding(binding)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self._failure(exc) from None
        outputs = binding.get_outputs()
        presents = len(self.present_names)
        hidden = None
        if wanted_hidden:
            hidden = outputs[presents + 1].numpy().astype(np.float32, copy=False)
        return ForwardResult(
            logits=_kept_logits(outputs[presents], logits), hidden=hidden,
            cache=OnnxCache(cache.values, length, cache.buffers, mask.sum(axis=1), cache.left),
        )

    def _forward_token_by_token(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        cache: OnnxCache,
        logits: LogitsWanted,
        hidden_layer: int | None,
    ) -> ForwardResult:
        """Several new tokens on several cached rows, one position at a time."""
        new_tokens = input_ids.shape[1]
        start = attention_mask.shape[1] - new_tokens
        steps = []
        for i in range(new_tokens):
            step = self.forward(
                input_ids[:, i : i + 1], attention_mask[:, : start + i + 1],
                position_ids[:, i : i + 1], cache, logits="all" if logits != "none" else "none",
                hidden_layer=hidden_layer,
            )
            cache = step.cache
            steps.append(step)
        scores = None
        if logits != "none":
            scores = np.concatenate([step.logits for step in steps], axis=1)
            scores = scores[:, -1] if logits == "last" else scores
            scores = scores[:, -logits:] if isinstance(logits, int) else scores
        hidden = None
        if hidden_layer is not None:
            hidden = np.concatenate([step.hidden for step in steps], axis=1)
        return ForwardResult(logits=scores, hidden=hidden, cache=cache)

    def _capacity(self, length: int) -> int:
        """Positions to allocate for a cache about to hold `length`: room for some growth
        (a copy each time it runs out), never past the model's context unless already there."""
        room = max(64, length // 4)
        capacity = -(-(length + room) // 64) * 64
        return max(length, min(capacity, self.info.n_positions))

    def _reserve(self, cache: OnnxCache, length: int) -> OnnxCache:
        """`cache`, or a copy of it with room for `length` positions."""
        if cache.values[0].shape()[2] >= length:
            return cache
        rows = np.arange(cache.values[0].shape()[0], dtype=np.int64)
        joined = self.join_rows([(cache, rows)], cache.length, room_for=length)
        assert joined is not None
        self.release(cache)
        return joined

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
            binding.bind_output(name, "cpu" if name == LOGITS_OUTPUT else self.output_device)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()

    def select_rows(self, cache: OnnxCache, rows: np.ndarray) -> OnnxCache:
        """The cache of batch `rows` (drop, reorder or repeat); see base.Backend.select_rows."""
        return self.join_rows([(cache, rows)], cache.length)

    def join_rows(
        self,
        parts: Sequence[tuple[OnnxCache | None, np.ndarray]],
        length: int,
        room_for: int | None = None,
    ) -> OnnxCache | None:
        """Caches stacked along the batch, right-aligned to `length` positions; see
        base.Backend.join_rows. One copy of the kept rows (through numpy). A cache appended
        to in place gets room for `room_for` positions (default: the next step's). With a
        graph that reads each row up to its own length, rows are stored left-aligned instead
        (real tokens only, known from the prompts' masks), and nothing is zero-filled."""
        if not length:
            return None
        batch = sum(len(rows) for _, rows in parts)
        capacity = self._capacity(room_for or length + 1) if self.shared_cache else length
        shape = (batch, self.n_head, capacity, self.head_dim)
        values, buffers = [], []
        on_cpu = self.output_device == "cpu"
        for slot in range(len(self.past_names)):
            joined = self.pool.take(shape, self.cache_dtype) if on_cpu else np.empty(
                shape, dtype=self.cache_dtype
            )
            start = 0
            for cache, rows in parts:
                stored = self._host_view(cache.values[slot]) if cache is not None else None
                for offset, row in enumerate(np.asarray(rows).tolist()):  # one copy per row
                    _place_row(joined, start + offset, cache, stored, row, length,
                               self.left_aligned)  # fmt: skip
                start += len(rows)
            values.append(self.ort.OrtValue.ortvalue_from_numpy(joined, self.output_device))
            if on_cpu:  # the OrtValue wraps this memory (on CUDA it holds a copy)
                buffers.append(joined)
        lengths = None
        if self.left_aligned:
            lengths = np.array(
                [_kept(cache, row, length) for cache, rows in parts for row in np.asarray(rows)],
                dtype=np.int64,
            )
        return OnnxCache(values, length, buffers or None, lengths, self.left_aligned)

    def release(self, cache: OnnxCache | None) -> None:
        """The caller is done with `cache`: memory this backend allocated for it goes to the
        pool for later caches; see base.Backend.release."""
        if cache is not None and cache.buffers:
            self.pool.give(cache.buffers)
            cache.buffers = None

    def write_rows(
        self, cache: OnnxCache, slots: np.ndarray, source: OnnxCache | None, rows: np.ndarray
    ) -> OnnxCache:
        """Rows `rows` of `source` into batch rows `slots` of `cache`; see
        base.Backend.write_rows. In place on CPU (the other rows are not copied); on CUDA,
        one join."""
        slots, rows = np.asarray(slots).tolist(), np.asarray(rows).tolist()
        length = cache.length
        size = source.length if source is not None else 0
        if size > length:
            raise ValueError("write_rows: the source is longer than the cache")
        if self.output_device != "cpu":
            return self._write_by_joining(cache, slots, source, rows)
        if not size:
            source = None
        for index, value in enumerate(cache.values):
            target = _writable_view(value, self.cache_dtype)
            stored = self._host_view(source.values[index]) if source is not None else None
            for slot, row in zip(slots, rows, strict=True):
                _place_row(target, slot, source, stored, row, length, cache.left)
        if cache.lengths is not None:
            for slot, row in zip(slots, rows, strict=True):
                cache.lengths[slot] = _kept(source, row, length)
        return cache

    def _write_by_joining(
        self, cache: OnnxCache, slots: list[int], source: OnnxCache | None, rows: list[int]
    ) -> OnnxCache:
        replaced = dict(zip(slots, rows, strict=True))
        parts: list[tuple[OnnxCache | None, list[int]]] = []
        for slot in range(cache.values[0].shape()[0]):
            owner, row = (source, replaced[slot]) if slot in replaced else (cache, slot)
            if parts and parts[-1][0] is owner:
                parts[-1][1].append(row)
            else:
                parts.append((owner, [row]))
        arrays = [(owner, np.asarray(r, dtype=np.int64)) for owner, r in parts]
        joined = self.join_rows(arrays, cache.length)
        assert joined is not None
        return joined

    def _host_view(self, value: Any) -> np.ndarray:
        """An OrtValue's data as numpy: a view on CPU, a copy from the GPU."""
        if self.output_device == "cpu":
            return np.from_dlpack(value)
        return value.numpy()


def _place_row(
    target: np.ndarray,
    slot: int,
    source: OnnxCache | None,
    stored: np.ndarray | None,
    row: int,
    length: int,
    left: bool,
) -> None:
    """Row `row` of `source` (`stored`: its host view) into batch row `slot` of `target`, a
    cache of `length` positions: its real tokens at [0, n) when `left` (nothing reads past
    them), else right-aligned to `length` with zeros before them."""
    kept = _kept(source, row, length)
    at = 0 if left else length - kept
    if not left:
        target[slot, :, :at] = 0
    if kept:
        first, end = source.span(row, length)
        target[slot, :, at : at + kept] = stored[row, :, first:end]


def _kept(cache: OnnxCache | None, row: int, limit: int) -> int:
    """How many positions of row `row` of `cache` a join or write keeps (at most `limit`)."""
    if cache is None:
        return 0
    first, end = cache.span(int(row), limit)
    return end - first


def _kept_logits(value: Any, logits: LogitsWanted) -> np.ndarray | None:
    """The logits asked for, from the graph's (B, kept, V) output."""
    if logits == "none":
        return None
    scores = value.numpy()
    if logits == "last":
        scores = scores[:, -1]
    elif isinstance(logits, int):
        scores = scores[:, -logits:]  # without logits_to_keep, all came back
    return scores.astype(np.float32, copy=False)


def _writable_view(value: Any, dtype: Any) -> np.ndarray:
    """A writable numpy view of a CPU OrtValue's buffer (np.from_dlpack's views are read-only).
    Valid while `value` lives; the scheduler writes a joining row's cache through it."""
    shape = tuple(value.shape())
    count = int(np.prod(shape))
    buffer = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(value.data_ptr())
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def inconsistent(path: Path, what: str) -> ModelError:
    return ModelError(
        f"{path.parent}: the model is inconsistent: {what}; fix config.json or re-export the model"
    )


def check_tables(path: Path, info: ModelInfo) -> None:
    """The embedding tables in model.onnx against config.json, read before any weight is:
    model.onnx's inputs say nothing of the context length. int4 exports store the tables as
    `<name>_Q4` (rows unchanged); an index past their end is not even an error there."""
    tables = EMBEDDING_TABLES
    dims = initializer_dims(path, {*tables, *(f"{name}_Q4" for name in tables)})
    checks = (
        (tables[0], info.vocab_size, f"vocab_size {info.vocab_size}", "token"),
        (tables[1], info.n_positions, f"n_positions {info.n_positions}", "position"),
    )
    for name, rows, says, what in checks:
        table, quantized = dims.get(name), dims.get(f"{name}_Q4")
        if table and table != [rows, info.n_embd]:
            raise inconsistent(
                path, f"config.json says {says} and n_embd {info.n_embd}, "
                f"but model.onnx's {what} table is {'x'.join(map(str, table))}"
            )
        if quantized and quantized[0] != rows:
            raise inconsistent(
                path, f"config.json says {says}, but model.onnx's {what} table has "
                f"{quantized[0]} rows"
            )


def check_graph(
    path: Path, info: ModelInfo, inputs: dict[str, Any], outputs: dict[str, Any]
) -> int:
    """The session's inputs and outputs against config.json; returns the number of layers."""
    layers = {int(m.group(1)) for name in inputs if (m := PAST_KEY.fullmatch(name))}
    required = ["input_ids", "attention_mask", past_name(0, "key")]
    missing = [n for n in required if n not in inputs]
    missing += [n for n in [LOGITS_OUTPUT] if n not in outputs]
    if missing:
        raise ModelError(
            f"{path}: not a GPT-2 text-generation-with-past export (no {missing[0]}); "
            "re-export with `gpt2cli export-onnx`"
        )
    if len(layers) != info.n_layer:
        raise inconsistent(
            path, f"config.json says n_layer {info.n_layer}, but model.onnx has {len(layers)}"
        )
    for name in ("input_ids", "attention_mask", "position_ids"):
        if name in inputs and inputs[name].type != "tensor(int64)":
            raise ModelError(
                f"{path}: input {name} is {inputs[name].type}, expected tensor(int64): "
                "not an export gpt2cli can run; re-export with `gpt2cli export-onnx`"
            )
    kinds = ("key", "value")
    names = [past_name(i, k) for i in range(info.n_layer) for k in kinds]
    names += [present_name(i, k) for i in range(info.n_layer) for k in kinds]
    first = inputs[past_name(0, "key")].type
    head_dim = info.n_embd // info.n_head
    for name in names:
        value = inputs.get(name) or outputs.get(name)
        if value is None:
            raise ModelError(
                f"{path}: not a GPT-2 text-generation-with-past export (no {name}); "
                "re-export with `gpt2cli export-onnx`"
            )
        if value.type not in _NUMPY_TYPES or value.type != first:
            raise ModelError(
                f"{path}: {name} is {value.type}, expected tensor(float) or tensor(float16) "
                "like every other cache tensor: not an export gpt2cli can run"
            )
        shape = value.shape
        if len(shape) != 4:
            raise ModelError(f"{path}: {name} has {len(shape)} dimensions, expected 4")
        expected = ((shape[1], info.n_head, "n_head"), (shape[3], head_dim, "n_embd / n_head"))
        for size, want, what in expected:
            if isinstance(size, int) and size != want:
                raise inconsistent(
                    path, f"config.json gives {what} = {want}, but model.onnx's {name} has {size}"
                )
    logits = outputs[LOGITS_OUTPUT].shape
    if logits and isinstance(logits[-1], int) and logits[-1] != info.vocab_size:
        raise inconsistent(
            path, f"config.json says vocab_size {info.vocab_size}, but model.onnx's logits have "
            f"{logits[-1]}"
        )
    for name, value in outputs.items():
        width = value.shape[-1] if value.shape else None
        if name.startswith(HIDDEN_PREFIX) and isinstance(width, int) and width != info.n_embd:
            raise inconsistent(
                path, f"config.json says n_embd {info.n_embd}, but model.onnx's {name} has {width}"
            )
    return len(layers)


# A minimal protobuf reader: the shapes of a few initializers of an ONNX file, without the
# onnx package (not a core dependency) and without reading any tensor data.


def _varint(f: IO[bytes]) -> int:
    result = shift = 0
    while True:
        byte = f.read(1)
        if not byte or shift > 63:
            raise ValueError("bad varint")
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7


def _fields(f: IO[bytes], end: int) -> Any:
    """(field number, wire type, value) of a message ending at `end`: varints as ints,
    length-delimited fields as (start, length) with the file at start (skipped afterwards)."""
    while f.tell() < end:
        key = _varint(f)
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        elif wire == 2:
            length = _varint(f)
            start = f.tell()
            if start + length > end:
                raise ValueError("field past its message")
            yield number, wire, (start, length)
            f.seek(start + length)
        else:
            raise ValueError(f"wire type {wire}")


def _packed_varints(data: bytes) -> list[int]:
    values, result, shift = [], 0, 0
    for byte in data:
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            values.append(result)
            result = shift = 0
    return values


def initializer_dims(path: Path, names: set[str]) -> dict[str, list[int]]:
    """The dims of the initializers `names` in ONNX file `path` (ModelProto.graph = 7,
    GraphProto.initializer = 5, TensorProto.dims = 1 and name = 8); those not found, or any
    file the reader cannot follow, are left out: onnxruntime then judges the file."""
    found: dict[str, list[int]] = {}
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            for number, wire, value in _fields(f, size):
                if number != 7 or wire != 2:
                    continue
                graph_end = value[0] + value[1]
                for field, kind, tensor in _fields(f, graph_end):
                    if field != 5 or kind != 2:
                        continue
                    dims: list[int] = []
                    name = None
                    for item, item_kind, item_value in _fields(f, tensor[0] + tensor[1]):
                        if item == 1 and item_kind == 0:
                            dims.append(item_value)
                        elif item == 1 and item_kind == 2:
                            dims.extend(_packed_varints(f.read(item_value[1])))
                        elif item == 8 and item_kind == 2 and item_value[1] < 4096:
                            name = f.read(item_value[1]).decode("utf-8", "replace")
                    if name in names:
                        found[name] = dims
                    if len(found) == len(names):
                        return found
                return found
    except (OSError, ValueError):
        return {}
    return found
