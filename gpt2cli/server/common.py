"""What the server's routes share: its settings and state, OpenAI-style errors, JSON bodies."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpt2cli.errors import InputError

if TYPE_CHECKING:
    from starlette.requests import Request

    from gpt2cli.server.engine import Engine
    from gpt2cli.server.metrics import Metrics
    from gpt2cli.session import Session

DEFAULT_PORT = 8080
DEFAULT_SLOTS = 8
DEFAULT_MAX_QUEUE = 64
DEFAULT_TIMEOUT = 600.0
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
RETRY_AFTER_SECONDS = 1
# Routes answered without an API key (liveness probes and the page that asks for the key).
PUBLIC_PATHS = frozenset({"/", "/health", "/ui"})


@dataclass(frozen=True)
class ServerConfig:
    """`gpt2cli serve`'s settings."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    slots: int = DEFAULT_SLOTS
    max_queue: int = DEFAULT_MAX_QUEUE
    api_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cors_origins: tuple[str, ...] = ()
    ui: bool = True


@dataclass
class ServerState:
    """What the routes reach through `request.app.state.server`."""

    config: ServerConfig
    session: Session
    engine: Engine
    metrics: Metrics
    model_name: str
    extra: dict[str, Any] = field(default_factory=dict)


def server_state(request: Request) -> ServerState:
    return request.app.state.server


class ApiError(Exception):
    """An HTTP error with an OpenAI-style body: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.kind, "param": self.param,
                 "code": self.code, **self.extra}
        return {"error": error}

    @classmethod
    def from_input(cls, exc: InputError, rename: dict[str, str] | None = None) -> ApiError:
        """A 400 naming the request field of the engine's parameter (`rename`: engine name →
        field name, where they differ)."""
        rename = rename or {}
        param = rename.get(exc.param, exc.param) if exc.param else None
        message = exc.render(lambda name: rename.get(name, name))
        return cls(400, message, param=param)


def parse_json(data: bytes) -> Any:
    """A request body as JSON, strictly: valid UTF-8, no NaN/Infinity, no duplicate keys, no
    lone surrogates, bounded nesting (request_formats.strict_loads); ApiError 400 otherwise."""
    from gpt2cli.request_formats import strict_loads

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"body: invalid UTF-8 at byte offset {exc.start}") from None
    try:
        return strict_loads(text, "body")
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"body: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise ApiError(400, "body: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # an over-long integer
        raise ApiError(400, f"body: not valid JSON ({exc})") from None
    except InputError as exc:
        raise ApiError(400, exc.render()) from None


async def json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object."""
    body = parse_json(await request.body())
    if not isinstance(body, dict):
        raise ApiError(400, "body: expected a JSON object")
    return body


def json_type(value: Any) -> str:
    """How to name a JSON value's type in a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"
