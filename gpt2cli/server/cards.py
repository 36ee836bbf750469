"""POST /score: the model cards' real-time endpoint, answered as `generate --request` answers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gpt2cli.errors import InputError
from gpt2cli.server.common import ApiError, ServerState, parse_json, server_state

if TYPE_CHECKING:
    from gpt2cli.decoding import GeneratedSequence, GenerationParams
    from gpt2cli.request_formats import GenerationRequest

router = APIRouter()

EXPECTED = [
    {"inputs": {"input_string": ["My name is John and I am"]},
     "parameters": {"max_new_tokens": 20}},
    {"input_data": ["Once upon a time,"], "params": {"max_new_tokens": 20}},
    {"input_data": {"input_string": ["Once upon a time,"], "parameters": {"max_new_tokens": 20}}},
    {"inputs": "Once upon a time,", "parameters": {"max_new_tokens": 20}},
]


def _bad(message: str) -> ApiError:
    return ApiError(400, message, extra={"expected": EXPECTED})


def plan_score(
    state: ServerState, data: bytes
) -> tuple[GenerationRequest, GenerationParams, list[GeneratedSequence]]:
    """Parse and plan a /score body (a worker thread): the request, its parameters and its
    sequences, planned as `generate --request` plans them."""
    from gpt2cli.request_formats import parse_request
    from gpt2cli.scheduler import iter_sequences

    try:
        body = parse_json(data)
    except ApiError as exc:
        raise _bad(exc.message) from None
    azure = isinstance(body, dict) and isinstance(body.get("input_data"), dict)
    if azure:  # Azure ML's {"input_data": {"input_string": [...], "parameters": {...}}}
        inner = body["input_data"]
        extra = sorted(set(body) - {"input_data"}) + sorted(
            f"input_data.{k}" for k in set(inner) - {"input_string", "parameters"}
        )
        if extra:
            raise _bad(f"request: {extra[0]}: unknown field")
        body = {"input_data": inner.get("input_string"), "params": inner.get("parameters")}
    try:
        request = parse_request(json.dumps(body), "request")
    except InputError as exc:
        raise _bad(exc.render()) from None
    session = state.session

    def name(key: str) -> str:
        field = request.field(key).removeprefix(f"{request.source}: ")
        return f"input_data.parameters.{key}" if azure else field

    try:
        params = session.generation_params(dict(request.parameters))
    except InputError as exc:
        raise ApiError(400, exc.render(name), param=name(exc.param) if exc.param else None,
                       extra={"expected": EXPECTED}) from None
    from gpt2cli.decoding import Prompt

    prompts = [Prompt(text, request.prompt_source(i)) for i, text in enumerate(request.prompts)]
    tokenizer = state.engine.tokenizer()
    try:
        planned = list(iter_sequences(tokenizer, prompts, params, session.info.n_positions, name))
    except InputError as exc:
        raise _bad(exc.render(name)) from None
    return request, params, planned


@router.post("/score")
async def score(request: Request) -> Any:
    from starlette.concurrency import run_in_threadpool

    from gpt2cli.decoding import fresh_seed
    from gpt2cli.scheduler import RowRequest

    state = server_state(request)
    started = time.perf_counter()
    data = await request.body()
    parsed, params, planned = await run_in_threadpool(plan_score, state, data)
    seed = params.seed if params.seed is not None else fresh_seed()
    events: asyncio.Queue = asyncio.Queue()
    with state.engine.admit() as ticket:
        state.metrics.prompt_tokens.inc(sum(len(s.prompt_ids) for s in planned))
        for tag, seq in enumerate(planned):
            ticket.submit(RowRequest(seq, params, seed, events=True), events, tag)
        left = len(planned)
        last: float | None = None
        while left:
            remaining = started + state.config.timeout - time.perf_counter()
            try:
                _, event = await asyncio.wait_for(events.get(), max(remaining, 0.001))
            except asyncio.TimeoutError:
                raise ApiError(504, f"the request timed out after {state.config.timeout:g} s "
                               "(--timeout)", code="timeout", kind="timeout_error") from None
            if event.token is not None:
                now = time.perf_counter()
                if last is None:
                    state.metrics.ttft.observe(now - started)
                else:
                    state.metrics.itl.observe(now - last)
                last = now
                state.metrics.generated_tokens.inc()
            if event.finish_reason is not None:
                left -= 1
                if event.finish_reason == "error":
                    raise ApiError(500, "the model failed while generating this request",
                                   kind="server_error")
    full_text = True if parsed.return_full_text is None else parsed.return_full_text
    texts: list[list[str]] = [[] for _ in parsed.prompts]
    for seq in planned:
        texts[seq.prompt_index].append((seq.prompt.text + seq.text) if full_text else seq.text)
    return JSONResponse(parsed.answer(texts))
