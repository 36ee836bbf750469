"""`gpt2cli serve`: an HTTP server (the model cards' /score, an OpenAI-compatible API, a
playground page) with continuous batching."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.session import DEFAULT_MODEL, ModelOptions

SERVER = "Server"
API_KEY_ENV = "GPT2CLI_API_KEY"
# Mirrored in gpt2cli.server.common (not imported here: --help must not import the server).
DEFAULT_PORT = 8080
DEFAULT_SLOTS = 8
DEFAULT_MAX_QUEUE = 64
DEFAULT_TIMEOUT = 600.0
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_SLOTS = 256


def _option(*names: str, **kwargs: object) -> typer.models.OptionInfo:
    return typer.Option(*names, rich_help_panel=SERVER, **kwargs)


def serve(
    model: options.Model = None,
    backend: options.BackendOpt = options.BackendName.auto,
    device: options.DeviceOpt = options.DeviceName.cpu,
    dtype: options.DtypeOpt = options.DtypeName.float32,
    threads: options.ThreadsOpt = None,
    host: Annotated[str, _option("--host", metavar="HOST", help="Address to listen on.")] = (
        "127.0.0.1"
    ),
    port: Annotated[
        int, _option("--port", min=0, max=65535, metavar="PORT", help="Port (0: any free one).")
    ] = DEFAULT_PORT,
    slots: Annotated[
        int,
        _option("--slots", min=1, max=MAX_SLOTS, metavar="N",
                help="Sequences decoded together (continuous batching)."),
    ] = DEFAULT_SLOTS,
    max_queue: Annotated[
        int,
        _option("--max-queue", min=0, metavar="N",
                help="Requests that may wait beyond the slots; more get 429."),
    ] = DEFAULT_MAX_QUEUE,
    api_key: Annotated[
        str | None,
        _option("--api-key", metavar="KEY",
                help=f"Require 'Authorization: Bearer KEY' (also ${API_KEY_ENV}); health routes "
                "stay public."),
    ] = None,
    api_key_file: Annotated[
        str | None,
        _option("--api-key-file", metavar="FILE", help="Read the API key from FILE."),
    ] = None,
    timeout: Annotated[
        float,
        _option("--timeout", min=0.001, metavar="S", help="Seconds a request may take."),
    ] = DEFAULT_TIMEOUT,
    max_body_bytes: Annotated[
        int,
        _option("--max-body-bytes", min=1, metavar="N", help="Largest request body; more: 413."),
    ] = DEFAULT_MAX_BODY_BYTES,
    cors_origin: Annotated[
        list[str] | None,
        _option("--cors-origin", metavar="ORIGIN",
                help="Allow browser requests from ORIGIN (repeatable; '*' for any)."),
    ] = None,
    no_ui: Annotated[
        bool, _option("--no-ui", help="Do not serve the playground page at /ui.")
    ] = False,
) -> None:
    """Serve a model over HTTP: /score (the model cards' endpoint), an OpenAI-compatible
    /v1/completions, /v1/embeddings and /v1/models, /tokenize, /detokenize, /health, /metrics,
    /props, and a playground page at /ui.

    Requests are decoded together with continuous batching (--slots rows at a time); up to
    --max-queue more wait, and further ones get 429 with Retry-After. Logs one line per request
    on stderr. Ctrl-C or SIGTERM cancels requests in flight and exits (130/143).
    """
    from gpt2cli.outputs import warn
    from gpt2cli.session import open_model

    key = _api_key(api_key, api_key_file)
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import sse_starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        from gpt2cli.errors import MissingExtraError

        raise MissingExtraError("gpt2cli serve", "serve") from None
    from gpt2cli.server.app import is_loopback
    from gpt2cli.server.app import serve as run_server
    from gpt2cli.server.common import ServerConfig

    if key is None and not is_loopback(host):
        warn(f"listening on {host} without an API key: anyone who can reach it can use it "
             f"(give --api-key, --api-key-file or ${API_KEY_ENV})")
    config = ServerConfig(
        host=host, port=port, slots=slots, max_queue=max_queue, api_key=key, timeout=timeout,
        max_body_bytes=max_body_bytes, cors_origins=tuple(cors_origin or ()), ui=not no_ui,
    )
    session = open_model(
        ModelOptions(model or DEFAULT_MODEL, backend, device, dtype, threads), load=False
    )
    run_server(session, config, model or DEFAULT_MODEL)


def _api_key(api_key: str | None, api_key_file: str | None) -> str | None:
    """The key from --api-key, --api-key-file or the environment, in that order."""
    if api_key is not None and api_key_file is not None:
        raise InputError("--api-key and --api-key-file given together; choose one")
    if api_key_file is not None:
        try:
            with open(api_key_file, encoding="utf-8") as handle:
                api_key = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise InputError(f"--api-key-file: {api_key_file}: cannot read: {reason}") from None
        if not api_key:
            raise InputError(f"--api-key-file: {api_key_file}: the file is empty")
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV) or None
    if api_key is not None and (not api_key.strip() or any(c.isspace() for c in api_key)):
        raise InputError("--api-key: must be non-empty, without spaces")
    return api_key
