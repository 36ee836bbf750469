"""Likelihoods of texts under a model: strided-window perplexity and conditional scoring.

What is scored. By default `<|endoftext|>` is put in front of every text, so every token of the
text is predicted (the first one from `<|endoftext|>` alone), as lm-evaluation-harness's
rolling loglikelihood does; bits per byte then cover every byte of the text. With
`prefix_eos=False` the first token is context only and is not scored, as in the Hugging Face
perplexity guide.

Long texts use the guide's strided sliding window: windows of at most `ctx` tokens start every
`stride` tokens; each window scores only the tokens the previous window did not reach, so every
scored token sees at least `ctx - stride` tokens of context (all of them in the first window).

Only numpy here: the engine runs on either backend through `Backend.forward`.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2cli.backends.base import Backend, ModelInfo, position_ids_from_mask
from gpt2cli.errors import InputError
from gpt2cli.tokenizer import Tokenizer

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

LN2 = math.log(2.0)
DEFAULT_BATCH_SIZE = 8
# Bounds on one forward pass: padded input tokens, and logit rows (each is vocab_size floats).
MAX_BATCH_TOKENS = 8192
MAX_LOGIT_ROWS = 1024
MAX_WASTED_ROWS = 0.2  # fraction of projected logit rows that score nothing (padding, context)
# Logit rows reduced at a time: 32 rows of GPT-2's vocabulary (6 MB) stay in cache between
# the reduction's passes (128-row blocks took 35% longer).
ROW_BLOCK = 32
RANK_BUCKETS = (10, 100, 1000)  # GLTR: top 10, top 100, top 1000, beyond
MAX_REDUCE_THREADS = 4


# numpy releases the GIL in its loops, so blocks of logit rows reduce in parallel between
# forward passes, on the cores the forward pass has just used.
_reducers: ThreadPoolExecutor | None = None
_reducers_lock = threading.Lock()


def _for_each_block(n: int, reduce_block: Callable[[int, int], None]) -> None:
    """reduce_block(start, stop) over rows 0..n in blocks of ROW_BLOCK, in parallel."""
    global _reducers
    blocks = [(start, min(n, start + ROW_BLOCK)) for start in range(0, n, ROW_BLOCK)]
    if len(blocks) < 2:
        for start, stop in blocks:
            reduce_block(start, stop)
        return
    with _reducers_lock:
        if _reducers is None:
            from concurrent.futures import ThreadPoolExecutor

            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            workers = max(1, min(MAX_REDUCE_THREADS, cores))
            _reducers = ThreadPoolExecutor(workers, thread_name_prefix="gpt2cli-scoring")
    for future in [_reducers.submit(reduce_block, start, stop) for start, stop in blocks]:
        future.result()


@dataclass(frozen=True)
class Window:
    """One forward pass over `sequence[begin:end - 1]` that scores tokens `first..end - 1`.

    The token at `end - 1` is a target only: its own prediction would be thrown away, so it is
    not fed to the model.
    """

    begin: int
    end: int
    first: int

    @property
    def n_scored(self) -> int:
        return self.end - self.first


def window_plan(n_tokens: int, ctx: int, stride: int) -> list[Window]:
    """The Hugging Face perplexity guide's strided windows over a sequence of `n_tokens`.

    Windows begin at 0, stride, 2*stride, ... and hold up to `ctx` tokens; each scores the tokens
    past the previous window's end. Token 0 is never scored (nothing precedes it). When
    stride == ctx, the first token of each window has no context there and is skipped, as the
    guide's recipe does.
    """
    check_window(ctx, stride)
    windows: list[Window] = []
    scored_until = 1
    for begin in range(0, max(n_tokens - 1, 0), stride):
        end = min(begin + ctx, n_tokens)
        first = max(scored_until, begin + 1)
        if end > first:
            windows.append(Window(begin, end, first))
        scored_until = end
        if end == n_tokens:
            break
    return windows


def check_window(ctx: int, stride: int, n_positions: int | None = None) -> None:
    """InputError unless 2 <= ctx <= n_positions and 1 <= stride <= ctx."""
    if ctx < 2:
        raise InputError(param="ctx", reason=f"must be at least 2, got {ctx}")
    if n_positions is not None and ctx > n_positions:
        raise InputError(
            param="ctx",
            reason=f"{ctx} is longer than the model's context ({n_positions} tokens)",
        )
    if not 1 <= stride <= ctx:
        raise InputError(
            param="stride",
            reason=f"must be between 1 and {ctx}, got {stride}",
            hint="it cannot exceed {ctx}",
        )


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """lm-evaluation-harness's bits per byte: -sum(log p) / bytes / ln 2."""
    return nll_nats / n_bytes / LN2


def mean_stderr(total: float, squares: float, count: int) -> tuple[float | None, float | None]:
    """The mean of `count` values from their sum and sum of squares, and its standard error as
    llama.cpp's perplexity tool computes it: sqrt((mean(x^2) - mean(x)^2) / (count - 1)), 0
    when rounding makes the variance negative; None where there are too few values."""
    if count < 1:
        return None, None
    mean = total / count
    if count < 2:
        return mean, None
    variance = squares / count - mean * mean
    return mean, math.sqrt(variance / (count - 1)) if variance > 0 else 0.0


@dataclass
class KLStats:
    """KL(base || model) per scored token and top-1 agreement, as llama-perplexity's
    --kl-divergence: sums for the mean and its standard error, and every value (float32, 4
    bytes a token) for the median, 99th percentile and maximum."""

    count: int = 0
    kl_sum: float = 0.0
    kl_sum2: float = 0.0
    same_top: int = 0  # tokens where both models' most likely token is the same
    base_nll: float = 0.0  # the base model's NLL of the scored tokens
    values: list[np.ndarray] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, kl: np.ndarray, same_top: np.ndarray, base_logprobs: np.ndarray) -> KLStats:
        kl64 = kl.astype(np.float64)
        return cls(
            count=len(kl),
            kl_sum=float(kl64.sum()),
            kl_sum2=float((kl64 * kl64).sum()),
            same_top=int(same_top.sum()),
            base_nll=-float(base_logprobs.sum(dtype=np.float64)),
            values=[kl.astype(np.float32)] if len(kl) else [],
        )

    def add(self, other: KLStats) -> None:
        self.count += other.count
        self.kl_sum += other.kl_sum
        self.kl_sum2 += other.kl_sum2
        self.same_top += other.same_top
        self.base_nll += other.base_nll
        self.values.extend(other.values)

    def _sorted(self) -> np.ndarray:
        if len(self.values) != 1:  # joined once, so later calls are cheap
            self.values = [np.concatenate(self.values) if self.values else np.zeros(0, np.float32)]
        return np.sort(self.values[0])

    def as_dict(self) -> dict[str, Any]:
        mean, stderr = mean_stderr(self.kl_sum, self.kl_sum2, self.count)
        values = self._sorted()
        agreement = self.same_top / self.count if self.count else None
        agreement_stderr = (
            math.sqrt(agreement * (1 - agreement) / (self.count - 1))
            if agreement is not None and self.count > 1
            else None
        )
        return {
            "kl_divergence": mean,
            "kl_divergence_stderr": stderr,
            "kl_divergence_median": float(np.median(values)) if len(values) else None,
            "kl_divergence_p99": float(np.percentile(values, 99)) if len(values) else None,
            "kl_divergence_max": float(values[-1]) if len(values) else None,
            "top1_agreement": agreement,
            "top1_agreement_stderr": agreement_stderr,
            "base_perplexity": _finite(math.exp(self.base_nll / self.count))
            if self.count
            else None,
        }


@dataclass
class Stats:
    """Counts and total negative log-likelihood of some scored tokens (and, against a base
    model, the KL statistics)."""

    tokens: int = 0
    bytes: int = 0
    chars: int = 0
    nll: float = 0.0  # nats, summed over the scored tokens
    nll2: float = 0.0  # the per-token NLLs squared, summed: the perplexity's standard error
    kl: KLStats | None = None

    def add(self, other: Stats) -> None:
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.chars += other.chars
        self.nll += other.nll
        self.nll2 += other.nll2
        if other.kl is not None:
            if self.kl is None:
                self.kl = KLStats()
            self.kl.add(other.kl)

    @property
    def perplexity(self) -> float | None:
        return math.exp(self.nll / self.tokens) if self.tokens else None

    @property
    def perplexity_stderr(self) -> float | None:
        """llama-perplexity's `PPL ± err`: the standard error of the mean per-token NLL, times
        the perplexity (the delta method: d exp(x) = exp(x) dx)."""
        mean, stderr = mean_stderr(self.nll, self.nll2, self.tokens)
        if mean is None or stderr is None:
            return None
        return _finite(math.exp(mean) * stderr)

    @property
    def bits_per_token(self) -> float | None:
        return self.nll / self.tokens / LN2 if self.tokens else None

    @property
    def bits_per_byte(self) -> float | None:
        return bits_per_byte(self.nll, self.bytes) if self.bytes else None

    @property
    def bits_per_char(self) -> float | None:
        return self.nll / self.chars / LN2 if self.chars else None

    def as_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "token_count": self.tokens,
            "bytes": self.bytes,
            "chars": self.chars,
            "nll": self.nll,
            "perplexity": _finite(self.perplexity),
            "perplexity_stderr": self.perplexity_stderr,
            "bits_per_token": self.bits_per_token,
            "bits_per_byte": self.bits_per_byte,
            "bits_per_char": self.bits_per_char,
        }
        if self.kl is not None:
            fields.update(self.kl.as_dict())
        return fields


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


@dataclass
class TokenScores:
    """Per-token results for one text, for the tokens that were scored."""

    positions: np.ndarray  # index of each scored token in the text's token list
    ids: np.ndarray
    logprobs: np.ndarray  # natural log
    ranks: np.ndarray | None = None  # 1 = the model's top choice
    entropies: np.ndarray | None = None  # nats
    greedy: np.ndarray | None = None  # argmax == the true token
    # against a base model (ScoreOptions.kl_base)
    kl: np.ndarray | None = None  # KL(base || model) of each token's distribution, nats
    same_top: np.ndarray | None = None  # both models' most likely token is the same
    base_logprobs: np.ndarray | None = None  # the base model's log-probability of the token


@dataclass
class Scored:
    """One scored text: totals and, when asked for, per-token details."""

    index: int
    stats: Stats
    ids: list[int]  # every token of the text (or continuation), scored or not
    tokens: TokenScores
    # conditional scoring only
    context_tokens: int | None = None
    context_truncated: bool = False
    limited: bool = False  # options.limit ended the scoring inside this text

    @property
    def text_tokens(self) -> int:
        return len(self.ids)

    @property
    def logprob(self) -> float:
        return float(self.tokens.logprobs.sum(dtype=np.float64))

    @property
    def is_greedy(self) -> bool | None:
        return None if self.tokens.greedy is None else bool(self.tokens.greedy.all())


@dataclass
class _Job:
    """A window of one item's token sequence, ready to batch."""

    item: int
    inputs: np.ndarray  # int64 token ids fed to the model
    targets: np.ndarray  # int64 ids of the scored tokens: the last len(targets) predictions
    target_positions: np.ndarray  # their indices in the item's text tokens


@dataclass
class ScoringItem:
    """A text (or a continuation) waiting for its windows' results."""

    ids: list[int]
    offset: int  # index in `sequence` of the text's first token
    sequence: list[int] = field(repr=False)
    windows: list[Window]
    context_tokens: int | None = None
    context_truncated: bool = False
    limited: bool = False  # the sequence was cut to a budget of scored tokens


@dataclass(frozen=True)
class ScoreOptions:
    ctx: int
    stride: int
    prefix_eos: bool = True
    details: bool = False  # ranks and entropies (per-token output, --show)
    greedy: bool = False  # argmax check (conditional scoring)
    batch_size: int = DEFAULT_BATCH_SIZE
    # Score at most this many tokens in one call: a text is cut where the budget ends, and
    # the texts after it are left out of the results; a pair is scored whole or not at all.
    limit: int | None = None
    # A base model scored over the same windows: KL(base || model) and top-1 agreement.
    kl_base: Backend | None = field(default=None, repr=False, compare=False)


def plan_text(
    ids: Sequence[int], options: ScoreOptions, eos: int | None, budget: int | None = None
) -> ScoringItem:
    """The windows that score a whole text; with `budget`, only its first tokens, so that at
    most `budget` tokens are scored."""
    prefix = [eos] if options.prefix_eos and eos is not None else []
    sequence = prefix + list(ids)
    whole = len(sequence)
    if budget is not None:
        sequence = sequence[: budget + 1]  # token 0 is never scored
    return ScoringItem(
        list(ids), len(prefix), sequence, window_plan(len(sequence), options.ctx, options.stride),
        limited=len(sequence) < whole,
    )


def plan_continuation(context: Sequence[int], continuation: Sequence[int], ctx: int) -> ScoringItem:
    """lm-eval's loglikelihood window: the continuation after as much context as fits.

    The model is fed at most `ctx` tokens; context tokens beyond that are dropped from the left.
    """
    if not continuation:
        raise InputError("the continuation is empty")
    if not context:
        raise InputError("the context is empty and the model has no <|endoftext|> to stand for it")
    if len(continuation) > ctx:
        raise InputError(
            reason=f"the continuation is {len(continuation)} tokens, more than a window of {ctx}",
            hint="raise {ctx}",
        )
    sequence = list(context) + list(continuation)
    begin = max(0, len(sequence) - 1 - ctx)
    window = Window(begin, len(sequence), len(context))
    return ScoringItem(
        list(continuation),
        len(context),
        sequence,
        [window],
        len(context),
        context_truncated=begin > 0,
    )


def encode_pair(
    tokenizer: Tokenizer, context: str, continuation: str, eos: int | None
) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation, the
    pair is encoded whole, and the continuation is what follows the context's own token count;
    an empty context becomes `<|endoftext|>`.

    As in lm-eval, a continuation that starts inside the context's last word ("hel" + "lo") is
    split by token count: the context keeps its own tokens and the continuation gets the whole
    encoding's tokens past that many. When nothing is left (the continuation merged into the
    context's last token), there is nothing to score: InputError, as lm-eval's assertion.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    if not context:
        return ([eos] if eos is not None else []), tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    continuation_ids = whole[len(context_ids) :]
    if continuation and not continuation_ids:
        raise InputError(
            "the continuation merges into the context's last token, which leaves it no token "
            "to score (lm-eval refuses it too): start it at a token boundary, such as a space"
        )
    return context_ids, continuation_ids


def _jobs(items: Sequence[ScoringItem]) -> list[_Job]:
    jobs = []
    for number, item in enumerate(items):
        sequence = np.asarray(item.sequence, dtype=np.int64)
        for window in item.windows:
            jobs.append(
                _Job(
                    number,
                    sequence[window.begin : window.end - 1],
                    sequence[window.first : window.end],
                    np.arange(window.first, window.end, dtype=np.int64) - item.offset,
                )
            )
    return jobs


def _batches(jobs: list[_Job], batch_size: int) -> list[list[_Job]]:
    """Windows grouped by length (little padding) under the per-pass bounds. Rows are
    left-padded, so every row's targets end at the last position: a batch projects the most
    targets any of its rows has, however their windows' lengths differ."""
    order = sorted(jobs, key=lambda j: (len(j.inputs), len(j.targets)), reverse=True)
    batches: list[list[_Job]] = []
    current: list[_Job] = []
    useful = 0  # logit rows of the current batch that score a token
    rows = 0  # logit rows each window of the current batch needs
    for job in order:
        if current:
            width = len(current[0].inputs)  # sorted: the first is the longest
            new_rows = max(rows, len(job.targets))
            size = len(current) + 1
            wasted = 1 - (useful + len(job.targets)) / (size * new_rows)
            if (
                size > batch_size
                or size * width > MAX_BATCH_TOKENS
                or size * new_rows > MAX_LOGIT_ROWS
                or wasted > MAX_WASTED_ROWS
            ):
                batches.append(current)
                current, useful, rows = [], 0, 0
        if not current:
            rows = len(job.targets)
        current.append(job)
        useful += len(job.targets)
        rows = max(rows, len(job.targets))
    if current:
        batches.append(current)
    return batches


def forward_tail_logits(
    backend: Backend, input_ids: np.ndarray, mask: np.ndarray, keep: int
) -> np.ndarray:
    """Logits (B, keep, V) of the last `keep` positions; only those are projected onto the
    vocabulary, the step that costs a third of a GPT-2 small forward pass. Rows may be
    left-padded (mask 0)."""
    positions = position_ids_from_mask(mask, input_ids.shape[1])
    logits = backend.forward(input_ids, mask, positions, logits=keep, use_cache=False).logits
    assert logits is not None and logits.shape[1] == keep
    return logits


@dataclass
class _RowScores:
    logprobs: np.ndarray
    ranks: np.ndarray | None
    entropies: np.ndarray | None
    greedy: np.ndarray | None
    kl: np.ndarray | None = None
    same_top: np.ndarray | None = None
    base_logprobs: np.ndarray | None = None


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    """log_softmax of float32 rows (a new float32 array; the normaliser summed in float64)."""
    shifted = rows - rows.max(axis=1, keepdims=True)
    total = np.exp(shifted).sum(axis=1, dtype=np.float64)
    shifted -= np.log(total).astype(np.float32)[:, None]
    return shifted


def kl_divergence_rows(
    base: np.ndarray, model: np.ndarray, targets: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per row of logits (R, V): KL(base || model) = sum_v p_base(v) (log p_base(v) - log
    p_model(v)) in nats, as llama-perplexity's --kl-divergence (the base model's distribution
    weighs the log ratio); whether both rows' most likely token is the same; and, given
    `targets`, the base model's log-probability of each target."""
    n = len(base)
    kl = np.empty(n, dtype=np.float64)
    same_top = np.empty(n, dtype=bool)
    base_logprobs = np.empty(n, dtype=np.float64) if targets is not None else None

    def reduce_block(start: int, stop: int) -> None:
        b = np.asarray(base[start:stop], dtype=np.float32)
        m = np.asarray(model[start:stop], dtype=np.float32)
        rows = slice(start, stop)
        same_top[rows] = b.argmax(axis=1) == m.argmax(axis=1)
        log_b, log_m = _log_softmax(b), _log_softmax(m)
        kl[rows] = np.einsum("ij,ij->i", np.exp(log_b), log_b - log_m, dtype=np.float64)
        if base_logprobs is not None and targets is not None:
            base_logprobs[rows] = log_b[np.arange(stop - start), targets[rows]]

    _for_each_block(n, reduce_block)
    return kl, same_top, base_logprobs


def score_rows(
    logits: np.ndarray,
    targets: np.ndarray,
    details: bool = False,
    greedy: bool = False,
    base_logits: np.ndarray | None = None,
) -> _RowScores:
    """Log-probabilities of `targets` under each row of `logits` (R, V), in float64 sums.

    With `details`, also the rank of the target (1 + how many tokens score strictly higher) and
    the entropy of the row's distribution; with `greedy`, whether the target is the argmax;
    with `base_logits` (a base model's rows), the KL statistics (kl_divergence_rows).
    """
    extra: dict[str, Any] = {}
    if base_logits is not None:
        kl, same_top, base_logprobs = kl_divergence_rows(base_logits, logits, targets)
        extra = {"kl": kl, "same_top": same_top, "base_logprobs": base_logprobs}
    n = len(targets)
    logprobs = np.empty(n, dtype=np.float64)
    ranks = np.empty(n, dtype=np.int64) if details else None
    entropies = np.empty(n, dtype=np.float64) if details else None
    is_argmax = np.empty(n, dtype=bool) if greedy else None

    def reduce_block(start: int, stop: int) -> None:
        block = np.asarray(logits[start:stop], dtype=np.float32)
        block_targets = targets[start:stop]
        picked = np.arange(stop - start)
        if is_argmax is not None:
            is_argmax[start:stop] = block.argmax(axis=1) == block_targets
        rows = block - block.max(axis=1, keepdims=True)  # a private array, changed in place
        true_logit = rows[picked, block_targets]
        if ranks is not None:
            ranks[start:stop] = (rows > true_logit[:, None]).sum(axis=1) + 1
        if entropies is not None:
            exp = np.exp(rows)
            total = exp.sum(axis=1, dtype=np.float64)
            weighted = np.einsum("ij,ij->i", exp, rows, dtype=np.float64)
            entropies[start:stop] = np.log(total) - weighted / total
        else:
            np.exp(rows, out=rows)
            total = rows.sum(axis=1, dtype=np.float64)
        logprobs[start:stop] = true_logit.astype(np.float64) - np.log(total)

    _for_each_block(n, reduce_block)
    return _RowScores(logprobs, ranks, entropies, is_argmax, **extra)


def run_items(
    backend: Backend,
    items: Sequence[ScoringItem],
    options: ScoreOptions,
    progress: Callable[[int, int], None] | None = None,
) -> list[TokenScores]:
    """Score every window of `items` in batches; per-token results for each item, in order."""
    jobs = _jobs(items)
    parts: list[list[tuple[np.ndarray, _RowScores]]] = [[] for _ in items]
    done_tokens = 0
    total_tokens = sum(len(j.targets) for j in jobs)
    for batch in _batches(jobs, options.batch_size):
        width = len(batch[0].inputs)
        keep = max(len(j.targets) for j in batch)
        input_ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, job in enumerate(batch):
            input_ids[row, width - len(job.inputs) :] = job.inputs
            mask[row, width - len(job.inputs) :] = 1
        logits = forward_tail_logits(backend, input_ids, mask, keep)
        base = options.kl_base
        base_logits = forward_tail_logits(base, input_ids, mask, keep) if base else None
        for row, job in enumerate(batch):
            span = slice(keep - len(job.targets), keep)  # left padding: every row ends at keep
            rows = logits[row, span]
            base_rows = base_logits[row, span] if base_logits is not None else None
            parts[job.item].append(
                (
                    job.target_positions,
                    score_rows(rows, job.targets, options.details, options.greedy, base_rows),
                )
            )
            done_tokens += len(job.targets)
        if progress is not None:
            progress(done_tokens, total_tokens)
    return [_merge(item, item_parts) for item, item_parts in zip(items, parts, strict=True)]


def _merge(item: ScoringItem, parts: list[tuple[np.ndarray, _RowScores]]) -> TokenScores:
    parts.sort(key=lambda part: int(part[0][0]) if len(part[0]) else 0)

    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(scores, name) for _, scores in parts]
        if not arrays or arrays[0] is None:
            return None
        return np.concatenate(arrays)

    positions = np.concatenate([p for p, _ in parts]) if parts else np.zeros(0, dtype=np.int64)
    ids = np.asarray(item.ids, dtype=np.int64)[positions] if len(positions) else positions
    logprobs = cat("logprobs")
    return TokenScores(
        positions=positions,
        ids=ids,
        logprobs=logprobs if logprobs is not None else np.zeros(0),
        ranks=cat("ranks"),
        entropies=cat("entropies"),
        greedy=cat("greedy"),
        kl=cat("kl"),
        same_top=cat("same_top"),
        base_logprobs=cat("base_logprobs"),
    )


def token_bytes_and_chars(
    tokenizer: Tokenizer, ids: Sequence[int], scored: np.ndarray
) -> tuple[int, int]:
    """UTF-8 bytes of the scored tokens, and characters whose first byte they hold."""
    n_bytes = n_chars = 0
    is_scored = np.zeros(len(ids), dtype=bool)
    is_scored[scored] = True
    for token_id, counted in zip(ids, is_scored, strict=True):
        if counted:
            piece = tokenizer.token_bytes(token_id)
            n_bytes += len(piece)
            n_chars += sum(1 for byte in piece if byte & 0xC0 != 0x80)
    return n_bytes, n_chars


def _stats(
    tokenizer: Tokenizer, ids: Sequence[int], tokens: TokenScores, text: str | None
) -> Stats:
    if text is not None and len(tokens.positions) == len(ids):
        n_bytes, n_chars = len(text.encode("utf-8")), len(text)
    else:
        n_bytes, n_chars = token_bytes_and_chars(tokenizer, ids, tokens.positions)
    logprobs = tokens.logprobs.astype(np.float64)
    nll = 0.0 - float(logprobs.sum())
    kl = None
    if tokens.kl is not None and tokens.same_top is not None and tokens.base_logprobs is not None:
        kl = KLStats.of(tokens.kl, tokens.same_top, tokens.base_logprobs)
    return Stats(len(tokens.positions), n_bytes, n_chars, nll, float((logprobs**2).sum()), kl)


def score_texts(
    backend: Backend,
    texts: Sequence[str],
    options: ScoreOptions,
    progress: Callable[[int, int], None] | None = None,
    first_index: int = 0,
) -> list[Scored]:
    """Score whole texts with the strided window; one result per text, in order, numbered
    from `first_index` (callers stream long inputs through in blocks). With `options.limit`,
    the results stop where the budget of scored tokens ends (the last text may be cut)."""
    tokenizer = backend.tokenizer
    check_window(options.ctx, options.stride, backend.info.n_positions)
    check_base(backend, options)
    eos = _eos(backend)
    if options.prefix_eos and eos is None:
        raise InputError(
            reason="this model has no <|endoftext|> token to put before texts",
            hint="use {no_prefix}",
        )
    all_ids = tokenizer.encode_batch(list(texts))
    items = []
    budget = options.limit
    for ids in all_ids:
        if budget is not None and budget <= 0:
            break
        item = plan_text(ids, options, eos, budget)
        items.append(item)
        if budget is not None:
            budget -= sum(window.n_scored for window in item.windows)
    texts, all_ids = texts[: len(items)], all_ids[: len(items)]
    token_scores = run_items(backend, items, options, progress)
    return [
        Scored(first_index + number, _stats(tokenizer, ids, scores, text), list(ids), scores,
               limited=item.limited)  # fmt: skip
        for number, (text, ids, scores, item) in enumerate(
            zip(texts, all_ids, token_scores, items, strict=True)
        )
    ]


def score_pairs(
    backend: Backend,
    pairs: Iterable[tuple[str, str]],
    options: ScoreOptions,
    progress: Callable[[int, int], None] | None = None,
    first_index: int = 0,
    sources: Sequence[str] | None = None,
) -> list[Scored]:
    """lm-eval loglikelihood requests: log P(continuation | context) and the greedy check.

    A pair that cannot be scored is an InputError that names its entry in `sources`.
    """
    check_window(options.ctx, options.stride, backend.info.n_positions)
    check_base(backend, options)
    tokenizer = backend.tokenizer
    eos = _eos(backend)
    items = []
    budget = options.limit
    for number, (context, continuation) in enumerate(pairs):
        try:
            context_ids, continuation_ids = encode_pair(tokenizer, context, continuation, eos)
            item = plan_continuation(context_ids, continuation_ids, options.ctx)
        except InputError as exc:
            where = sources[number] if sources is not None else f"pair {first_index + number}"
            raise _located(exc, where) from None
        if budget is not None:
            if len(item.ids) > budget:
                break
            budget -= len(item.ids)
        items.append(item)
    token_scores = run_items(backend, items, options, progress)
    results = []
    for number, (item, scores) in enumerate(zip(items, token_scores, strict=True)):
        stats = _stats(tokenizer, item.ids, scores, None)
        results.append(
            Scored(
                first_index + number,
                stats,
                item.ids,
                scores,
                context_tokens=item.context_tokens,
                context_truncated=item.context_truncated,
            )
        )
    return results


def check_base(backend: Backend, options: ScoreOptions) -> None:
    """The base model of options.kl_base can be compared token by token with `backend`: the
    same vocabulary, and a context that holds options.ctx."""
    base = options.kl_base
    if base is None:
        return
    check_base_info(backend.info, base.info, options.ctx)


def check_base_info(info: ModelInfo, base: ModelInfo, ctx: int) -> None:
    """`base` (ModelInfo) can score the windows of `info`'s model: the same vocabulary size
    and end token, a context of at least `ctx`. Before either model's weights load."""
    if base.vocab_size != info.vocab_size or base.eos_token_id != info.eos_token_id:
        raise InputError(
            param="kl_base",
            reason=f"{base.source} has a vocabulary of {base.vocab_size} tokens (end token "
            f"{base.eos_token_id}), {info.source} {info.vocab_size} (end token "
            f"{info.eos_token_id}): KL divergence compares models over one vocabulary",
        )
    if ctx > base.n_positions:
        raise InputError(
            param="ctx",
            reason=f"{ctx} is longer than the base model's context ({base.n_positions} tokens)",
        )


def _located(exc: InputError, where: str) -> InputError:
    """`exc` said of the input named `where`, still naming its parameters for any front end."""
    if exc.param is None and exc.reason is None:
        return InputError(f"{where}: {exc.message}")
    inner = f"{where}: {exc.where}" if exc.where else where
    return InputError(param=exc.param, reason=exc.reason, hint=exc.hint, where=inner)


def _eos(backend: Backend) -> int | None:
    eos = backend.info.eos_token_id
    return eos if eos is not None else backend.tokenizer.eos_token_id


def total(results: Iterable[Scored]) -> Stats:
    """Aggregate statistics: sums of counts and NLL (so perplexity is per token overall)."""
    stats = Stats()
    for result in results:
        stats.add(result.stats)
    return stats


def rank_bucket(rank: int) -> int:
    """GLTR bucket of a rank: 0 top 10, 1 top 100, 2 top 1000, 3 beyond."""
    for bucket, bound in enumerate(RANK_BUCKETS):
        if rank <= bound:
            return bucket
    return len(RANK_BUCKETS)
