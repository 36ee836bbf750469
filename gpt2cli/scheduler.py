"""The decode loop: a continuous-batching scheduler over one backend, shared by every front end.

Rows (one output sequence each) join the running batch between steps and leave it when they
end (end-of-sequence, length, stop string, cancellation), so a finished row's slot is refilled
at once. A joining row's prompt is prefilled, its first token chosen from that pass's logits
(so it is out before the next step), and its cache written into an ended row's slot in place,
right-aligned (left padding) to the batch's cache length; that token then goes through the next
step with the other rows' latest tokens. The whole cache is rebuilt (every row copied,
right-aligned to the longest) only when the batch grows, when half of it has ended with nothing
waiting, when a prompt is longer than the cache, or when the padding is worth trimming. Each
row's position ids count its real tokens only and the attention mask covers the padding, so a
row's tokens do not depend on its neighbours, and sampling is per row (decoding.row_generator).

One thread owns a Scheduler and drives it (step, run_until_done or serve); any thread may
submit rows, wait for them, read their step events and cancel them.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gpt2cli.backends.base import position_ids_from_mask
from gpt2cli.decoding import (
    BatchProcessors,
    GeneratedSequence,
    GenerationParams,
    Prompt,
    check_context,
    encode_prompt,
    fresh_seed,
    params_distribution,
    plan_prompt,
    row_generator,
    sample_token,
)
from gpt2cli.errors import plain_name

if TYPE_CHECKING:
    from gpt2cli.backends.base import Backend
    from gpt2cli.tokenizer import Tokenizer

FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"
DEFAULT_MAX_ROWS = 8
COMPACT_AT = 1.5  # cache length / longest row's tokens above which the cache is rebuilt
# Joining rows are prefilled together when at most this many tokens shorter than the group's
# longest: a padded position costs as much as a real one, and a forward's fixed cost (reading
# the weights, launching every kernel) is worth about this many positions of GPT-2 on a CPU.
PREFILL_SLACK = 16


# ---------------------------------------------------------------------------------------------
# Per-row logits processors (the one place that knows decoding's processor interface)
# ---------------------------------------------------------------------------------------------


class RowProcessors(Protocol):
    """The logits processors of one row, with their incremental state."""

    active: bool  # whether they can change any logits (else greedy argmaxes the raw logits)

    def __call__(self, logits: np.ndarray) -> None:
        """Process this row's (1, V) float32 logits in place."""

    def append(self, token: int) -> None:
        """Record the token chosen at this step."""


class _OneRow:
    """decoding.BatchProcessors over a batch of one row."""

    __slots__ = ("batch", "active")

    def __init__(self, params: GenerationParams, prompt_ids: Sequence[int], steps: int) -> None:
        self.batch = BatchProcessors(params, [prompt_ids], steps)
        self.active = self.batch.active

    def __call__(self, logits: np.ndarray) -> None:
        self.batch(logits)

    def append(self, token: int) -> None:
        self.batch.append(np.array([token], dtype=np.int64))


def row_processors(
    params: GenerationParams, prompt_ids: Sequence[int], steps: int
) -> RowProcessors:
    """The processors of one row of `prompt_ids` that may generate `steps` tokens."""
    return _OneRow(params, prompt_ids, steps)


# ---------------------------------------------------------------------------------------------
# Requests, handles and events
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowRequest:
    """One output sequence to generate: its planned sequence (filled in as tokens come), its
    parameters, and the run's seed (the row samples from row_generator(seed, prompt_index,
    sequence_index))."""

    sequence: GeneratedSequence
    params: GenerationParams
    seed: int = 0
    events: bool = False  # queue a StepEvent on the handle after every step (for other threads)


@dataclass(frozen=True)
class StepEvent:
    """What one step did to a row: the token (None when it ended without one: cancelled or
    failed), the text that became final (never half a character nor a possible stop string's
    start), and why it ended, once it has."""

    token: int | None
    text: str
    finish_reason: str | None = None


class Handle:
    """A submitted row. Any thread may wait for it, iterate its events or cancel it; its
    `sequence` may be read once it is finished."""

    def __init__(self, request: RowRequest) -> None:
        self.request = request
        self.sequence = request.sequence
        self.error: BaseException | None = None
        self._cancel = False
        self._done = threading.Event()
        self._events: queue.SimpleQueue[StepEvent] | None = (
            queue.SimpleQueue() if request.events else None
        )

    def cancel(self) -> None:
        """End this row before its next step (finish reason "cancelled"); the others go on."""
        self._cancel = True

    @property
    def cancelled(self) -> bool:
        return self._cancel

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the row has ended; False on timeout."""
        return self._done.wait(timeout)

    def events(self, timeout: float | None = None) -> Iterator[StepEvent]:
        """The row's step events as they come, up to the one that ends it."""
        if self._events is None:
            raise TypeError("this row was submitted without events=True")
        while True:
            event = self._events.get(timeout=timeout)
            yield event
            if event.finish_reason is not None:
                return

    __iter__ = events

    def _emit(self, event: StepEvent) -> None:
        if self._events is not None:
            self._events.put(event)

    def _end(self) -> None:
        self._done.set()


class _Row:
    """A row in the running batch (owned by the scheduler's thread)."""

    __slots__ = (
        "handle", "sequence", "params", "processors", "rng", "stops", "eos", "next_token",
        "reserved",
    )
    next_token: int  # the last token chosen (set by the prefill that admits the row)

    def __init__(self, handle: Handle) -> None:
        request = handle.request
        self.handle = handle
        self.sequence = seq = request.sequence
        self.params = params = request.params
        self.processors = row_processors(params, seq.prompt_ids, seq.budget)
        self.rng = (
            row_generator(request.seed, seq.prompt_index, seq.sequence_index)
            if params.do_sample
            else None
        )
        self.stops = tuple(s.encode("utf-8") for s in params.stop)
        self.eos = frozenset(params.eos_token_ids)
        self.reserved = len(seq.prompt_ids) + seq.budget


# ---------------------------------------------------------------------------------------------
# The scheduler
# ---------------------------------------------------------------------------------------------


class Scheduler:
    """Continuous batching on `backend`: at most `max_rows` rows decode together, holding at
    most `max_tokens` prompt plus new tokens between them (each row counted at its prompt
    length plus its budget from the time it joins; a row over it alone still runs, alone).

    `on_events`, when set, is called on the owning thread whenever rows have new step events
    in the middle of a step (after each prefill group: the joining rows' first tokens), so a
    front end can pass them on before the step ends."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_tokens: int | None = None,
        on_events: Callable[[], None] | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.backend = backend
        self.max_rows = max_rows
        self.max_tokens = max_tokens
        self._inbox: queue.SimpleQueue[Handle] = queue.SimpleQueue()
        self._waiting: deque[Handle] = deque()
        self._rows: list[_Row] = []
        self._idle: frozenset[int] = frozenset()  # slots of ended rows still in the batch
        self._cache: Any = None
        self._length = 0  # cache positions (the batch's common, left-padded length)
        self._lengths = np.zeros(0, dtype=np.int64)  # real tokens cached, per row
        self._reserved = 0
        self._token_bytes: dict[int, bytes] = {}
        self.steps = 0
        self.on_events = on_events

    # -- any thread ---------------------------------------------------------------------------

    def submit(self, request: RowRequest) -> Handle:
        """Queue a row; it joins the batch at a coming step. Safe from any thread."""
        handle = Handle(request)
        self._inbox.put(handle)
        return handle

    # -- the owning thread --------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Rows submitted and not yet in the batch."""
        return len(self._waiting) + self._inbox.qsize()

    @property
    def running(self) -> int:
        """Rows in the batch that have not ended."""
        return sum(1 for row in self._rows if not row.sequence.finished)

    def step(self) -> bool:
        """Retire ended rows, admit waiting ones, and run one decode step; False when there was
        nothing to run."""
        self._take_inbox()
        for row in self._rows:
            if row.handle.cancelled and not row.sequence.finished:
                self._finish(row, FINISH_CANCELLED)
        live = [i for i, row in enumerate(self._rows) if not row.sequence.finished]
        new = self._admit(len(live))
        ended = [i for i, row in enumerate(self._rows) if row.sequence.finished]
        changed = bool(new) or len(ended) != len(self._idle)
        if changed and not self._refill(live, ended, new):
            self._rebuild(live, new)
        if not self._rows:
            return False
        self._decode()
        self.steps += 1
        return True

    def run_until_done(self) -> None:
        """Step until every submitted row has ended."""
        while self.step():
            pass

    def serve(self, stop: threading.Event, poll: float = 0.05) -> None:
        """Step while rows come from other threads, until `stop` is set. An error in a step
        ends every row in flight with finish reason "error" (their handles hold it)."""
        while not stop.is_set():
            if not self._rows and not self._waiting:
                try:
                    self._waiting.append(self._inbox.get(timeout=poll))
                except queue.Empty:
                    continue
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - handed to every row's handle
                self.fail_all(exc)
        self.fail_all(None)

    # -- internals ----------------------------------------------------------------------------

    def _take_inbox(self) -> None:
        while True:
            try:
                self._waiting.append(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _admit(self, kept: int) -> list[_Row]:
        new: list[_Row] = []
        while self._waiting and kept + len(new) < self.max_rows:
            handle = self._waiting[0]
            if handle.cancelled:
                self._waiting.popleft()
                handle.sequence.finish_reason = FINISH_CANCELLED
                handle._emit(StepEvent(None, "", FINISH_CANCELLED))
                handle._end()
                continue
            seq = handle.sequence
            need = len(seq.prompt_ids) + seq.budget
            over = self.max_tokens is not None and self._reserved + need > self.max_tokens
            if over and (kept or new):
                break
            self._waiting.popleft()
            new.append(_Row(handle))
            self._reserved += need
        # Longest first, so that _prefill groups rows of similar length (a row's outputs do
        # not depend on its place in the batch).
        new.sort(key=lambda row: len(row.sequence.prompt_ids), reverse=True)
        return new

    def _prefill(self, new: list[_Row]) -> tuple[list[tuple[Any, np.ndarray]], np.ndarray]:
        """Prefill the joining rows' prompts and choose each row's first token from the pass's
        logits. The caches come back as join_rows parts (each a right-aligned cache and its
        rows) that hold the rows in order, with the prompts' lengths. Rows are prefilled in
        groups of similar length (`new` comes longest first), since a left-padded position
        costs as much as a real one."""
        prompts = [row.sequence.prompt_ids for row in new]
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        parts: list[tuple[Any, np.ndarray]] = []
        start = 0
        while start < len(new):
            width, end = int(lengths[start]), start + 1
            while end < len(new) and width - int(lengths[end]) <= PREFILL_SLACK:
                end += 1
            ids = np.zeros((end - start, width), dtype=np.int64)
            mask = np.zeros((end - start, width), dtype=np.int64)
            for i in range(start, end):
                ids[i - start, :] = new[i].params.pad_token_id
                ids[i - start, width - len(prompts[i]) :] = prompts[i]
                mask[i - start, width - len(prompts[i]) :] = 1
            positions = position_ids_from_mask(mask, width)
            result = self.backend.forward(ids, mask, positions, None, logits="last")
            parts.append((result.cache, np.arange(end - start, dtype=np.int64)))
            self._choose(new[start:end], result.logits)
            if self.on_events is not None:
                self.on_events()
            start = end
        return parts, lengths

    def _refill(self, live: list[int], ended: list[int], new: list[_Row]) -> bool:
        """Put the joining rows into the slots of ended ones, writing their caches into the
        batch's in place (no copy of the rows that go on); ended slots left over stay in the
        batch, idle, until enough of it is. False when that does not apply (more rows join
        than have ended, a prompt is longer than the cache, half the batch would idle, or the
        cache is worth compacting): the batch is then rebuilt."""
        if self._cache is None or len(new) > len(ended):
            return False
        refilled, idle = ended[: len(new)], ended[len(new) :]
        working = live + refilled
        if not working or len(idle) >= len(working):
            return False
        prompts = [len(row.sequence.prompt_ids) for row in new]
        if new and max(prompts) > self._length:
            return False
        lengths = self._lengths.copy()
        lengths[refilled] = prompts
        # Positions left of every row's tokens are masked padding that each step still reads
        # and copies: past this share of the cache, one rebuild to the longest row pays off.
        if self._length > COMPACT_AT * int(lengths[working].max()):
            return False
        if new:
            parts, _ = self._prefill(new)
            slots = np.asarray(refilled, dtype=np.int64)
            for cache, rows in parts:
                self._cache = self.backend.write_rows(self._cache, slots[: len(rows)], cache, rows)
                slots = slots[len(rows) :]
            for slot, row in zip(refilled, new, strict=True):
                self._rows[slot] = row  # one that ended at its first token idles like the others
        self._lengths = lengths
        self._idle = frozenset(idle)
        return True

    def _rebuild(self, keep: list[int], new: list[_Row]) -> None:
        """The batch of rows `keep` (indices into the current batch) then `new` (prefilled
        here, less those that ended at their first token), the cache right-aligned to the
        longest row."""
        parts: list[tuple[Any, np.ndarray]] = []
        lengths = [self._lengths[keep]]
        old, self._cache = self._cache, None
        if keep:
            parts.append((old, np.asarray(keep, dtype=np.int64)))
        if new:
            prefilled, prompt_lengths = self._prefill(new)
            going = np.array([not row.sequence.finished for row in new])
            if not keep and len(prefilled) == 1 and going.all():
                # the prefill's cache is the batch's: no copy
                self.backend.release(old)
                self._rows, self._idle, self._cache = new, frozenset(), prefilled[0][0]
                self._lengths = prompt_lengths
                self._length = int(prompt_lengths.max())
                return
            offset = 0
            for cache, rows in prefilled:
                kept = rows[going[offset : offset + len(rows)]]
                if len(kept):
                    parts.append((cache, kept))
                offset += len(rows)
            lengths.append(prompt_lengths[going])
            new = [row for row, goes in zip(new, going.tolist(), strict=True) if goes]
        self._lengths = np.concatenate(lengths)
        length = int(self._lengths.max()) if len(self._lengths) else 0
        self._rows = [self._rows[i] for i in keep] + new
        self._idle = frozenset()
        if self._rows:
            self._cache = self.backend.join_rows(parts, length)
        self.backend.release(old)  # after the join has read it
        self._length = length if self._rows else 0

    def _decode(self) -> None:
        rows, length, lengths = self._rows, self._length, self._lengths
        live = [i for i, row in enumerate(rows) if not row.sequence.finished]
        if not live:  # every row in the batch ended at its first token
            return
        tokens = np.array([[row.next_token] for row in rows], dtype=np.int64)
        mask = (np.arange(length + 1)[None, :] >= (length - lengths)[:, None]).astype(np.int64)
        # An idle row (ended, its slot not yet refilled) runs on, its output unused; its
        # position is held inside the model's table.
        positions = np.minimum(lengths, self.backend.info.n_positions - 1)[:, None]
        result = self.backend.forward(tokens, mask, positions, self._cache, logits="last")
        self._cache = result.cache
        self._length = length + 1
        lengths += 1
        logits = result.logits if len(live) == len(rows) else result.logits[live]
        self._choose([rows[i] for i in live], logits)

    def _choose(self, rows: list[_Row], logits: np.ndarray) -> None:
        """Each row's next token from its (V,) row of `logits` (its processors, then greedy or
        its own sampler), added to its sequence, with the step event and the end it brings."""
        sampled = [i for i, row in enumerate(rows) if row.rng is not None]
        processed = [i for i, row in enumerate(rows) if row.processors.active]
        if (sampled or processed) and not logits.flags.writeable:
            logits = logits.copy()
        for i in processed:
            rows[i].processors(logits[i : i + 1])
        greedy = len(sampled) < len(rows)
        chosen = np.argmax(logits, axis=1).tolist() if greedy else [0] * len(rows)
        for i in sampled:
            ids, probs = params_distribution(logits[i], rows[i].params)
            chosen[i] = int(sample_token(ids, probs, rows[i].rng.random()))
        for row, token in zip(rows, chosen, strict=True):
            seq = row.sequence
            seq.add(token, self._bytes_of(token, row.eos), row.stops)
            row.next_token = token
            if row.processors.active:
                row.processors.append(token)
            if row.handle._events is not None:
                row.handle._emit(StepEvent(token, seq.take_text(row.stops), seq.finish_reason))
            if seq.finished:
                self._reserved -= row.reserved
                row.handle._end()

    def _bytes_of(self, token: int, eos: frozenset[int]) -> bytes | None:
        if token in eos:
            return None
        piece = self._token_bytes.get(token)
        if piece is None:
            piece = self._token_bytes[token] = self.backend.tokenizer.token_bytes(token)
        return piece

    def _finish(self, row: _Row, reason: str) -> None:
        row.sequence.finish_reason = reason
        self._reserved -= row.reserved
        text = row.sequence.take_text(row.stops) if row.handle._events is not None else ""
        row.handle._emit(StepEvent(None, text, reason))
        row.handle._end()

    def fail_all(self, error: BaseException | None) -> None:
        """End every row in flight or waiting (error None: the scheduler is stopping). For the
        owning thread: serve() calls it, and so does a front end that drives step() itself."""
        self._take_inbox()
        handles = [row.handle for row in self._rows if not row.sequence.finished]
        handles += self._waiting
        for handle in handles:
            handle.error = error
            handle.sequence.finish_reason = FINISH_ERROR if error else FINISH_CANCELLED
            handle._emit(StepEvent(None, "", handle.sequence.finish_reason))
            handle._end()
        self._rows, self._waiting, self._idle = [], deque(), frozenset()
        self._cache, self._length = None, 0
        self._lengths = np.zeros(0, dtype=np.int64)
        self._reserved = 0


# ---------------------------------------------------------------------------------------------
# Generating for prompts (what the front ends call)
# ---------------------------------------------------------------------------------------------


def iter_sequences(
    tokenizer: Tokenizer,
    prompts: Iterable[Prompt],
    params: GenerationParams,
    context: int,
    name: Callable[[str], str] = plain_name,
) -> Iterator[GeneratedSequence]:
    """The output sequences of `prompts` in order, each prompt encoded when reached."""
    check_context(params, context, name)
    for index, prompt in enumerate(prompts):
        encoded = encode_prompt(tokenizer, prompt, params, context)
        yield from plan_prompt(prompt, encoded, params, context, index, name)


@dataclass
class GenerationUpdate:
    """After each step: the sequences planned since the last update, in input order (they fill
    in as later steps run)."""

    planned: list[GeneratedSequence] = field(default_factory=list)


def decode(
    backend: Backend,
    prompts: Iterable[Prompt],
    params: GenerationParams,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_tokens: int | None = None,
    name: Callable[[str], str] = plain_name,
) -> Iterator[GenerationUpdate]:
    """Generate for `prompts` (read and encoded as rows are needed) on one scheduler, yielding
    after every step; a finished row's slot is refilled at once."""
    seed = params.seed if params.seed is not None else fresh_seed()
    scheduler = Scheduler(backend, max_rows=max_rows, max_tokens=max_tokens)
    planned = iter_sequences(backend.tokenizer, prompts, params, backend.info.n_positions, name)
    more = True
    while True:
        update = GenerationUpdate()
        while more and scheduler.waiting < max_rows:
            seq = next(planned, None)
            if seq is None:
                more = False
                break
            update.planned.append(seq)
            scheduler.submit(RowRequest(seq, params, seed))
        ran = scheduler.step()
        if update.planned or ran:
            yield update
        if not ran and not more:
            return


def generate(
    backend: Backend,
    prompts: Sequence[str | Prompt],
    params: GenerationParams,
    batch_size: int = DEFAULT_MAX_ROWS,
    max_tokens: int | None = None,
) -> list[GeneratedSequence]:
    """Generate for `prompts` with at most `batch_size` rows (prompts x return sequences) in
    flight; sequences in input order."""
    items = (
        p if isinstance(p, Prompt) else Prompt(p, f"prompt {i}") for i, p in enumerate(prompts)
    )
    out: list[GeneratedSequence] = []
    for update in decode(backend, items, params, max_rows=batch_size, max_tokens=max_tokens):
        out.extend(update.planned)
    return out
