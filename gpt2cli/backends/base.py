"""The interface every backend implements; the commands and decoding.py use only this."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from gpt2cli.model_info import ModelInfo  # also importable from here, beside Backend
from gpt2cli.tokenizer import Tokenizer

LogitsWanted = Literal["all", "last", "none"] | int  # int n: the last n positions


@dataclass
class ForwardResult:
    """One forward pass. Arrays are float32 numpy arrays."""

    logits: np.ndarray | None  # (B, T, V) "all", (B, n, V) n, (B, V) "last", None "none"
    hidden: np.ndarray | None  # (B, T, C): hidden_states[hidden_layer], when asked for
    cache: Any  # opaque KV cache: pass it back to the next forward() call


class Backend(Protocol):
    """A loaded model that can run forward passes with a KV cache."""

    name: str  # "torch" or "onnx"
    info: ModelInfo
    tokenizer: Tokenizer

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
        """Run the model on new tokens.

        input_ids: int64 (B, T), the new tokens only.
        attention_mask: int64 (B, past + T), 0 at left padding; covers cached and new tokens.
        position_ids: int64 (B, T); the caller derives them from the mask (cumsum - 1, clamped).
        cache: None for the first call, else the previous result's cache.
        logits: "last" returns only the final position's logits (skips the vocabulary
            projection elsewhere where the backend can); an int n returns the last n
            positions' logits, (B, n, V), projecting only those (scoring); "none" skips it.
        hidden_layer: index into transformers' hidden_states tuple (0 = embeddings,
            n_layer or -1 = last_hidden_state after ln_f); None for no hidden states.
        use_cache: False when no later call extends this pass (scoring): the result's cache
            may be None, the backend may take a faster path that keeps none, and the logits
            array may be scratch that the same thread's next such call overwrites.
        """
        ...

    def select_rows(self, cache: Any, rows: np.ndarray) -> Any:
        """The cache of batch `rows` (int indices: drop, reorder or repeat rows); the
        argument may be consumed (the torch cache is changed in place)."""
        ...

    def join_rows(self, parts: Sequence[tuple[Any, np.ndarray]], length: int) -> Any:
        """One cache of `length` positions holding, in order, rows `rows` of each part's
        cache (None: rows with nothing cached). Each part is right-aligned: left-padded with
        zeros, or its oldest positions dropped (the caller's mask must cover them all)."""
        ...

    def write_rows(self, cache: Any, slots: np.ndarray, source: Any, rows: np.ndarray) -> Any:
        """`cache` with its batch rows `slots` replaced by rows `rows` of `source` (None: rows
        with nothing cached), right-aligned to the cache's length and zero-filled to the left;
        `source` is no longer than `cache`. Changes `cache` in place where the backend can
        (a row joins the batch without a copy of the others), and returns the cache to use."""
        ...

    def release(self, cache: Any) -> None:
        """The caller will not use `cache` (nor any cache a later step made from it) again:
        the backend may reuse its memory for later caches. Calling it is optional."""
        ...


def position_ids_from_mask(attention_mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Position ids of the last `new_tokens` positions, counting only unmasked tokens."""
    positions = np.cumsum(attention_mask, axis=1) - 1
    positions = np.maximum(positions, 0)
    return positions[:, -new_tokens:].astype(np.int64)
