"""Text features from a GPT-2 model's hidden states, pooled per text.

By default the features are GPT2Model's `last_hidden_state` (after the final layer norm), as the
model card shows; `layer` picks any entry of transformers' `hidden_states` instead (0 is the
embedding output). Only numpy here: the engine runs on either backend through `Backend.forward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gpt2cli.backends.base import Backend
from gpt2cli.errors import InputError
from gpt2cli.tokenizer import encode_limited

DEFAULT_BATCH_SIZE = 16
MAX_BATCH_TOKENS = 16384  # padded tokens in one forward pass


POOLINGS = ("mean", "last", "first", "none")


TRUNCATIONS = ("none", "left", "right")  # which end of an over-long text is dropped


@dataclass
class Embedded:
    """The features of one text."""

    index: int
    token_count: int  # tokens fed to the model (after truncation)
    text_tokens: int  # tokens in the text (past the context and without truncation, a lower bound)
    vector: np.ndarray  # (C,), or (tokens, C) with pooling none

    @property
    def truncated_tokens(self) -> int:
        """Tokens dropped by truncation (0 when none)."""
        return self.text_tokens - self.token_count


@dataclass(frozen=True)
class EmbedOptions:
    layer: int | None = None  # None: last_hidden_state
    pooling: str = "mean"  # one of POOLINGS
    normalize: bool = False
    truncate: str = "none"  # one of TRUNCATIONS: none refuses a text longer than the context
    batch_size: int = DEFAULT_BATCH_SIZE


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray | list[np.ndarray]:
    """Pool hidden states (B, T, C) under an attention mask (B, T) of right-padded rows.

    mean averages the unmasked tokens only; last takes the last unmasked token; first the first;
    none returns each row's unmasked token vectors.
    """
    lengths = mask.sum(axis=1).astype(np.int64)
    if pooling == "mean":
        weights = mask.astype(np.float64)[:, :, None]
        return ((hidden * weights).sum(axis=1) / lengths[:, None]).astype(np.float32)
    if pooling == "last":
        return hidden[np.arange(len(hidden)), lengths - 1]
    if pooling == "first":
        return hidden[:, 0]
    if pooling == "none":
        return [hidden[row, : lengths[row]] for row in range(len(hidden))]
    raise InputError(
        param="pooling", reason=f"expected one of {', '.join(POOLINGS)}, got {pooling!r}"
    )


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Scale each vector (last axis) to unit length; zero vectors stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


@dataclass
class Encoded:
    """A text's token ids, cut to the model's context when truncation was asked for."""

    ids: list[int]
    text_tokens: int


def encode_texts(
    backend: Backend, texts: Sequence[str], sources: Sequence[str], truncate: str = "none"
) -> list[Encoded]:
    """Tokenize `texts`. A text longer than the context is an InputError under truncate "none";
    "right" keeps its first tokens, "left" its last ones. A refused text is encoded only as far
    as the context needs (in chunks that encode exactly as the whole), so a long one costs no
    more than its first chunks; a truncated one is counted to the end."""
    if truncate not in TRUNCATIONS:
        raise InputError(
            param="truncate",
            reason=f"expected one of {', '.join(TRUNCATIONS)}, got {truncate!r}",
        )
    context = backend.info.n_positions
    tokenizer = backend.tokenizer
    keep = {"none": "count", "right": "head", "left": "tail"}[truncate]
    encoded = []
    for text, source in zip(texts, sources, strict=True):
        limited = encode_limited(tokenizer, text, context, keep, source)
        if not limited.total:
            raise InputError(
                reason="the model's tokenizer gives no tokens for this text "
                "(it is not empty: the tokenizer drops all of it)",
                where=source,
            )
        if limited.total > context and truncate == "none":
            raise InputError(
                reason=f"{limited.count} tokens, more than the model's context of {context}",
                hint="pass {truncate} right to keep the first tokens, or {truncate} left to "
                "keep the last",
                where=source,
            )
        total = limited.total
        if not limited.exact:  # the head stopped early: count the tokens it drops
            total = encode_limited(tokenizer, text, 0, "tail", source).total
        encoded.append(Encoded(limited.ids, total))
    return encoded


def embed_encoded(
    backend: Backend,
    encoded: Sequence[Encoded],
    options: EmbedOptions,
    first_index: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[Embedded]:
    """Features of encoded texts, in order; batched by length to keep padding small.
    `progress(n)` is called after each forward pass with the n tokens it embedded."""
    info = backend.info
    layer = info.hidden_state_index(info.n_layer if options.layer is None else options.layer)
    vectors: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids), reverse=True)
    start = 0
    while start < len(order):
        width = len(encoded[order[start]].ids)
        size = max(1, min(options.batch_size, MAX_BATCH_TOKENS // width))
        rows = order[start : start + size]
        start += size
        input_ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, i in enumerate(rows):
            input_ids[row, : len(encoded[i].ids)] = encoded[i].ids
            mask[row, : len(encoded[i].ids)] = 1
        # Right padding: causal attention keeps real tokens blind to the pads after them.
        positions = np.repeat(np.arange(width, dtype=np.int64)[None, :], len(rows), axis=0)
        hidden = backend.forward(
            input_ids, mask, positions, logits="none", hidden_layer=layer
        ).hidden
        assert hidden is not None
        pooled = pool(hidden, mask, options.pooling)
        for row, i in enumerate(rows):
            vector = np.asarray(pooled[row], dtype=np.float32)
            vectors[i] = l2_normalize(vector) if options.normalize else vector
        if progress is not None:
            progress(int(mask.sum()))
    return [
        Embedded(first_index + i, len(item.ids), item.text_tokens, vector)
        for i, (item, vector) in enumerate(zip(encoded, vectors, strict=True))
    ]


def embed_texts(backend: Backend, texts: Sequence[str], options: EmbedOptions) -> list[Embedded]:
    """Features of `texts`, in order."""
    sources = [f"text {i}" for i in range(len(texts))]
    return embed_encoded(backend, encode_texts(backend, texts, sources, options.truncate), options)
