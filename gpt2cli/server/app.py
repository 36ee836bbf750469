"""The FastAPI app of `gpt2cli serve`, its middleware, and running it under uvicorn.

Request flow: uvicorn (one process, one event loop) → CORS → `_Guard` (API key, body size,
the log line and status metrics) → a route. Routes check and plan a request in a worker
thread (tokenizing, parameter checks), take a place in the engine (`Engine.admit`: 429 when
slots and queue are full), submit rows to the engine thread's scheduler and await their step
events; model work other than decoding (logprobs, embeddings) runs as engine jobs. The event
loop itself never runs model code.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request  # the routes' annotations are resolved in this module

from gpt2cli.server.common import (
    PUBLIC_PATHS,
    RETRY_AFTER_SECONDS,
    ApiError,
    ServerConfig,
    ServerState,
    json_object,
    json_type,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from gpt2cli.session import Session

PLAYGROUND = Path(__file__).parent / "static" / "playground.html"
PLACEHOLDER = "<!doctype html><title>gpt2cli</title><p>gpt2cli serve: no playground page here.\n"


def create_app(session: Session, config: ServerConfig, model_name: str | None = None) -> FastAPI:
    """The app over `session` (its engine thread starts with the app and loads the model)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.middleware.cors import CORSMiddleware

    from gpt2cli.server import cards, openai
    from gpt2cli.server.engine import Engine, NotReady, QueueFull
    from gpt2cli.server.metrics import Metrics

    engine = Engine(session, config.slots, config.max_queue)
    metrics = Metrics(engine)
    state = ServerState(config, session, engine, metrics, model_name or session.options.model,
                        {"created": int(time.time())})

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        engine.start()
        try:
            yield
        finally:
            engine.cancel_all()
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="gpt2cli", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.server = state
    app.include_router(openai.router)
    app.include_router(cards.router)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        error = ApiError(
            429, f"the server is busy: {config.slots} requests running and {config.max_queue} "
            "waiting (--slots, --max-queue); retry later", code="queue_full",
            kind="rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
        return await api_error(request, error)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return await api_error(request, _not_ready(engine))

    @app.get("/")
    async def root(request: Request) -> Response:
        if config.ui and "text/html" in request.headers.get("accept", ""):
            return _playground()
        return PlainTextResponse("Healthy")

    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.ready.is_set():
            return JSONResponse(_not_ready(engine).body(), status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ui")
    async def ui() -> Response:
        if not config.ui:
            raise ApiError(404, "the playground is off (--no-ui)", code="not_found")
        return _playground()

    @app.get("/metrics")
    async def prometheus() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/props")
    async def props() -> dict[str, Any]:
        info = session.info
        return {
            "model": state.model_name,
            "backend": session.located.backend,
            "device": session.options.device,
            "dtype": session.options.dtype,
            "context": info.n_positions,
            "vocab_size": info.vocab_size,
            "slots": config.slots,
            "max_queue": config.max_queue,
            "timeout": config.timeout,
            "max_body_bytes": config.max_body_bytes,
            "api_key": config.api_key is not None,
            "ui": config.ui,
            "ready": engine.ready.is_set(),
            "generation_defaults": info.generation_defaults,
        }

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        body = await json_object(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise ApiError(400, f"content: expected a string, got {json_type(content)}",
                           param="content")
        pieces = body.get("with_pieces", False)
        if not isinstance(pieces, bool):
            raise ApiError(400, "with_pieces: expected a boolean", param="with_pieces")
        tokenizer = engine.tokenizer()
        ids = await asyncio.to_thread(tokenizer.encode, content)
        if not pieces:
            return {"tokens": ids}
        out = []
        for token in ids:
            data = tokenizer.token_bytes(token)
            try:
                piece: Any = data.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(data)  # llama-server: the bytes, when not valid UTF-8 alone
            out.append({"id": token, "piece": piece})
        return {"tokens": out}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        from gpt2cli.errors import InputError

        body = await json_object(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise ApiError(400, "tokens: expected a list of token ids", param="tokens")
        tokenizer = engine.tokenizer()
        try:
            tokenizer.check_ids(tokens)
        except InputError as exc:
            raise ApiError(400, f"tokens: {exc.render()}", param="tokens") from None
        return {"content": tokenizer.decode(tokens)}

    app.add_middleware(_Guard, config=config, metrics=metrics)
    if config.cors_origins:  # outermost: preflight requests carry no API key
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
            allow_headers=["*"], max_age=600,
        )
    return app


def _not_ready(engine: Any) -> ApiError:
    if engine.error is not None:
        return ApiError(503, f"the model failed to load: {engine.error}", code="load_failed",
                        kind="server_error")
    return ApiError(503, "the model is loading", code="loading", kind="server_error")


def _playground() -> Any:
    from fastapi.responses import HTMLResponse

    try:
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))
    except OSError:
        return HTMLResponse(PLACEHOLDER)


class _Guard:
    """ASGI middleware (streaming-safe, unlike BaseHTTPMiddleware): the API key, the body
    limit (the body is read here, up to the limit, and replayed), one log line per request and
    the 2xx/4xx/5xx counts."""

    def __init__(self, app: Any, config: ServerConfig, metrics: Any) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics
        self.key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            error = self._refuse(scope)
            if error is None:
                body, error = await self._read_body(scope, receive)
            if error is not None:
                await _send_error(error, sending)
                return
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            try:
                await self.app(scope, replay, sending)
            except Exception as exc:  # noqa: BLE001 - one request fails, never the server
                from gpt2cli.outputs import log

                log(f"error: {scope['method']} {scope['path']}: {type(exc).__name__}: {exc}")
                if not status[0]:
                    error = ApiError(500, f"internal error: {type(exc).__name__}",
                                     kind="server_error")
                    await _send_error(error, sending)
        finally:
            self._log(scope, status[0] or 500, time.perf_counter() - started)

    def _refuse(self, scope: dict) -> ApiError | None:
        if self.key is None or scope["method"] == "OPTIONS":
            return None
        if scope["path"] in PUBLIC_PATHS and scope["method"] in ("GET", "HEAD"):
            return None
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return None
        message = ("missing API key: send 'Authorization: Bearer KEY'" if not given
                   else "invalid API key")
        return ApiError(401, message, code="invalid_api_key", kind="authentication_error",
                        headers={"WWW-Authenticate": "Bearer"})

    async def _read_body(self, scope: dict, receive: Any) -> tuple[bytes, ApiError | None]:
        limit = self.config.max_body_bytes
        too_big = ApiError(
            413, f"the request body is over {limit} bytes (--max-body-bytes)",
            code="body_too_large",
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return b"", too_big
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), None

    def _log(self, scope: dict, status: int, seconds: float) -> None:
        from gpt2cli.outputs import log

        self.metrics.count_response(status)
        client = scope.get("client") or ("-", 0)
        path = scope["path"]
        log(f"{client[0]} {scope['method']} {path} {status} {seconds * 1000:.1f} ms")


async def _send_error(error: ApiError, send: Any) -> None:
    import json

    data = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------

LOOPBACK = ("127.", "::1", "localhost")
GRACEFUL_SECONDS = 5.0  # after Ctrl-C/SIGTERM: in-flight rows are cancelled, then connections close


def is_loopback(host: str) -> bool:
    return host.startswith(LOOPBACK) or host == "[::1]"


def bind(host: str, port: int) -> Any:
    """A listening socket on host:port (bound here, so a taken port is one clear error)."""
    import socket

    from gpt2cli.errors import CliError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(session: Session, config: ServerConfig, model_name: str | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM (uvicorn re-raises the signal after its shutdown, which
    the CLI turns into exit 130/143)."""
    import threading

    import uvicorn

    from gpt2cli.errors import CliError
    from gpt2cli.outputs import log

    _quiet_uvicorn()
    app = create_app(session, config, model_name)
    engine = app.state.server.engine
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                log("shutting down: cancelling requests in flight")
            engine.cancel_all()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS, log_level="warning",
    ))

    def announce() -> None:
        engine.loaded.wait()
        if engine.error is not None:
            server.should_exit = True
            return
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        if server.started:
            log(f"serving {model_name or session.options.model} on http://{shown}:{port}")

    threading.Thread(target=announce, name="gpt2cli-announce", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if engine.error is not None:
        error = engine.error
        if isinstance(error, CliError):
            raise error
        raise CliError(f"cannot load the model: {type(error).__name__}: {error}")


def _quiet_uvicorn() -> None:
    import logging

    from gpt2cli.outputs import log

    class OneLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                log(f"uvicorn: {record.getMessage()}")

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "sse_starlette"):
        logger = logging.getLogger(name)
        logger.handlers = [OneLine()]
        logger.propagate = False
