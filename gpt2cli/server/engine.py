"""The engine thread: the one thread that owns the model, the scheduler and every forward pass.

Request handlers never run model code. They submit rows (`Engine.submit`, admission-controlled:
`slots` rows decode together and `max_queue` requests may wait beyond them) and read each row's
step events from an asyncio queue that this thread fills with `loop.call_soon_threadsafe`
after every step; other model work (prompt logprobs, embeddings) goes in as a job
(`Engine.call`) run between two decode steps, awaited as an asyncio future.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from gpt2cli.backends.base import Backend
    from gpt2cli.scheduler import Handle, RowRequest, Scheduler, StepEvent
    from gpt2cli.session import Session
    from gpt2cli.tokenizer import Tokenizer


class QueueFull(Exception):
    """More requests than the slots plus the queue hold: the caller answers 429."""


class NotReady(Exception):
    """The model is still loading (or failed to): the caller answers 503."""


@dataclass
class Subscription:
    """A row whose step events go to an asyncio queue on `loop`, as (tag, event) pairs."""

    handle: Handle
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[int, StepEvent]]
    tag: int = 0


class Ticket:
    """A request's place in the engine (counted against slots + max_queue until released)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._released = False
        self.subscriptions: list[Subscription] = []

    def submit(
        self, request: RowRequest, events: asyncio.Queue[tuple[int, StepEvent]], tag: int = 0
    ) -> Subscription:
        """Queue one row; its events arrive on `events` as (tag, event)."""
        sub = self._engine._submit(request, events, tag)
        self.subscriptions.append(sub)
        return sub

    def cancel(self) -> None:
        for sub in self.subscriptions:
            sub.handle.cancel()

    def release(self) -> None:
        """Cancel what is left of the request and free its place."""
        if not self._released:
            self._released = True
            self.cancel()
            self._engine._release()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Engine:
    """One thread that loads the session's model, then runs its scheduler and jobs."""

    def __init__(self, session: Session, slots: int, max_queue: int) -> None:
        self.session = session
        self.slots = slots
        self.max_queue = max_queue
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.loaded = threading.Event()  # set when loading ended (well or not)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future]] = (
            queue.SimpleQueue()
        )
        self._subs: list[Subscription] = []
        self._new_subs: queue.SimpleQueue[Subscription] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted = 0
        self.scheduler: Scheduler | None = None
        self.backend: Backend | None = None
        self.running = 0
        self.waiting = 0
        self._thread = threading.Thread(target=self._main, name="gpt2cli-engine", daemon=True)
        self.on_step: Callable[[Engine], None] | None = None

    # -- any thread ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every row in flight and stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def cancel_all(self) -> None:
        """Cancel every row in flight or waiting (shutdown)."""
        for sub in list(self._subs):
            sub.handle.cancel()
        self._wake.set()

    def tokenizer(self) -> Tokenizer:
        """The loaded model's tokenizer; NotReady while it loads."""
        if not self.ready.is_set():
            raise NotReady
        assert self.backend is not None
        return self.backend.tokenizer

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return self._admitted

    def admit(self) -> Ticket:
        """A place for one request, or QueueFull when slots + max_queue are taken."""
        if not self.ready.is_set():
            raise NotReady
        with self._lock:
            if self._admitted >= self.slots + self.max_queue:
                raise QueueFull
            self._admitted += 1
        return Ticket(self)

    async def call(self, job: Callable[[Backend], Any]) -> Any:
        """Run `job(backend)` on the engine thread between decode steps; its result."""
        if not self.ready.is_set():
            raise NotReady
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((lambda: job(self.backend), future))
        self._wake.set()
        return await asyncio.wrap_future(future)

    def _submit(
        self, request: RowRequest, events: asyncio.Queue[tuple[int, StepEvent]], tag: int
    ) -> Subscription:
        assert self.scheduler is not None
        loop = asyncio.get_running_loop()
        handle = self.scheduler.submit(request)
        sub = Subscription(handle, loop, events, tag)
        self._new_subs.put(sub)
        self._wake.set()
        return sub

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    # -- the engine thread --------------------------------------------------------------------

    def _main(self) -> None:
        from gpt2cli.scheduler import Scheduler

        try:
            self.backend = self.session.load()
            # Rows hold up to the context each; the token budget is what they reserve.
            self.scheduler = Scheduler(self.backend, max_rows=self.slots, on_events=self._pump)
        except BaseException as exc:  # noqa: BLE001 - reported by the server, which exits
            self.error = exc
            self.loaded.set()
            return
        self.ready.set()
        self.loaded.set()
        try:
            self._loop()
        finally:
            self.ready.clear()
            self._fail_everything()

    def _loop(self) -> None:
        scheduler = self.scheduler
        assert scheduler is not None
        while not self._stop.is_set():
            self._run_jobs()
            self._take_subs()
            try:
                ran = scheduler.step()
            except Exception as exc:  # noqa: BLE001 - ends the rows in flight, not the server
                scheduler.fail_all(exc)
                ran = True
            self._pump()
            self.running, self.waiting = scheduler.running, scheduler.waiting
            if self.on_step is not None:
                self.on_step(self)
            if not ran and not self._subs:
                self._wake.wait(0.05)
                self._wake.clear()

    def _run_jobs(self) -> None:
        while True:
            try:
                job, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting handler
                future.set_exception(exc)

    def _take_subs(self) -> None:
        while True:
            try:
                self._subs.append(self._new_subs.get_nowait())
            except queue.Empty:
                return

    def _pump(self) -> None:
        """Move every subscribed row's new step events to its handler's queue."""
        kept: list[Subscription] = []
        for sub in self._subs:
            done = False
            try:
                for event in sub.handle.events(timeout=0):
                    _deliver(sub, event)
                    done = event.finish_reason is not None
            except queue.Empty:
                pass
            if not done:
                kept.append(sub)
        self._subs = kept

    def _fail_everything(self) -> None:
        if self.scheduler is not None:
            self.scheduler.fail_all(None)
            self._take_subs()
            self._pump()
        while True:
            try:
                _, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            future.cancel()


def _deliver(sub: Subscription, event: StepEvent) -> None:
    try:
        sub.loop.call_soon_threadsafe(sub.events.put_nowait, (sub.tag, event))
    except RuntimeError:  # the loop has closed: nobody is listening any more
        pass


# ---------------------------------------------------------------------------------------------
# Jobs: per-token log-probabilities of a token sequence (OpenAI's logprobs, echo)
# ---------------------------------------------------------------------------------------------


@dataclass
class TokenLogprob:
    """A token's log-probability given the tokens before it, and the top alternatives."""

    logprob: float | None  # None for a sequence's first token (nothing predicts it)
    top: list[tuple[int, float]] | None


class LogprobTracker:
    """Log-probabilities of a growing token sequence under the raw model (no sampling
    parameters applied, as OpenAI and vLLM report them), one cached forward pass per call.
    Engine-thread only."""

    def __init__(self, top_n: int) -> None:
        self.top_n = top_n
        self.cache: Any = None
        self.length = 0
        self.last: np.ndarray | None = None  # (V,) logits after the last token fed

    def extend(self, backend: Backend, tokens: list[int]) -> list[TokenLogprob]:
        """Feed `tokens`; the log-probability of each given the sequence before it."""
        import numpy as np

        if not tokens:
            return []
        n = len(tokens)
        ids = np.asarray(tokens, dtype=np.int64)[None, :]
        mask = np.ones((1, self.length + n), dtype=np.int64)
        positions = np.arange(self.length, self.length + n, dtype=np.int64)[None, :]
        result = backend.forward(ids, mask, positions, self.cache, logits="all")
        logits = np.asarray(result.logits[0], dtype=np.float32)
        predictors = [self.last] if self.last is not None else []
        rows = np.concatenate([np.stack(predictors), logits[:-1]]) if predictors else logits[:-1]
        targets = tokens if predictors else tokens[1:]
        out = [] if predictors else [TokenLogprob(None, None)]
        out += _logprobs(rows, targets, self.top_n)
        self.cache, self.last = result.cache, logits[-1].copy()
        self.length += n
        return out


def _logprobs(rows: np.ndarray, targets: list[int], top_n: int) -> list[TokenLogprob]:
    """Each row's (R, V) log-probability of its target and its top_n tokens (float64 sums, as
    `gpt2cli score`)."""
    import numpy as np

    from gpt2cli.scoring import score_rows

    if not targets:
        return []
    picked = score_rows(rows, np.asarray(targets, dtype=np.int64)).logprobs
    out = []
    for row, logprob in zip(rows, picked.tolist(), strict=True):
        top = None
        if top_n > 0:
            # score_rows' arithmetic, so the chosen token's entry equals its logprob.
            shifted = row - row.max()
            norm = np.log(np.exp(shifted).sum(dtype=np.float64))
            best = np.argpartition(-row, top_n - 1)[:top_n]
            best = best[np.argsort(-row[best], kind="stable")]
            top = [(int(t), float(np.float64(shifted[t]) - norm)) for t in best]
        out.append(TokenLogprob(logprob, top))
    return out
