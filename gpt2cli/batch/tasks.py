"""The work of a batch job on one opened model: rows in, (row, result fields) out, in input order.

A row that fails (too long, empty, bad parameters) gets its `error` and the others go on. The
result fields are the CLI's JSON record fields (records.py) less `index` and `source`: a batch row
is named by its id. Generation seeds come from the job's seed and the row's id, never its
position: a resumed, reordered or distributed job gives each row the same text.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

from gpt2cli.errors import InputError
from gpt2cli.session import BLOCK_TEXTS

if TYPE_CHECKING:
    from gpt2cli.batch.rows import Row
    from gpt2cli.decoding import GeneratedSequence, GenerationParams
    from gpt2cli.embedding import EmbedOptions
    from gpt2cli.session import ModelOptions, Session

TASKS = ("generate", "embed", "score")
Result = tuple["Row", dict[str, Any] | None]  # the row (error set on failure) and its fields


@dataclass(frozen=True)
class TaskSpec:
    """What a job computes, independent of where it runs (pickled to Ray workers)."""

    task: str  # one of TASKS
    model: ModelOptions
    batch_size: int
    overrides: dict[str, Any] = field(default_factory=dict)  # generate: the parameters
    seed: int = 0  # generate: the job's seed (rows derive theirs from it and their id)
    full_text: bool = True  # generate: generated_text starts with the prompt
    embed: EmbedOptions | None = None
    score: dict[str, Any] = field(default_factory=dict)  # ctx, stride, prefix_eos

    def options(self) -> dict[str, Any]:
        """The options that decide each row's result (a resumed job must have the same)."""
        shown: dict[str, Any] = {"task": self.task}
        if self.task == "generate":
            overrides = {k: list(v) if isinstance(v, tuple) else v
                         for k, v in self.overrides.items() if v is not None and k != "seed"}
            shown.update(parameters=overrides, seed=self.seed, full_text=self.full_text)
        elif self.task == "embed":
            assert self.embed is not None
            e = self.embed
            shown.update(layer=e.layer, pooling=e.pooling, normalize=e.normalize,
                         truncate=e.truncate)
        else:
            shown.update(self.score)
        return shown


def row_seed(seed: int, row_id: str) -> int:
    """A row's seed: from the job's seed and the row's id (63 bits)."""
    digest = hashlib.sha256(f"{seed}\0{row_id}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def open_task(spec: TaskSpec, session: Session, name: Callable[[str], str]) -> Task:
    """The task of `spec` on `session`; job-wide option errors (InputError) are raised here,
    before the weights load, naming parameters with `name`."""
    if spec.task == "generate":
        return GenerateTask(spec, session, name)
    if spec.task == "embed":
        return EmbedTask(spec, session)
    return ScoreTask(spec, session)


class Task:
    """Rows in, results out, in input order."""

    def run(self, rows: Iterable[Row]) -> Iterator[Result]:
        raise NotImplementedError


class GenerateTask(Task):
    """Continuous batching over the rows on the session's scheduler: rows are planned as slots
    free up and each leaves when all of its sequences have ended."""

    def __init__(self, spec: TaskSpec, session: Session, name: Callable[[str], str]) -> None:
        from gpt2cli.decoding import check_context

        self.spec = spec
        self.session = session
        self.params = session.generation_params(spec.overrides, name)
        check_context(self.params, session.info.n_positions, name)

    def _row_params(self, row: Row) -> GenerationParams:
        if not row.params:
            return self.params
        from gpt2cli.batch.rows import OPENAI_NAMES

        to_openai = {engine: openai for openai, engine in OPENAI_NAMES.items()}
        params = self.session.generation_params(
            {**self.spec.overrides, **row.params},
            lambda key: "body." + to_openai.get(key, key),
        )
        return params

    def _plan(self, row: Row, params: GenerationParams) -> list[GeneratedSequence]:
        from gpt2cli.decoding import Prompt, check_context, encode_prompt, plan_prompt
        from gpt2cli.errors import plain_name

        backend = self.session.backend
        context = backend.info.n_positions
        check_context(params, context, plain_name)
        assert row.text is not None
        prompt = Prompt(row.text, row.id)
        encoded = encode_prompt(backend.tokenizer, prompt, params, context)
        return plan_prompt(prompt, encoded, params, context, 0)

    def run(self, rows: Iterable[Row]) -> Iterator[Result]:
        from gpt2cli.records import sequence_record
        from gpt2cli.scheduler import RowRequest, Scheduler

        limit = self.spec.batch_size
        scheduler = Scheduler(self.session.backend, max_rows=limit)
        pending: deque[tuple[Row, list[GeneratedSequence]]] = deque()
        source = iter(rows)
        more = True
        while True:
            while more and scheduler.waiting < limit:
                row = next(source, None)
                if row is None:
                    more = False
                    break
                sequences: list[GeneratedSequence] = []
                if row.error is None:
                    try:
                        params = self._row_params(row)
                        sequences = self._plan(row, params)
                    except InputError as exc:
                        row.error = _without_where(exc, row.id)
                seed = row.params.get("seed")
                if seed is None:
                    seed = row_seed(self.spec.seed, row.id)
                for seq in sequences:
                    scheduler.submit(RowRequest(seq, params, seed))
                pending.append((row, sequences))
            ran = scheduler.step()
            while pending and all(seq.finished for seq in pending[0][1]):
                row, sequences = pending.popleft()
                if row.error is not None:
                    yield row, None
                    continue
                first = sequences[0]
                yield row, {
                    "prompt": first.prompt.text,
                    "token_count": len(first.prompt_ids),
                    "truncated_tokens": first.truncated_tokens,
                    "sequences": [sequence_record(s, self.spec.full_text) for s in sequences],
                }
            if not ran and not more:
                if pending:  # a row the scheduler no longer holds: never leave it unanswered
                    raise RuntimeError("generate: rows left unfinished with nothing running")
                return


def _without_where(exc: InputError, row_id: str) -> str:
    """An error's message without the row's own id in front (the record carries the id)."""
    text = exc.render()
    prefix = f"{row_id}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    source = iter(rows)
    while chunk := list(islice(source, size)):
        yield chunk


class EmbedTask(Task):
    """Rows tokenized one by one (a bad one fails alone), embedded together."""

    def __init__(self, spec: TaskSpec, session: Session) -> None:
        assert spec.embed is not None
        self.settings: EmbedOptions = spec.embed
        self.session = session
        if self.settings.layer is not None:
            session.info.hidden_state_index(self.settings.layer)

    def run(self, rows: Iterable[Row]) -> Iterator[Result]:
        for chunk in _chunks(rows, BLOCK_TEXTS):
            encoded = []
            for row in chunk:
                if row.error is not None:
                    continue
                assert row.text is not None
                try:
                    (item,) = self.session.encode_for_embedding(
                        [row.text], [row.id], self.settings.truncate
                    )
                except InputError as exc:
                    row.error = _without_where(exc, row.id)
                    continue
                encoded.append((row, item))
            results = self.session.embed([item for _, item in encoded], self.settings)
            by_row = {id(row): result for (row, _), result in zip(encoded, results, strict=True)}
            for row in chunk:
                result = by_row.get(id(row))
                if result is None:
                    yield row, None
                else:
                    yield row, {
                        "token_count": result.token_count,
                        "truncated_tokens": result.truncated_tokens,
                        "embedding": result.vector.tolist(),
                    }


class ScoreTask(Task):
    """Whole texts scored with the strided window, as `gpt2cli score` does."""

    def __init__(self, spec: TaskSpec, session: Session) -> None:
        from gpt2cli.scoring import ScoreOptions, check_window

        s = spec.score
        context = session.info.n_positions
        ctx = s.get("ctx") or context
        stride = s.get("stride") or max(1, ctx // 2)
        check_window(ctx, stride, context)
        self.options = ScoreOptions(ctx=ctx, stride=stride, prefix_eos=s.get("prefix_eos", True),
                                    batch_size=spec.batch_size)  # fmt: skip
        self.spec = spec
        self.session = session

    def _settings(self) -> dict[str, Any]:
        from gpt2cli.records import score_settings

        o = self.options
        first = "after <|endoftext|>" if o.prefix_eos else "not scored"
        return score_settings(o.ctx, o.stride, first, self.session.info.source,
                              self.session.backend.name, self.spec.model.dtype)

    def _score(self, rows: list[Row]) -> list[dict[str, Any] | None]:
        from gpt2cli.records import score_record

        try:
            results = self.session.score([row.text or "" for row in rows], self.options)
        except InputError as exc:
            if len(rows) > 1:  # find the row at fault: score them one by one
                return [self._score([row])[0] for row in rows]
            rows[0].error = _without_where(exc, rows[0].id)
            return [None]
        settings = self._settings()
        out: list[dict[str, Any] | None] = []
        for result in results:
            record = score_record(result, "")
            del record["index"], record["source"]
            out.append({**record, **settings})
        return out

    def run(self, rows: Iterable[Row]) -> Iterator[Result]:
        for chunk in _chunks(rows, BLOCK_TEXTS):
            good = [row for row in chunk if row.error is None]
            fields = dict(zip(map(id, good), self._score(good), strict=True)) if good else {}
            for row in chunk:
                yield row, fields.get(id(row))
