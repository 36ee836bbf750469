"""Logits processors, sampling and the decode loop, in numpy, shared by both backends.

Parameters follow transformers' text-generation names and semantics. The processors give the same
filtered distributions as transformers' LogitsProcessor/LogitsWarper classes on the same logits;
they differ only where transformers looks at a left-padded batch as a whole: here lengths, n-grams
and repetition penalties are per row, counting real tokens only (identical for unpadded prompts).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpt2cli.errors import InputError, plain_name
from gpt2cli.generation_params import GenerationParams, check_logit_bias
from gpt2cli.tokenizer import Limited, Tokenizer, encode_limited

FINISH_LENGTH = "length"
FINISH_STOP = "stop"


# ---------------------------------------------------------------------------------------------
# Logits processors (in place on float32 (B, V) logits)
# ---------------------------------------------------------------------------------------------


def apply_repetition_penalty(logits: np.ndarray, history: np.ndarray, penalty: float) -> None:
    """transformers' RepetitionPenaltyLogitsProcessor: every token in `history` (B, n) is made
    less likely once (logit / penalty if positive, * penalty if negative).

    float32 as transformers does; a row where that overflows (a penalty near 0 makes a seen
    logit +inf) is redone in float64 and shifted by its maximum, which leaves its softmax and
    argmax unchanged, so the likeliest seen token stays ahead of the others instead of tying
    with them at +inf.
    """
    seen = np.take_along_axis(logits, history, axis=1)
    with np.errstate(all="ignore"):
        penalty32 = np.float32(penalty)
        penalised = np.where(seen < 0, seen * penalty32, seen / penalty32)
    broken = np.isnan(penalised) | np.isposinf(penalised)
    np.put_along_axis(logits, history, penalised, axis=1)
    for row in np.flatnonzero(broken.any(axis=1)):
        logits[row] = _penalised_row64(logits[row], seen[row], history[row], penalty)


def _penalised_row64(row: np.ndarray, seen: np.ndarray, history: np.ndarray, penalty: float):
    """One row's repetition penalty in float64, shifted so that its maximum is 0."""
    values = row.astype(np.float64)
    seen64 = seen.astype(np.float64)
    with np.errstate(all="ignore"):
        penalised = np.where(seen64 < 0, seen64 * penalty, seen64 / penalty)
        if np.isposinf(penalised).any():
            # Over float64's range: the largest seen logit beats every other token by more than
            # exp can tell apart, so the distribution is one-hot there (ties share it).
            best = seen64[np.isposinf(penalised)].max()
            values[:] = -np.inf
            values[history[seen64 == best]] = 0.0
            return values.astype(np.float32)
        values[history] = penalised
        values -= values.max()
        return values.astype(np.float32)  # far below the maximum becomes -inf: probability 0


class NGramIndex:
    """The n-grams of one row, kept incrementally, for no_repeat_ngram_size."""

    def __init__(self, size: int, tokens: Sequence[int]) -> None:
        self.size = size
        self.next_tokens: dict[tuple[int, ...], set[int]] = {}
        self.tokens: list[int] = []
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        self.tokens.append(token)
        if len(self.tokens) >= self.size:
            ngram = self.tokens[-self.size :]
            self.next_tokens.setdefault(tuple(ngram[:-1]), set()).add(ngram[-1])

    def banned(self) -> list[int]:
        """Tokens that would repeat an n-gram if generated next (transformers' semantics)."""
        if len(self.tokens) + 1 < self.size:
            return []
        prefix = tuple(self.tokens[len(self.tokens) + 1 - self.size :])
        return list(self.next_tokens.get(prefix, ()))

    def copy(self) -> NGramIndex:
        twin = NGramIndex(self.size, ())
        twin.tokens = list(self.tokens)
        twin.next_tokens = {prefix: set(ends) for prefix, ends in self.next_tokens.items()}
        return twin


def suppress_tokens(logits: np.ndarray, rows: np.ndarray, token_ids: Sequence[int]) -> None:
    """Set `token_ids` to -inf in the rows selected by the boolean `rows` (min-length rules)."""
    if len(token_ids) and rows.any():
        logits[np.ix_(rows, np.asarray(token_ids))] = -np.inf


def row_indices(keep: np.ndarray | Sequence[int], rows: int) -> np.ndarray:
    """Row indices from a boolean mask over `rows` rows, or from indices."""
    keep = np.asarray(keep)
    if keep.dtype == np.bool_:
        if keep.shape != (rows,):
            raise ValueError(f"a row mask needs {rows} entries, got shape {keep.shape}")
        return np.flatnonzero(keep)
    return keep.astype(np.int64, copy=False).reshape(-1)


class LogitsProcessor:
    """A logits processor in transformers' style, keeping per-row state incrementally for a
    batch whose rows may join and leave between steps.

    Row r of every call is row r of the batch. `__call__(logits, rows)` edits float32 (B, V)
    logits in place (`rows`, a bool mask, may limit per-row work to the rows still decoding);
    `append(tokens)` records the (B,) tokens chosen at a step; `add_rows(prompts)` appends rows
    from their unpadded, non-empty prompt ids; `keep_rows(keep)` keeps only the given rows, in
    the given order (a bool mask, or indices: an index given twice forks the row).
    """

    @classmethod
    def from_params(cls, params: GenerationParams, capacity: int = 0) -> LogitsProcessor | None:
        """The processor for `params`, or None when it would change nothing."""
        raise NotImplementedError

    def __call__(self, logits: np.ndarray, rows: np.ndarray | None = None) -> None:
        raise NotImplementedError

    def append(self, tokens: np.ndarray) -> None:
        raise NotImplementedError

    def add_rows(self, prompts: Sequence[Sequence[int]]) -> None:
        raise NotImplementedError

    def keep_rows(self, keep: np.ndarray | Sequence[int]) -> None:
        raise NotImplementedError


class RepetitionPenaltyProcessor(LogitsProcessor):
    """transformers' RepetitionPenaltyLogitsProcessor over each row's prompt and new tokens.

    The rows' tokens are right-aligned in one (B, width) array, so one gather serves the batch;
    a shorter row repeats its first token on the left, which adds nothing to its penalised set.
    """

    def __init__(self, penalty: float, capacity: int = 0) -> None:
        self.penalty = penalty
        self.tokens = np.empty((0, max(capacity, 16)), dtype=np.int64)
        self.width = 0  # columns in use
        self.lengths = np.empty(0, dtype=np.int64)  # real tokens per row

    @classmethod
    def from_params(
        cls, params: GenerationParams, capacity: int = 0
    ) -> RepetitionPenaltyProcessor | None:
        if params.repetition_penalty == 1.0:
            return None
        return cls(params.repetition_penalty, capacity)

    def __call__(self, logits: np.ndarray, rows: np.ndarray | None = None) -> None:
        apply_repetition_penalty(logits, self.tokens[:, : self.width], self.penalty)

    def append(self, tokens: np.ndarray) -> None:
        if self.width == self.tokens.shape[1]:
            grown = np.empty((self.tokens.shape[0], max(2 * self.width, 16)), dtype=np.int64)
            grown[:, : self.width] = self.tokens
            self.tokens = grown
        self.tokens[:, self.width] = tokens
        self.width += 1
        self.lengths += 1

    def add_rows(self, prompts: Sequence[Sequence[int]]) -> None:
        if not prompts:
            return
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        if lengths.min() < 1:
            raise ValueError("a row needs at least one prompt token")
        old_rows, old_width = self.tokens.shape[0], self.width
        width = max(old_width, int(lengths.max()))
        tokens = np.empty((old_rows + len(prompts), max(self.tokens.shape[1], 2 * width)), np.int64)
        shift = width - old_width
        tokens[:old_rows, shift:width] = self.tokens[:, :old_width]
        if shift and old_rows:
            tokens[:old_rows, :shift] = self.tokens[:, :1]
        for row, prompt in enumerate(prompts, start=old_rows):
            tokens[row, : width - len(prompt)] = prompt[0]
            tokens[row, width - len(prompt) : width] = prompt
        self.tokens, self.width = tokens, width
        self.lengths = np.concatenate([self.lengths, lengths])

    def keep_rows(self, keep: np.ndarray | Sequence[int]) -> None:
        index = row_indices(keep, self.tokens.shape[0])
        self.lengths = self.lengths[index]
        width = int(self.lengths.max()) if index.size else 0
        # Columns left of the longest remaining row hold padding only.
        self.tokens = self.tokens[index][:, self.width - width :]
        self.width = width


class LogitBiasProcessor(LogitsProcessor):
    """OpenAI's logit_bias: a fixed bias added to given tokens' logits, before anything else."""

    def __init__(self, bias: Sequence[tuple[int, float]]) -> None:
        self.pairs = tuple(bias)
        self.ids = np.array([token for token, _ in bias], dtype=np.int64)
        self.bias = np.array([value for _, value in bias], dtype=np.float32)
        self.top = int(self.ids.max()) if self.ids.size else -1

    @classmethod
    def from_params(cls, params: GenerationParams, capacity: int = 0) -> LogitBiasProcessor | None:
        return cls(params.logit_bias) if params.logit_bias else None

    def __call__(self, logits: np.ndarray, rows: np.ndarray | None = None) -> None:
        if self.top >= logits.shape[1]:  # GenerationParams.resolve checks it with a vocab size
            check_logit_bias(self.pairs, logits.shape[1])
        logits[:, self.ids] += self.bias

    def append(self, tokens: np.ndarray) -> None:
        pass

    def add_rows(self, prompts: Sequence[Sequence[int]]) -> None:
        pass

    def keep_rows(self, keep: np.ndarray | Sequence[int]) -> None:
        pass


class TokenCounts:
    """How often each token was generated in one row, kept incrementally."""

    __slots__ = ("slot", "ids", "counts")

    def __init__(self) -> None:
        self.slot: dict[int, int] = {}  # token -> its index in ids and counts
        self.ids = np.empty(0, dtype=np.int64)
        self.counts = np.empty(0, dtype=np.int64)

    def add(self, token: int) -> None:
        at = self.slot.get(token)
        if at is not None:
            self.counts[at] += 1
            return
        at = self.slot[token] = len(self.slot)
        if at == self.ids.shape[0]:
            size = max(2 * at, 16)
            self.ids = np.resize(self.ids, size)
            self.counts = np.resize(self.counts, size)
        self.ids[at], self.counts[at] = token, 1

    def copy(self) -> TokenCounts:
        twin = TokenCounts()
        twin.slot = dict(self.slot)
        twin.ids, twin.counts = self.ids.copy(), self.counts.copy()
        return twin


class PresenceFrequencyPenaltyProcessor(LogitsProcessor):
    """OpenAI's (and vLLM's) presence and frequency penalties, over each row's generated tokens
    only: logits[t] -= presence_penalty * (count[t] > 0) + frequency_penalty * count[t]."""

    def __init__(self, presence: float, frequency: float) -> None:
        self.presence = presence
        self.frequency = frequency
        self.rows: list[TokenCounts] = []

    @classmethod
    def from_params(
        cls, params: GenerationParams, capacity: int = 0
    ) -> PresenceFrequencyPenaltyProcessor | None:
        if params.presence_penalty == 0.0 and params.frequency_penalty == 0.0:
            return None
        return cls(params.presence_penalty, params.frequency_penalty)

    def __call__(self, logits: np.ndarray, rows: np.ndarray | None = None) -> None:
        for row in range(len(self.rows)) if rows is None else np.flatnonzero(rows):
            counts = self.rows[row]
            used = len(counts.slot)
            if not used:
                continue
            ids = counts.ids[:used]
            penalty = self.presence + self.frequency * counts.counts[:used]  # float64
            logits[row, ids] = logits[row, ids] - penalty

    def append(self, tokens: np.ndarray) -> None:
        for counts, token in zip(self.rows, tokens.tolist(), strict=True):
            counts.add(token)

    def add_rows(self, prompts: Sequence[Sequence[int]]) -> None:
        self.rows += [TokenCounts() for _ in prompts]  # the prompt does not count (OpenAI)

    def keep_rows(self, keep: np.ndarray | Sequence[int]) -> None:
        kept: list[TokenCounts] = []
        taken: set[int] = set()
        for row in row_indices(keep, len(self.rows)).tolist():
            kept.append(self.rows[row].copy() if row in taken else self.rows[row])
            taken.add(row)
        self.rows = kept


class NoRepeatNGramProcessor(LogitsProcessor):
    """transformers' NoRepeatNGramLogitsProcessor, with each row's n-grams kept as they grow."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: list[NGramIndex] = []

    @classmethod
    def from_params(
        cls, params: GenerationParams, capacity: int = 0
    ) -> NoRepeatNGramProcessor | None:
        return cls(params.no_repeat_ngram_size) if params.no_repeat_ngram_size > 0 else None

    def __call__(self, logits: np.ndarray, rows: np.ndarray | None = None) -> None:
        for row in range(len(self.rows)) if rows is None else np.flatnonzero(rows):
            banned = self.rows[row].banned()
            if banned:
                logits[row, banned] = -np.inf

    def append(self, tokens: np.ndarray) -> None:
        for index, token in zip(self.rows, tokens.tolist(), strict=True):
            index.add(token)

    def add_rows(self, prompts: Sequence[Sequence[int]]) -> None:
        self.rows += [NGramIndex(self.size, prompt) for prompt in prompts]

    def keep_rows(self, keep: np.ndarray | Sequence[int]) -> None:
        kept: list[NGramIndex] = []
        taken: set[int] = set()
        for row in row_indices(keep, len(self.rows)).tolist():
            kept.append(self.rows[row].copy() if row in taken else self.rows[row])
            taken.add(row)
        self.rows = kept


class _EndSuppressor(LogitsProcessor):
    """End-of-sequence tokens suppressed in rows whose count is still under `minimum`."""

    counts_prompt = True  # count prompt tokens too (else only new ones)

    def __init__(self, minimum: int, eos_token_ids: Sequence[int]) -> None:
        self.minimum = minimum
        self.eos = list(eos_token_ids)
        self.counts = np.empty(0, dtype=np.int64)

    def __call__(self, logits: np.ndarray, rows: np.ndarray | None = None) -> None:
        short = self.counts < self.minimum
        suppress_tokens(logits, short if rows is None else short & rows, self.eos)

    def append(self, tokens: np.ndarray) -> None:
        self.counts += 1

    def add_rows(self, prompts: Sequence[Sequence[int]]) -> None:
        counts = [len(p) if self.counts_prompt else 0 for p in prompts]
        self.counts = np.concatenate([self.counts, np.array(counts, dtype=np.int64)])

    def keep_rows(self, keep: np.ndarray | Sequence[int]) -> None:
        self.counts = self.counts[row_indices(keep, self.counts.shape[0])]


class MinLengthProcessor(_EndSuppressor):
    """transformers' MinLengthLogitsProcessor: no end of sequence before min_length tokens
    (prompt included)."""

    @classmethod
    def from_params(cls, params: GenerationParams, capacity: int = 0) -> MinLengthProcessor | None:
        if not params.eos_token_ids or params.min_length <= 0:
            return None
        return cls(params.min_length, params.eos_token_ids)


class MinNewTokensProcessor(_EndSuppressor):
    """transformers' MinNewTokensLengthLogitsProcessor: no end of sequence before
    min_new_tokens new tokens."""

    counts_prompt = False

    @classmethod
    def from_params(
        cls, params: GenerationParams, capacity: int = 0
    ) -> MinNewTokensProcessor | None:
        if not params.eos_token_ids or not params.min_new_tokens:
            return None
        return cls(params.min_new_tokens, params.eos_token_ids)


# The processors, in the order transformers' generate() applies them; the token bias first (as
# transformers' sequence_bias), OpenAI's penalties after the repetition penalty (as vLLM).
PROCESSORS: tuple[type[LogitsProcessor], ...] = (
    LogitBiasProcessor,
    RepetitionPenaltyProcessor,
    PresenceFrequencyPenaltyProcessor,
    NoRepeatNGramProcessor,
    MinLengthProcessor,
    MinNewTokensProcessor,
)


class BatchProcessors:
    """The logits processors of one batch (those `params` need, in transformers' order), with
    the same interface as each processor: rows are the unpadded prompts, and rows may be
    added and dropped between steps."""

    def __init__(
        self, params: GenerationParams, prompts: Sequence[Sequence[int]] = (), steps: int = 0
    ) -> None:
        capacity = max((len(p) for p in prompts), default=0) + steps
        self.processors: list[LogitsProcessor] = []
        for kind in PROCESSORS:
            processor = kind.from_params(params, capacity)
            if processor is not None:
                self.processors.append(processor)
        self.add_rows(prompts)

    @property
    def active(self) -> bool:
        """Whether any processor changes logits (else greedy can argmax the raw logits)."""
        return bool(self.processors)

    def __call__(self, logits: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Process (B, V) float32 `logits` in place; `rows` (bool) limits per-row work."""
        for processor in self.processors:
            processor(logits, rows)

    def append(self, tokens: np.ndarray) -> None:
        """Record the tokens (B,) chosen at this step."""
        for processor in self.processors:
            processor.append(tokens)

    def add_rows(self, prompts: Sequence[Sequence[int]]) -> None:
        """New rows at the end of the batch, from their prompt ids."""
        for processor in self.processors:
            processor.add_rows(prompts)

    def keep_rows(self, keep: np.ndarray | Sequence[int]) -> None:
        """Keep these rows only, in this order (a bool mask, or row indices)."""
        for processor in self.processors:
            processor.keep_rows(keep)


# ---------------------------------------------------------------------------------------------
# Warpers and sampling (per row)
# ---------------------------------------------------------------------------------------------

_SAMPLE_STRIDE = 16


def top_k_ids(scores: np.ndarray, k: int) -> np.ndarray | None:
    """Ids (ascending) of the tokens whose score is at least the k-th largest; None for all.

    Ties at the k-th score are kept, as in transformers' TopKLogitsWarper. A full partition of
    50k scores costs ~0.5 ms, so a threshold from a strided sample narrows the candidates first;
    the result is exact either way.
    """
    size = scores.shape[0]
    if k >= size:
        return None
    sample = scores[::_SAMPLE_STRIDE]
    rank = min(sample.shape[0] - 1, k // (_SAMPLE_STRIDE // 2) + 4)
    threshold = np.partition(sample, sample.shape[0] - 1 - rank)[sample.shape[0] - 1 - rank]
    candidates = np.flatnonzero(scores >= threshold)
    if candidates.shape[0] < k:  # the sample was unlucky: select on everything
        candidates = np.arange(size)
    values = scores[candidates]
    kth = np.partition(values, values.shape[0] - k)[values.shape[0] - k]
    return candidates[values >= kth]


def softmax64(values: np.ndarray) -> np.ndarray:
    """Softmax in float64 (exp of -inf is 0). A row with no finite maximum (+inf logits, or
    every token suppressed) gives the +inf tokens, or all tokens, equal shares instead of NaN."""
    top = float(values.max())
    if not np.isfinite(top):
        winners = values == np.inf
        if not winners.any():
            winners = np.ones(values.shape[0], dtype=bool)
        return winners / float(winners.sum())
    shifted = values.astype(np.float64) - top
    probs = np.exp(shifted)
    probs /= probs.sum()
    return probs


def top_p_keep(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Boolean mask of the nucleus over `probs` (which sum to 1), as TopPLogitsWarper does:
    sort ascending, drop tokens whose cumulative probability is <= 1 - top_p, keep the top one."""
    floor = 1.0 - top_p
    # Tokens outside any set whose mass reaches top_p are dropped for sure: sort only the rest.
    threshold = float(probs.max()) * 1e-3
    while True:
        candidates = np.flatnonzero(probs >= threshold)
        outside = 1.0 - float(probs[candidates].sum())
        if outside <= floor or threshold == 0.0:
            break
        threshold = threshold / 64 if threshold > 1e-300 else 0.0
    cand_probs = probs[candidates]
    order = np.argsort(cand_probs, kind="stable")
    cumulative = outside + np.cumsum(cand_probs[order])
    remove = cumulative <= floor
    remove[-1] = False
    keep = np.zeros(probs.shape[0], dtype=bool)
    keep[candidates[order[~remove]]] = True
    return keep


def apply_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    """`scores / temperature`: in float32 as transformers does while that stays finite; else in
    float64 after shifting the maximum to 0, so nothing overflows. A temperature near 0 then
    makes the row one-hot on its argmax (sampling it is greedy decoding), and a huge or
    infinite one flattens it towards uniform; suppressed (-inf) tokens stay suppressed."""
    with np.errstate(all="ignore"):
        scaled = scores / np.float32(temperature)
        if np.isfinite(scaled.max()):
            return scaled
        top = scores.max()
        if not np.isfinite(top):
            return scores  # no finite logit: softmax64 says what that means
        shifted = scores.astype(np.float64) - np.float64(top)
        shifted /= temperature  # <= 0 over > 0: never +inf or NaN, except -inf / inf
    shifted[np.isneginf(scores)] = -np.inf
    return shifted


def filtered_distribution(
    scores: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> tuple[np.ndarray | None, np.ndarray]:
    """Temperature, then top-k, then top-p, as transformers' warpers apply them.

    Returns (ids, probs): the kept token ids ascending (None means the whole vocabulary, in
    order) and their probabilities (float64, summing to 1). `scores` may be modified in place.
    """
    if temperature != 1.0:
        scores = apply_temperature(scores, temperature)
    ids = top_k_ids(scores, top_k) if top_k > 0 else None
    probs = softmax64(scores if ids is None else scores[ids])
    if top_p < 1.0:
        ids, probs = _kept(ids, probs, top_p_keep(probs, top_p))
    return ids, probs


def cut_distribution(
    ids: np.ndarray | None, probs: np.ndarray, min_p: float | None, typical_p: float = 1.0
) -> tuple[np.ndarray | None, np.ndarray]:
    """min-p, then typical-p, on a filtered distribution (ids and probs as
    filtered_distribution returns them): transformers applies these warpers after top-p."""
    if min_p is not None:
        ids, probs = _kept(ids, probs, min_p_keep(probs, min_p))
    if typical_p < 1.0:
        ids, probs = _kept(ids, probs, typical_keep(probs, typical_p))
    return ids, probs


def params_distribution(
    scores: np.ndarray, params: GenerationParams
) -> tuple[np.ndarray | None, np.ndarray]:
    """The distribution `params`' warpers leave of `scores` (which may be modified in place),
    in transformers' order: temperature, top-k, top-p, min-p, typical-p."""
    ids, probs = filtered_distribution(scores, params.temperature, params.top_k, params.top_p)
    return cut_distribution(ids, probs, params.min_p, params.typical_p)


def _kept(
    ids: np.ndarray | None, probs: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ids and renormalised probabilities where the boolean `keep` holds."""
    ids = np.flatnonzero(keep) if ids is None else ids[keep]
    probs = probs[keep]
    return ids, probs / probs.sum()


def min_p_keep(probs: np.ndarray, min_p: float) -> np.ndarray:
    """Boolean mask of the tokens at least `min_p` times as likely as the likeliest, as
    MinPLogitsWarper keeps them (the likeliest always stays)."""
    keep = probs >= min_p * probs.max()
    keep[int(np.argmax(probs))] = True
    return keep


def typical_keep(probs: np.ndarray, mass: float) -> np.ndarray:
    """Boolean mask of typical sampling's set, as TypicalLogitsWarper builds it: tokens ordered
    by how far their surprise (-log p) is from the entropy; the nearest kept until their mass
    reaches `mass`, with every token as near as the last one kept."""
    with np.errstate(divide="ignore"):
        log_probs = np.log(probs)
    entropy = -float(np.sum(probs[probs > 0] * log_probs[probs > 0]))
    distance = np.abs(-log_probs - entropy)  # +inf where p is 0
    order = np.argsort(distance, kind="stable")
    cumulative = np.cumsum(probs[order])
    last = min(int(np.count_nonzero(cumulative < mass)), probs.shape[0] - 1)
    keep = distance <= distance[order[last]]
    keep[order[0]] = True
    return keep


def sample_token(ids: np.ndarray | None, probs: np.ndarray, uniform: float) -> int:
    """Inverse-CDF sampling over token ids in ascending order.

    Id order (not probability order) keeps the draw stable under tiny float differences between
    backends: only a uniform landing within that difference of a boundary changes the token.
    """
    cdf = np.cumsum(probs)
    index = min(int(np.searchsorted(cdf, uniform * cdf[-1], side="right")), cdf.shape[0] - 1)
    return index if ids is None else int(ids[index])


def row_generator(seed: int, prompt_index: int, sequence_index: int) -> np.random.Generator:
    """The random stream of one output sequence: independent of batch size and composition."""
    return np.random.default_rng([seed, prompt_index, sequence_index])


def fresh_seed() -> int:
    """A random 63-bit seed, for runs without --seed."""
    return int(np.random.SeedSequence().generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


# ---------------------------------------------------------------------------------------------
# Sequences: one output each, with stop strings and incremental UTF-8 text
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """One input prompt."""

    text: str
    source: str = "prompt"


@dataclass
class GeneratedSequence:
    """One output sequence: its prompt, the generated tokens and text, and why it ended."""

    prompt_index: int
    sequence_index: int
    prompt: Prompt
    prompt_ids: list[int]  # as fed to the model (after any left truncation)
    truncated_tokens: int  # prompt tokens dropped from the left
    budget: int  # max new tokens
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_string: str | None = None  # the stop string that ended it, if any
    _bytes: bytearray = field(default_factory=bytearray, repr=False)
    _cut: int | None = field(default=None, repr=False)  # byte offset where a stop string starts
    _emitted: int = field(default=0, repr=False)
    _decoder: Any = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        """The generated text: no end-of-text token, cut before any stop string."""
        return bytes(self._bytes[: self._cut]).decode("utf-8", errors="replace")

    def add(self, token: int, token_bytes: bytes | None, stops: Sequence[bytes]) -> None:
        """Append a generated token (`token_bytes` None for an end-of-sequence token)."""
        self.token_ids.append(token)
        if token_bytes is None:
            self.finish_reason = FINISH_STOP
            return
        start = len(self._bytes)
        self._bytes += token_bytes
        if stops:
            self._find_stop(start, stops)
        if self.finish_reason is None and len(self.token_ids) >= self.budget:
            self.finish_reason = FINISH_LENGTH

    def _find_stop(self, start: int, stops: Sequence[bytes]) -> None:
        best = None
        for stop in stops:
            # Earlier occurrences were caught on earlier tokens: look only where one can end now.
            at = self._bytes.find(stop, max(0, start - len(stop) + 1))
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        if best is not None:
            self._cut = best[0]
            self.stop_string = best[1].decode("utf-8", errors="replace")
            self.finish_reason = FINISH_STOP

    def take_text(self, stops: Sequence[bytes] = ()) -> str:
        """Text generated since the last call that is final: never half a UTF-8 character, and
        never the start of what may become a stop string."""
        if self._decoder is None:
            self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        end = len(self._bytes) if self._cut is None else self._cut
        if not self.finished:
            end -= _stop_prefix_overlap(self._bytes, stops)
        if end <= self._emitted and not self.finished:
            return ""
        chunk = bytes(self._bytes[self._emitted : end])
        self._emitted = max(self._emitted, end)
        return self._decoder.decode(chunk, final=self.finished)


def _stop_prefix_overlap(data: bytearray, stops: Sequence[bytes]) -> int:
    """The length of the longest tail of `data` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(data)), longest, -1):
            if data.endswith(stop[:size]):
                longest = size
                break
    return longest


def check_context(params: GenerationParams, context: int, name: Callable[[str], str]) -> None:
    """An explicit total length must fit the model's context."""
    if params.max_new_tokens is None and params.max_length > context:
        raise InputError(
            f"{name('max_length')} {params.max_length} is over the model's context "
            f"of {context} tokens"
        )


def encode_prompt(
    tokenizer: Tokenizer, prompt: Prompt, params: GenerationParams, context: int
) -> Limited:
    """A prompt's ids, encoded only as far as the context needs: a prompt past the room left
    for new tokens is refused from its first chunks on; with truncate_left only its last
    tokens are kept (memory bounded by a chunk, whatever the prompt's length)."""
    if params.max_new_tokens is None:
        return encode_limited(tokenizer, prompt.text, params.max_length - 1, "count", prompt.source)
    if params.default_length and not params.truncate_left:
        # A default budget shrinks to fit: any prompt shorter than the context is taken.
        return encode_limited(tokenizer, prompt.text, context - 1, "count", prompt.source)
    room = max(context - params.max_new_tokens, 1)
    keep = "tail" if params.truncate_left else "count"
    return encode_limited(tokenizer, prompt.text, room, keep, prompt.source)


def plan_prompt(
    prompt: Prompt,
    encoded: Limited,
    params: GenerationParams,
    context: int,
    prompt_index: int,
    name: Callable[[str], str] = plain_name,
) -> list[GeneratedSequence]:
    """The return sequences of one encoded prompt, its length checked against the context
    (left truncation only when params.truncate_left)."""
    if not encoded.total:
        raise InputError(
            f"{prompt.source}: the model's tokenizer gives no tokens for this text "
            "(it is not empty: the tokenizer drops all of it)"
        )
    budget = params.new_token_budget(encoded.total)
    if params.default_length and not params.truncate_left:
        budget = min(budget, context - encoded.total)  # generate up to the end of the context
        if budget < 1:
            raise InputError(
                f"{prompt.source}: the prompt is {encoded.count} tokens, which fills the model's "
                f"context of {context} tokens (pass --truncate left to keep the end of the "
                "prompt)"
            )
    if budget < 1:
        raise InputError(
            f"{prompt.source}: the prompt is {encoded.count} tokens, which leaves nothing to "
            f"generate under {name('max_length')} {params.max_length}; "
            f"give {name('max_new_tokens')} instead"
        )
    ids, dropped = encoded.ids, 0
    if encoded.total + budget > context:
        keep = context - budget
        if not params.truncate_left or keep < 1 or not encoded.exact:
            hint = (
                "pass --truncate left to keep the end of the prompt, or ask for fewer tokens"
                if keep >= 1
                else f"ask for fewer than {context} new tokens"
            )
            total = f"{encoded.total + budget}" + ("" if encoded.exact else "+")
            raise InputError(
                f"{prompt.source}: the prompt is {encoded.count} tokens and {budget} new tokens "
                f"were asked for: {total} is over the model's context of {context} tokens "
                f"({hint})"
            )
        dropped = encoded.total - keep
        ids = ids[len(ids) - keep :]
    return [
        GeneratedSequence(
            prompt_index=prompt_index,
            sequence_index=sequence_index,
            prompt=prompt,
            prompt_ids=list(ids),
            truncated_tokens=dropped,
            budget=budget,
        )
        for sequence_index in range(params.num_return_sequences)
    ]


def plan_sequences(
    prompts: Sequence[Prompt],
    prompt_ids: Sequence[list[int]],
    params: GenerationParams,
    context: int,
    first_index: int = 0,
    name: Callable[[str], str] = plain_name,
) -> list[GeneratedSequence]:
    """One GeneratedSequence per prompt and return sequence, for prompts encoded whole."""
    check_context(params, context, name)
    sequences = []
    for offset, (prompt, ids) in enumerate(zip(prompts, prompt_ids, strict=True)):
        encoded = Limited(ids, len(ids))
        sequences += plan_prompt(prompt, encoded, params, context, first_index + offset, name)
    return sequences


def plan_rows(
    tokenizer: Tokenizer,
    prompts: Iterable[Prompt],
    params: GenerationParams,
    context: int,
    rows: int,
    name: Callable[[str], str] = plain_name,
) -> Iterator[list[GeneratedSequence]]:
    """Batches of at most `rows` sequences (prompts x return sequences), in output order; a
    prompt's sequences may span batches. Each prompt is encoded when its batch is planned."""
    check_context(params, context, name)
    batch: list[GeneratedSequence] = []
    for index, prompt in enumerate(prompts):
        encoded = encode_prompt(tokenizer, prompt, params, context)
        for sequence in plan_prompt(prompt, encoded, params, context, index, name):
            batch.append(sequence)
            if len(batch) == rows:
                yield batch
                batch = []
    if batch:
        yield batch
