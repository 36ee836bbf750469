"""OpenAI's API: /v1/completions (streaming, logprobs, echo), /v1/models, /v1/embeddings.

Request fields take the parameter table's names (gpt2cli.generation_params.PARAMETERS), with
OpenAI's two renamings (`max_tokens`, `n`); unknown fields are ignored, as OpenAI clients send
more than any server implements.
"""

from __future__ import annotations

import asyncio
import codecs
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gpt2cli.errors import InputError
from gpt2cli.generation_params import BY_NAME, PARAMETERS
from gpt2cli.server.common import ApiError, ServerState, json_object, json_type, server_state

if TYPE_CHECKING:
    from gpt2cli.decoding import GeneratedSequence, GenerationParams
    from gpt2cli.server.engine import LogprobTracker, Ticket, TokenLogprob
    from gpt2cli.tokenizer import Tokenizer

router = APIRouter()

# OpenAI's field → the parameter table's name, where they differ.
OPENAI_NAMES = {"max_tokens": "max_new_tokens", "n": "num_return_sequences"}
TABLE_TO_OPENAI = {table: openai for openai, table in OPENAI_NAMES.items()}
DEFAULT_MAX_TOKENS = 16  # OpenAI's
MAX_LOGPROBS = 20
MAX_PROMPTS = 1024


@dataclass
class CompletionPlan:
    """A checked /v1/completions request."""

    prompts: list[tuple[str, list[int]]]  # (text, ids) per prompt
    params: GenerationParams | None  # None: max_tokens 0, nothing to generate
    budget: int
    n: int
    seed: int
    echo: bool
    logprobs: int | None
    stream: bool
    include_usage: bool


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def _field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ApiError(400, f"{name}: expected {kind.__name__}, got {json_type(value)}", param=name)
    return value


def _prompts(
    value: Any, tokenizer: Tokenizer, field: str = "prompt"
) -> list[tuple[str, list[int]]]:
    """OpenAI's prompt forms: a string, a list of strings, token ids, a list of id lists
    (`field`: the request field that holds them, `prompt` or `input`)."""

    def ids_of(item: list[Any], where: str) -> list[int]:
        if not item:
            raise ApiError(400, f"{where}: the prompt is empty", param=field)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            raise ApiError(400, f"{where}: token ids must be integers", param=field)
        try:
            tokenizer.check_ids(item)
        except InputError as exc:
            raise ApiError(400, f"{where}: {exc.render()}", param=field) from None
        return list(item)

    def text_of(item: str, where: str) -> tuple[str, list[int]]:
        if "\0" in item:
            raise ApiError(400, f"{where}: contains a NUL character", param=field)
        ids = tokenizer.encode(item)
        if not ids:
            raise ApiError(400, f"{where}: the prompt is empty (no tokens)", param=field)
        return item, ids

    if value is None:
        raise ApiError(400, f"{field}: required", param=field)
    if isinstance(value, str):
        return [text_of(value, field)]
    if not isinstance(value, list) or not value:
        raise ApiError(
            400, f"{field}: expected a string, a list of strings, token ids or a list of token id "
            f"lists, got {json_type(value) if value != [] else 'an empty list'}", param=field
        )
    if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        ids = ids_of(value, field)  # one prompt of token ids (the context bounds its length)
        return [(tokenizer.decode(ids), ids)]
    if len(value) > MAX_PROMPTS:
        raise ApiError(400, f"{field}: {len(value)} prompts, more than {MAX_PROMPTS}",
                       param=field)
    out = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if isinstance(item, str):
            out.append(text_of(item, where))
        elif isinstance(item, list):
            ids = ids_of(item, where)
            out.append((tokenizer.decode(ids), ids))
        else:
            raise ApiError(400, f"{where}: expected a string or token ids, got {json_type(item)}",
                           param=field)
    return out


def plan_completion(state: ServerState, body: dict[str, Any]) -> CompletionPlan:
    """Check a /v1/completions body before anything is queued (runs in a worker thread)."""
    from gpt2cli.decoding import fresh_seed
    from gpt2cli.request_formats import check_type

    session = state.session
    context = session.info.n_positions
    overrides: dict[str, Any] = {}
    for parameter in PARAMETERS:
        field = TABLE_TO_OPENAI.get(parameter.name, parameter.name)
        value = body.get(field)
        if value is None and field != parameter.name:
            value = body.get(parameter.name)  # the table's own name, as an extra
            field = parameter.name if value is not None else field
        if value is None:
            continue
        try:
            overrides[parameter.name] = check_type(parameter.name, value, field)
        except InputError as exc:
            raise ApiError(400, exc.render(), param=field) from None
    echo = _field(body, "echo", bool, False)
    stream = _field(body, "stream", bool, False)
    logprobs = _field(body, "logprobs", int)
    if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        raise ApiError(400, f"logprobs: must be in 0..{MAX_LOGPROBS}, got {logprobs}",
                       param="logprobs")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options: expected an object", param="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise ApiError(400, "stream_options.include_usage: expected a boolean, got "
                       f"{json_type(include_usage)}", param="stream_options.include_usage")
    max_tokens = overrides.get("max_new_tokens")
    if max_tokens is None and "max_length" not in overrides:
        max_tokens = overrides["max_new_tokens"] = DEFAULT_MAX_TOKENS
    if max_tokens == 0:
        if not echo:
            raise ApiError(400, "max_tokens: 0 needs echo (it returns the prompt only)",
                           param="max_tokens")
        del overrides["max_new_tokens"]
    prompts = _prompts(body.get("prompt"), state.engine.tokenizer())
    params: GenerationParams | None
    try:
        params = session.generation_params(overrides)
    except InputError as exc:
        raise ApiError.from_input(exc, TABLE_TO_OPENAI) from None
    n = params.num_return_sequences
    budget = 0 if max_tokens == 0 else params.new_token_budget(0)
    longest = max(len(ids) for _, ids in prompts)
    if max_tokens != 0:
        if params.max_new_tokens is None:
            budget = params.max_length - longest
            if budget < 1:
                raise ApiError(400, f"max_length: {params.max_length} leaves nothing to "
                               f"generate after a prompt of {longest} tokens",
                               param="max_length")
        if longest + budget > context:
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens, but you requested "
                f"{longest + budget} tokens ({longest} in the prompt, {budget} for the "
                "completion). Reduce the prompt or max_tokens.",
                param="max_tokens",
                code="context_length_exceeded",
            )
    else:
        params = None
        if longest > context:
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens, but the prompt is "
                f"{longest} tokens.",
                param="max_tokens",
                code="context_length_exceeded",
            )
    seed = overrides.get("seed")
    return CompletionPlan(
        prompts, params, budget, n, fresh_seed() if seed is None else seed, echo, logprobs,
        stream, include_usage,
    )


# ---------------------------------------------------------------------------------------------
# Log-probabilities in OpenAI's legacy completions shape
# ---------------------------------------------------------------------------------------------


class LogprobsBuilder:
    """OpenAI's `logprobs` object for one choice, built as tokens come."""

    def __init__(self, tokenizer: Tokenizer, offset: int = 0) -> None:
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.offset = offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def piece(self, token: int) -> str:
        data = self.tokenizer.token_bytes(token)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in data)

    def add(self, tokens: Sequence[int], scores: Sequence[TokenLogprob]) -> dict[str, Any]:
        """Append tokens; the part of the object they make (for a streamed chunk)."""
        part: dict[str, list[Any]] = {
            "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []
        }
        for token, score in zip(tokens, scores, strict=True):
            top = None
            if score.top is not None:
                top = {}
                for t, lp in score.top:
                    top.setdefault(self.piece(t), lp)
            values = (self.piece(token), score.logprob, top, self.offset)
            for key, value in zip(part, values, strict=True):
                part[key].append(value)
            self.offset += len(self.decoder.decode(self.tokenizer.token_bytes(token)))
        for key, values in part.items():
            getattr(self, key).extend(values)
        return part

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs,
                "top_logprobs": self.top_logprobs, "text_offset": self.text_offset}


async def _track(state: ServerState, tracker: LogprobTracker, tokens: list[int]) -> list:
    return await state.engine.call(lambda backend: tracker.extend(backend, tokens))


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


def _finish(reason: str | None) -> str | None:
    return {"cancelled": "abort"}.get(reason or "", reason) if reason else None


@router.post("/v1/completions")
async def completions(request: Request) -> Any:
    from starlette.concurrency import run_in_threadpool

    state = server_state(request)
    started = time.perf_counter()
    body = await json_object(request)
    plan = await run_in_threadpool(plan_completion, state, body)
    ticket = state.engine.admit()
    try:
        prompt_tokens = sum(len(ids) for _, ids in plan.prompts)
        state.metrics.prompt_tokens.inc(prompt_tokens)
        run = _Completion(state, plan, ticket, started)
        if plan.stream:
            from sse_starlette.sse import EventSourceResponse

            return EventSourceResponse(run.stream(), sep="\n", ping=15)
        try:
            return JSONResponse(await run.whole())
        finally:
            ticket.release()
    except BaseException:
        ticket.release()
        raise


class _Completion:
    """One /v1/completions request on the engine."""

    def __init__(
        self, state: ServerState, plan: CompletionPlan, ticket: Ticket, started: float
    ) -> None:
        from gpt2cli.decoding import GeneratedSequence, Prompt

        self.state = state
        self.plan = plan
        self.ticket = ticket
        self.started = started
        self.deadline = started + state.config.timeout
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.events: asyncio.Queue = asyncio.Queue()
        self.tokenizer = state.engine.tokenizer()
        self.sequences: list[GeneratedSequence] = []
        for p, (text, ids) in enumerate(plan.prompts):
            for s in range(plan.n):
                self.sequences.append(
                    GeneratedSequence(p, s, Prompt(text, f"prompt[{p}]"), list(ids), 0,
                                      plan.budget)
                )

    def _submit(self) -> None:
        from gpt2cli.scheduler import RowRequest

        if self.plan.params is None:
            return
        for tag, seq in enumerate(self.sequences):
            self.ticket.submit(RowRequest(seq, self.plan.params, self.plan.seed, events=True),
                               self.events, tag)

    async def _next_event(self) -> tuple[int, Any]:
        remaining = self.deadline - time.perf_counter()
        try:
            return await asyncio.wait_for(self.events.get(), max(remaining, 0.001))
        except asyncio.TimeoutError:
            self.ticket.cancel()
            raise ApiError(
                504, f"the request timed out after {self.state.config.timeout:g} s (--timeout)",
                code="timeout", kind="timeout_error",
            ) from None

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.state.model_name, "choices": choices, **extra}

    def _usage(self) -> dict[str, int]:
        prompt = sum(len(ids) for _, ids in self.plan.prompts)
        completion = sum(len(seq.token_ids) for seq in self.sequences)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def _observe(self, last: list[float | None]) -> None:
        """Time-to-first-token or inter-token latency of a token just received."""
        now = time.perf_counter()
        metrics = self.state.metrics
        if last[0] is None:
            metrics.ttft.observe(now - self.started)
        else:
            metrics.itl.observe(now - last[0])
        last[0] = now
        metrics.generated_tokens.inc()

    async def _generate(self) -> AsyncIterator[tuple[int, Any]]:
        """Every row's events until each has ended."""
        self._submit()
        left = len(self.sequences) if self.plan.params is not None else 0
        last: list[float | None] = [None]
        while left:
            tag, event = await self._next_event()
            if event.token is not None:
                self._observe(last)
            if event.finish_reason is not None:
                left -= 1
                if event.finish_reason == "error":
                    raise ApiError(500, "the model failed while generating this request",
                                   kind="server_error")
            yield tag, event

    async def whole(self) -> dict[str, Any]:
        async for _ in self._generate():
            pass
        choices = []
        for index, seq in enumerate(self.sequences):
            text = (seq.prompt.text if self.plan.echo else "") + seq.text
            choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None,
                                      "finish_reason": _finish(seq.finish_reason or "length")}
            if self.plan.logprobs is not None:
                choice["logprobs"] = await self._whole_logprobs(seq)
            choices.append(choice)
        return self._chunk(choices, usage=self._usage())

    async def _whole_logprobs(self, seq: GeneratedSequence) -> dict[str, Any]:
        from gpt2cli.server.engine import LogprobTracker

        assert self.plan.logprobs is not None
        tracker = LogprobTracker(self.plan.logprobs)
        tokens = list(seq.prompt_ids) + list(seq.token_ids)
        scores = await _track(self.state, tracker, tokens)
        builder = LogprobsBuilder(self.tokenizer)
        if self.plan.echo:
            builder.add(tokens, scores)
        else:
            builder.add(seq.token_ids, scores[len(seq.prompt_ids):])
        return builder.as_dict()

    async def stream(self) -> AsyncIterator[str]:
        import json

        from gpt2cli.server.engine import LogprobTracker

        trackers: dict[int, LogprobTracker] = {}
        builders: dict[int, LogprobsBuilder] = {}
        try:
            if self.plan.echo:
                choices = []
                for index, seq in enumerate(self.sequences):
                    choice = {"index": index, "text": seq.prompt.text, "logprobs": None,
                              "finish_reason": None}
                    if self.plan.logprobs is not None:
                        trackers[index] = LogprobTracker(self.plan.logprobs)
                        builders[index] = LogprobsBuilder(self.tokenizer)
                        scores = await _track(self.state, trackers[index], seq.prompt_ids)
                        choice["logprobs"] = builders[index].add(seq.prompt_ids, scores)
                    choices.append(choice)
                yield json.dumps(self._chunk(choices))
            async for tag, event in self._generate():
                seq = self.sequences[tag]
                choice = {"index": tag, "text": event.text, "logprobs": None,
                          "finish_reason": _finish(event.finish_reason)}
                if self.plan.logprobs is not None and event.token is not None:
                    if tag not in trackers:
                        trackers[tag] = LogprobTracker(self.plan.logprobs)
                        builders[tag] = LogprobsBuilder(self.tokenizer)
                        first = list(seq.prompt_ids) + [event.token]
                        scores = (await _track(self.state, trackers[tag], first))[-1:]
                    else:
                        scores = await _track(self.state, trackers[tag], [event.token])
                    choice["logprobs"] = builders[tag].add([event.token], scores)
                if event.text or event.finish_reason is not None or choice["logprobs"]:
                    yield json.dumps(self._chunk([choice]))
            if self.plan.params is None:  # max_tokens 0: the prompt was the whole answer
                yield json.dumps(self._chunk([
                    {"index": i, "text": "", "logprobs": None, "finish_reason": "length"}
                    for i in range(len(self.sequences))
                ]))
            if self.plan.include_usage:
                yield json.dumps(self._chunk([], usage=self._usage()))
        except ApiError as exc:
            self.state.metrics.count_error(exc.status)
            yield json.dumps(exc.body())
        finally:
            self.ticket.release()
        yield "[DONE]"


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    state = server_state(request)
    return {"object": "list", "data": [{
        "id": state.model_name, "object": "model", "created": state.extra.get("created", 0),
        "owned_by": "gpt2cli", "context_length": state.session.info.n_positions,
    }]}


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    """OpenAI's embeddings: pooled hidden states as `gpt2cli embed` (default: mean pooling)."""
    import base64

    import numpy as np

    from gpt2cli.embedding import EmbedOptions, Encoded, embed_encoded

    state = server_state(request)
    body = await json_object(request)
    tokenizer = state.engine.tokenizer()
    value = body.get("input")
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(t, int) for t in value)
    ):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ApiError(400, "input: expected a string, a list of strings, token ids or a list "
                       "of token id lists", param="input")
    prompts = _prompts(value, tokenizer, "input")
    context = state.session.info.n_positions
    for i, (_, ids) in enumerate(prompts):
        if len(ids) > context:
            raise ApiError(400, f"input[{i}]: {len(ids)} tokens, more than the model's context "
                           f"of {context}", param="input")
    pooling = _field(body, "pooling", str, "mean")
    if pooling not in ("mean", "last", "first"):
        raise ApiError(400, f"pooling: expected mean, last or first, got {pooling!r}",
                       param="pooling")
    fmt = _field(body, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, f"encoding_format: expected float or base64, got {fmt!r}",
                       param="encoding_format")
    options = EmbedOptions(pooling=pooling, normalize=_field(body, "normalize", bool, False))
    encoded = [Encoded(ids, len(ids)) for _, ids in prompts]
    ticket = state.engine.admit()
    with ticket:
        done = await state.engine.call(lambda backend: embed_encoded(backend, encoded, options))
    data = []
    for i, item in enumerate(done):
        vector = np.asarray(item.vector, dtype=np.float32)
        shown: Any = (base64.b64encode(vector.tobytes()).decode("ascii") if fmt == "base64"
                      else vector.tolist())
        data.append({"object": "embedding", "index": i, "embedding": shown})
    tokens = sum(len(ids) for _, ids in prompts)
    state.metrics.prompt_tokens.inc(tokens)
    return {"object": "list", "data": data, "model": state.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


assert all(name in BY_NAME for name in OPENAI_NAMES.values())
