"""The metrics of the evaluation tasks, with lm-evaluation-harness's definitions, and their
standard errors.

- acc: the mean of 0/1 outcomes; stderr sqrt(p (1 - p) / (n - 1)), lm-eval's sample standard
  deviation over sqrt(n).
- perplexity (LAMBADA): exp(-mean log-likelihood per document), lm-eval's `perplexity`
  aggregation; stderr by the delta method, perplexity x the standard error of the mean
  log-likelihood (lm-eval bootstraps it instead).
- word_perplexity, byte_perplexity, bits_per_byte, bits_per_char: lm-eval's weighted
  aggregations, exp(-sum(ll) / sum(units)) and -sum(ll) / sum(units) / ln 2; stderr by the
  delta method from the per-token NLLs (as llama-perplexity's), scaled by tokens / units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LN2 = math.log(2.0)


@dataclass
class Metric:
    """One figure of a task: its value, standard error and definition, and where the GPT-2
    paper has it, the paper's 124M and 355M figures (in the paper's units; `scale` turns our
    value into them: 100 for an accuracy the paper gives in percent)."""

    name: str
    value: float | None
    stderr: float | None
    definition: str
    paper: tuple[float, float] | None = None
    scale: float = 1.0


@dataclass
class RollingTotals:
    """Sums over documents scored with rolling windows."""

    docs: int = 0
    tokens: int = 0
    loglikelihood: float = 0.0  # nats, summed over every scored token
    squares: float = 0.0  # per-token log-likelihoods squared, summed
    words: int = 0
    bytes: int = 0
    chars: int = 0

    def token_nll_stderr(self) -> float | None:
        """The standard error of the mean per-token NLL."""
        n = self.tokens
        if n < 2:
            return None
        mean = -self.loglikelihood / n
        variance = self.squares / n - mean * mean
        return math.sqrt(variance / (n - 1)) if variance > 0 else 0.0

    def per_unit(self, units: int) -> tuple[float | None, float | None]:
        """NLL per unit (word, byte, char) and its standard error."""
        if units <= 0:
            return None, None
        stderr = self.token_nll_stderr()
        return -self.loglikelihood / units, (
            None if stderr is None else stderr * self.tokens / units
        )


@dataclass
class PairTotals:
    """Per-document log-likelihoods and 0/1 outcomes (LAMBADA, CBT)."""

    loglikelihoods: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    tokens: int = 0


def exp_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        return math.exp(value)
    except OverflowError:
        return None


def accuracy(outcomes: list[bool]) -> tuple[float | None, float | None]:
    n = len(outcomes)
    if not n:
        return None, None
    p = sum(outcomes) / n
    return p, (math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None)


def document_perplexity(loglikelihoods: list[float]) -> tuple[float | None, float | None]:
    """lm-eval's `perplexity`: exp(-mean(ll)), with the delta-method standard error."""
    n = len(loglikelihoods)
    if not n:
        return None, None
    mean = sum(loglikelihoods) / n
    value = exp_or_none(-mean)
    if n < 2 or value is None:
        return value, None
    variance = sum((ll - mean) ** 2 for ll in loglikelihoods) / (n - 1)
    return value, value * math.sqrt(variance / n)


def weighted_perplexity(totals: RollingTotals, units: int) -> tuple[float | None, float | None]:
    nll, stderr = totals.per_unit(units)
    value = exp_or_none(nll)
    return value, (None if value is None or stderr is None else value * stderr)


def bits_per_unit(totals: RollingTotals, units: int) -> tuple[float | None, float | None]:
    nll, stderr = totals.per_unit(units)
    if nll is None:
        return None, None
    return nll / LN2, (None if stderr is None else stderr / LN2)
