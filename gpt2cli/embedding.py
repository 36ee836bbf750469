"""Text features from a GPT-2 model's hidden states, pooled per text.

By default the features are GPT2Model's `last_hidden_state` (after the final layer norm), as the
model card shows; `layer` picks any entry of transformers' `hidden_states` instead (0 is the
embedding output). Only numpy here: the engine runs on either backend through `Backend.forward`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpt2cli.backends.base import Backend
from gpt2cli.errors import InputError
from gpt2cli.tokenizer import encode_limited

DEFAULT_BATCH_SIZE = 16
MAX_BATCH_TOKENS = 16384  # padded tokens in one forward pass


POOLINGS = ("mean", "last", "first", "none")


@dataclass
class Embedded:
    """The features of one text."""

    index: int
    tokens: int  # tokens fed to the model (after truncation)
    text_tokens: int  # tokens in the text (past the context, a lower bound: encoding stops)
    vector: np.ndarray  # (C,), or (tokens, C) with pooling none

    @property
    def truncated(self) -> bool:
        return self.tokens < self.text_tokens


@dataclass(frozen=True)
class EmbedOptions:
    layer: int | None = None  # None: last_hidden_state
    pooling: str = "mean"  # one of POOLINGS
    normalize: bool = False
    truncate: bool = False
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
    backend: Backend, texts: Sequence[str], sources: Sequence[str], truncate: bool
) -> list[Encoded]:
    """Tokenize `texts`; a text longer than the context is an InputError unless `truncate`,
    which keeps its first tokens. A text is encoded only up to the context (in chunks that
    encode exactly as the whole), so a long one costs no more than its first chunks."""
    context = backend.info.n_positions
    encoded = []
    for text, source in zip(texts, sources, strict=True):
        limited = encode_limited(
            backend.tokenizer, text, context, "head" if truncate else "count", source
        )
        if not limited.total:
            raise InputError(
                reason="the model's tokenizer gives no tokens for this text "
                "(it is not empty: the tokenizer drops all of it)",
                where=source,
            )
        if limited.total > context and not truncate:
            raise InputError(
                reason=f"{limited.count} tokens, more than the model's context of {context}",
                hint="pass {truncate} to keep the first tokens",
                where=source,
            )
        encoded.append(Encoded(limited.ids[:context], limited.total))
    return encoded


def embed_encoded(
    backend: Backend, encoded: Sequence[Encoded], options: EmbedOptions, first_index: int = 0
) -> list[Embedded]:
    """Features of encoded texts, in order; batched by length to keep padding small."""
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
    return [
        Embedded(first_index + i, len(item.ids), item.text_tokens, vector)
        for i, (item, vector) in enumerate(zip(encoded, vectors, strict=True))
    ]


def embed_texts(backend: Backend, texts: Sequence[str], options: EmbedOptions) -> list[Embedded]:
    """Features of `texts`, in order."""
    sources = [f"text {i}" for i in range(len(texts))]
    return embed_encoded(backend, encode_texts(backend, texts, sources, options.truncate), options)
