"""The tasks of the GPT-2 paper's zero-shot table, with lm-evaluation-harness's definitions
where it has the task, run on scoring.py's primitives (conditional and rolling log-likelihood;
only the scored positions go through the vocabulary projection).

- lambada_openai: lm-eval's task. Context: the text without its last word (split on single
  spaces); target: " " + the last word, encoded as lm-eval's `_encode_pair`. acc: every target
  token is the greedy one; perplexity: exp(-mean log-likelihood per document). `last_token`:
  the paper's protocol instead, the last BPE token given every token before it.
- wikitext2, wikitext103: lm-eval's `wikitext` task (its document-level data, its detokenizer):
  the rolling log-likelihood of each detokenized article over disjoint windows of `ctx` tokens,
  the first conditioned on <|endoftext|> (lm-eval's `loglikelihood_rolling`); word_perplexity,
  byte_perplexity and bits_per_byte with words (lm-eval's `re.split(r"\\s+")` count) and UTF-8
  bytes counted on the original text. `stride` gives overlapping windows instead.
- ptb, 1bw: the same rolling log-likelihood (the same detokenizer), word perplexity with
  words counted the way their benchmarks count them: whitespace-separated words plus one
  end-of-sentence per line. ptb is one stream of sentences, 1bw one document per sentence.
- enwik8 (bits per byte), text8 (bits per character): the raw stream, no detokenization.
- cbt_cn, cbt_ne: each of the 10 candidates put in for XXXXX and the whole question sentence
  scored after the 20 context sentences; acc: the argmax is the answer.

Not lm-eval's: ptb, 1bw, enwik8, text8 and CBT, which lm-eval does not ship in this form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2cli.errors import InputError
from gpt2cli.evaluation import detokenize
from gpt2cli.evaluation.data import CBTQuestion, HubDataset
from gpt2cli.evaluation.metrics import (
    Metric,
    PairTotals,
    RollingTotals,
    accuracy,
    bits_per_unit,
    document_perplexity,
    weighted_perplexity,
)

if TYPE_CHECKING:
    from gpt2cli.backends.base import Backend
    from gpt2cli.scoring import ScoringItem, TokenScores, Window

Progress = Callable[[int, int], None]
PAPER_NOTE = "paper: different tokenization and detokenization; not like for like"


@dataclass(frozen=True)
class Task:
    """What a task reads, how it scores, and what the GPT-2 paper reports for it."""

    name: str
    kind: str  # "lambada", "rolling" or "cbt"
    layout: str  # data.read_local's text layout
    field: str  # the JSONL/Parquet field of a document
    title: str  # the paper's column
    hub: HubDataset | None = None
    # rolling tasks: the metrics, the detokenizer, how words are counted, stream handling
    metrics: tuple[str, ...] = ()
    detokenizer: str | None = None
    words: str = "lm-eval"  # "lm-eval": re.split(r"\s+"); "lines": split() + 1 per line
    stream: str | None = None  # "lines": one stream of lines; "windows": one raw stream
    paper: dict[str, tuple[float, float]] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)


_WIKITEXT = "EleutherAI/wikitext_document_level"
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "lambada_openai", "lambada", "lines", "text", "LAMBADA",
            hub=HubDataset("EleutherAI/lambada_openai", "default", "test", "text"),
            paper={"perplexity": (35.13, 15.60), "acc": (45.99, 55.48)}, scale={"acc": 100.0},
        ),
        Task(
            "cbt_cn", "cbt", "cbt", "", "CBT-CN",
            paper={"acc": (87.65, 92.35)}, scale={"acc": 100.0},
        ),
        Task(
            "cbt_ne", "cbt", "cbt", "", "CBT-NE",
            paper={"acc": (83.4, 87.1)}, scale={"acc": 100.0},
        ),
        Task(
            "wikitext2", "rolling", "wikitext", "page", "WikiText2",
            hub=HubDataset(_WIKITEXT, "wikitext-2-raw-v1", "test", "page"),
            metrics=("word_perplexity", "byte_perplexity", "bits_per_byte"),
            detokenizer="wikitext", paper={"word_perplexity": (29.41, 22.76)},
        ),
        Task(
            "ptb", "rolling", "lines", "sentence", "PTB",
            metrics=("word_perplexity",), detokenizer="wikitext", words="lines",
            stream="lines", paper={"word_perplexity": (65.85, 47.33)},
        ),
        Task(
            "enwik8", "rolling", "stream", "text", "enwik8",
            metrics=("bits_per_byte",), stream="windows", paper={"bits_per_byte": (1.16, 1.01)},
        ),
        Task(
            "text8", "rolling", "stream", "text", "text8",
            metrics=("bits_per_char",), stream="windows", paper={"bits_per_char": (1.17, 1.06)},
        ),
        Task(
            "wikitext103", "rolling", "wikitext", "page", "WikiText103",
            hub=HubDataset(_WIKITEXT, "wikitext-103-raw-v1", "test", "page"),
            metrics=("word_perplexity", "byte_perplexity", "bits_per_byte"),
            detokenizer="wikitext", paper={"word_perplexity": (37.50, 26.37)},
        ),
        Task(
            "1bw", "rolling", "lines", "text", "1BW",
            metrics=("word_perplexity",), detokenizer="wikitext", words="lines",
            paper={"word_perplexity": (75.20, 55.72)},
        ),
    )
}  # fmt: skip

DETOKENIZERS: dict[str, Callable[[str], str]] = {"wikitext": detokenize.wikitext}


@dataclass(frozen=True)
class EvalOptions:
    ctx: int  # tokens fed to the model per window (lm-eval's max_length)
    stride: int | None = None  # rolling tasks: overlapping windows every `stride` tokens
    last_token: bool = False  # lambada: the paper's last-BPE-token protocol
    batch_size: int = 8
    # documents (questions, sentences); for ptb lines, for enwik8/text8 windows
    limit: int | None = None


@dataclass
class TaskResult:
    task: str
    n: int  # documents, questions or sentences scored
    token_count: int  # tokens scored
    metrics: list[Metric]
    definition: str
    limited: bool = False  # --limit left part of the data out
    # per document: its log-likelihood (nats); CBT: the log-likelihood of each option
    scores: list[Any] = field(default_factory=list, repr=False)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(
            param="tasks", reason=f"unknown task {name!r}", hint="one of " + ", ".join(TASKS)
        ) from None


def check_options(options: EvalOptions, n_positions: int) -> None:
    """InputError unless 1 <= ctx <= the model's context and 1 <= stride <= ctx."""
    if not 1 <= options.ctx <= n_positions:
        raise InputError(
            param="ctx",
            reason=f"must be between 1 and the model's context ({n_positions}), got {options.ctx}",
        )
    if options.stride is not None and not 1 <= options.stride <= options.ctx:
        raise InputError(
            param="stride", reason=f"must be between 1 and {options.ctx}, got {options.stride}"
        )


def run_task(
    backend: Backend,
    task: Task,
    docs: Sequence[Any],
    options: EvalOptions,
    progress: Progress | None = None,
) -> TaskResult:
    """Score `docs` (from data.read_local/read_hub) as `task` defines; the task's figures."""
    check_options(options, backend.info.n_positions)
    if task.kind == "lambada":
        return _lambada(backend, task, docs, options, progress)
    if task.kind == "cbt":
        return _cbt(backend, task, docs, options, progress)
    return _rolling(backend, task, docs, options, progress)


def _metric(task: Task, name: str, figures: tuple[float | None, float | None], text: str) -> Metric:
    value, stderr = figures
    return Metric(name, value, stderr, text, task.paper.get(name), task.scale.get(name, 1.0))


def _score_options(options: EvalOptions, greedy: bool) -> Any:
    from gpt2cli.scoring import ScoreOptions

    return ScoreOptions(options.ctx + 1, options.ctx + 1, greedy=greedy,
                        batch_size=options.batch_size)  # fmt: skip


def _eos(backend: Backend) -> int:
    eos = backend.info.eos_token_id
    if eos is None:
        eos = backend.tokenizer.eos_token_id
    if eos is None:
        raise InputError("this model has no <|endoftext|> token to condition the first window on")
    return eos


# ------------------------------------------------------------------------------- LAMBADA


def lambada_pair(text: str) -> tuple[str, str]:
    """lm-eval's lambada_openai: (the text without its last word, " " + that word), words
    split on single spaces."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def _lambada(
    backend: Backend, task: Task, docs: Sequence[str], options: EvalOptions,
    progress: Progress | None,
) -> TaskResult:  # fmt: skip
    from gpt2cli.scoring import encode_pair, plan_continuation, run_items

    tokenizer, eos = backend.tokenizer, _eos(backend)
    limited = options.limit is not None and len(docs) > options.limit
    docs = docs[: options.limit]
    items = []
    for number, text in enumerate(docs):
        try:
            if options.last_token:
                ids = tokenizer.encode(text)
                if not ids:
                    raise InputError("the text is empty")
                context_ids, target_ids = (ids[:-1] or [eos]), ids[-1:]
            else:
                context_ids, target_ids = encode_pair(tokenizer, *lambada_pair(text), eos)
            items.append(plan_continuation(context_ids, target_ids, options.ctx))
        except InputError as exc:
            raise InputError(f"{task.name} document {number}: {exc.message}") from None
    scores = run_items(backend, items, _score_options(options, greedy=True), progress)
    totals = PairTotals()
    for result in scores:
        totals.loglikelihoods.append(float(result.logprobs.sum(dtype=np.float64)))
        totals.correct.append(bool(result.greedy is not None and result.greedy.all()))
        totals.tokens += len(result.logprobs)
    if options.last_token:
        target = "the last BPE token, after every token before it (the paper's protocol)"
    else:
        target = (
            "' ' + the last word (split on ' '), after the text before it (lm-eval's "
            "lambada_openai)"
        )
    metrics = [
        _metric(task, "perplexity", document_perplexity(totals.loglikelihoods),
                "exp(-mean log-likelihood of the target per document)"),  # fmt: skip
        _metric(task, "acc", accuracy(totals.correct),
                "fraction of documents whose every target token is the greedy choice"),  # fmt: skip
    ]
    return TaskResult(task.name, len(docs), totals.tokens, metrics, f"target: {target}", limited,
                      totals.loglikelihoods)  # fmt: skip


# ------------------------------------------------------------------------------- CBT


def cbt_candidates(question: CBTQuestion) -> list[tuple[str, str]]:
    """(context, continuation) for each option: the 20 sentences, then " " + the question
    with the option in place of XXXXX."""
    context = " ".join(question.sentences)
    return [(context, " " + question.question.replace("XXXXX", option))
            for option in question.options]  # fmt: skip


def _cbt(
    backend: Backend, task: Task, docs: Sequence[CBTQuestion], options: EvalOptions,
    progress: Progress | None,
) -> TaskResult:  # fmt: skip
    from gpt2cli.scoring import encode_pair, plan_continuation, run_items

    tokenizer, eos = backend.tokenizer, _eos(backend)
    limited = options.limit is not None and len(docs) > options.limit
    docs = docs[: options.limit]
    items, owners = [], []
    for number, question in enumerate(docs):
        for context, continuation in cbt_candidates(question):
            try:
                context_ids, target_ids = encode_pair(tokenizer, context, continuation, eos)
                items.append(plan_continuation(context_ids, target_ids, options.ctx))
            except InputError as exc:
                raise InputError(f"{task.name} question {number}: {exc.message}") from None
            owners.append(number)
    scores = run_items(backend, items, _score_options(options, greedy=False), progress)
    by_question: list[list[float]] = [[] for _ in docs]
    tokens = 0
    for owner, result in zip(owners, scores, strict=True):
        by_question[owner].append(float(result.logprobs.sum(dtype=np.float64)))
        tokens += len(result.logprobs)
    correct = [
        question.options[int(np.argmax(lls))] == question.answer
        for question, lls in zip(docs, by_question, strict=True)
    ]
    metrics = [
        _metric(task, "acc", accuracy(correct),
                "fraction of questions whose answer gives the most likely question sentence"),
    ]  # fmt: skip
    definition = (
        "each of the options put in for XXXXX; the whole question sentence scored after the "
        "20 context sentences (joined with spaces, no detokenizer); the argmax is the choice"
    )
    return TaskResult(task.name, len(docs), tokens, metrics, definition, limited, by_question)


# ------------------------------------------------------------------------------- rolling


def disjoint_windows(n_tokens: int, ctx: int) -> list[Window]:
    """lm-eval's rolling windows (`get_rolling_token_windows` with context_len 1, made
    disjoint) over `[<|endoftext|>] + tokens`: the first window feeds <|endoftext|> and the
    first ctx - 1 tokens and scores ctx tokens; each later one scores the next ctx tokens
    after the one before them; the last, shorter one is fed a full ctx tokens, the earlier ones
    as context."""
    from gpt2cli.scoring import Window

    if n_tokens <= 0:
        return []
    first = min(ctx, n_tokens)
    windows = [Window(0, first + 1, 1)]
    predicted = first
    while predicted < n_tokens:
        width = min(ctx, n_tokens - predicted)
        end = predicted + width
        windows.append(Window(end - ctx, end + 1, end - width + 1))
        predicted = end
    return windows


def strided_windows(n_tokens: int, ctx: int, stride: int) -> list[Window]:
    """Overlapping windows of `ctx` fed tokens every `stride` tokens over
    `[<|endoftext|>] + tokens` (the Hugging Face guide's strided window, scoring.window_plan)."""
    from gpt2cli.scoring import window_plan

    return window_plan(n_tokens + 1, ctx + 1, stride)


_WHITESPACE = re.compile(r"\s+")


def count_words(text: str, rule: str) -> int:
    """lm-eval's count (re.split on whitespace runs: an empty string at either end counts), or
    for line-per-sentence corpora the words of each line plus its end of sentence."""
    if rule == "lines":
        return sum(len(line.split()) + 1 for line in text.split("\n") if line.strip())
    return len(_WHITESPACE.split(text))


def _rolling(
    backend: Backend, task: Task, docs: Sequence[str], options: EvalOptions,
    progress: Progress | None,
) -> TaskResult:  # fmt: skip
    from gpt2cli.scoring import ScoringItem, run_items, token_bytes_and_chars

    tokenizer, eos = backend.tokenizer, _eos(backend)
    limit = options.limit
    limited = False
    if task.stream == "lines":  # one stream of sentences: --limit counts lines
        lines = [line for doc in docs for line in doc.split("\n") if line.strip()]
        limited = limit is not None and len(lines) > limit
        docs = ["".join(line + "\n" for line in lines[:limit])] if lines else []
    elif task.stream is None and limit is not None:
        limited = len(docs) > limit
        docs = docs[:limit]
    detokenizer = DETOKENIZERS.get(task.detokenizer or "", detokenize.identity)
    all_ids = tokenizer.encode_batch([detokenizer(doc) for doc in docs])
    totals = RollingTotals()
    items: list[ScoringItem] = []
    cut: list[bool] = []
    for number, ids in enumerate(all_ids):
        if task.stream == "windows" and limit is not None:
            keep = limit * options.ctx
            cut.append(len(ids) > keep)
            limited = limited or len(ids) > keep
            ids = ids[:keep]
            limit = max(0, limit - -(-len(ids) // options.ctx))
            all_ids[number] = ids
        else:
            cut.append(False)
        if options.stride is None:
            windows = disjoint_windows(len(ids), options.ctx)
        else:
            windows = strided_windows(len(ids), options.ctx, options.stride)
        items.append(ScoringItem(list(ids), 1, [eos, *ids], windows))
    scores = run_items(backend, items, _score_options(options, greedy=False), progress)
    for doc, ids, result, was_cut in zip(docs, all_ids, scores, cut, strict=True):
        _add_document(totals, task, doc, ids, result, was_cut, tokenizer, token_bytes_and_chars)
    metrics = [_rolling_metric(task, name, totals) for name in task.metrics]
    per_document = [float(result.logprobs.sum(dtype=np.float64)) for result in scores]
    return TaskResult(task.name, totals.docs, totals.tokens, metrics,
                      _rolling_definition(task, options), limited, per_document)  # fmt: skip


def _add_document(
    totals: RollingTotals, task: Task, doc: str, ids: Sequence[int], result: TokenScores,
    was_cut: bool, tokenizer: Any, count_tokens: Callable[..., tuple[int, int]],
) -> None:  # fmt: skip
    logprobs = result.logprobs.astype(np.float64)
    totals.docs += 1
    totals.tokens += len(logprobs)
    totals.loglikelihood += float(logprobs.sum())
    totals.squares += float((logprobs**2).sum())
    if was_cut:  # a stream cut by --limit: the units of the scored tokens
        n_bytes, n_chars = count_tokens(tokenizer, ids, result.positions)
        totals.bytes += n_bytes
        totals.chars += n_chars
        return
    totals.words += count_words(doc, task.words)
    totals.bytes += len(doc.encode("utf-8"))
    totals.chars += len(doc)


_UNITS = {
    "word_perplexity": ("words", "exp(-sum(log-likelihood) / words of the original text)"),
    "byte_perplexity": ("bytes", "exp(-sum(log-likelihood) / UTF-8 bytes of the original text)"),
    "bits_per_byte": ("bytes", "-sum(log-likelihood) / UTF-8 bytes of the original text / ln 2"),
    "bits_per_char": ("chars", "-sum(log-likelihood) / characters of the original text / ln 2"),
}


def _rolling_metric(task: Task, name: str, totals: RollingTotals) -> Metric:
    unit, text = _UNITS[name]
    units = getattr(totals, unit)
    if name.endswith("perplexity"):
        figures = weighted_perplexity(totals, units)
    else:
        figures = bits_per_unit(totals, units)
    if name == "word_perplexity" and task.words == "lines":
        text += " (whitespace-separated words plus one end of sentence per line)"
    return _metric(task, name, figures, text)


def _rolling_definition(task: Task, options: EvalOptions) -> str:
    what = {"lines": "the sentences as one stream", "windows": "the text as one stream"}.get(
        task.stream or "", "each document"
    )
    detok = (
        "detokenized with lm-eval's wikitext detokenizer" if task.detokenizer else "as it is"
    )
    if options.stride is None:
        windows = (
            f"disjoint windows of {options.ctx} tokens, the first conditioned on <|endoftext|> "
            "(lm-eval's loglikelihood_rolling)"
        )
    else:
        windows = (
            f"OVERLAPPING windows of {options.ctx} tokens every {options.stride} tokens (--stride; "
            f"every token after the first window sees at least {options.ctx - options.stride} "
            "tokens of context), the first conditioned on <|endoftext|>; not lm-eval's windows"
        )
    return f"rolling log-likelihood of {what}, {detok}, in {windows}"
