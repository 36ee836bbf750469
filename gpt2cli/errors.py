"""User-facing errors. `cli.run` is the one place that maps them to exit codes.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad input, 130 interrupted (SIGINT),
143 terminated (SIGTERM).

Engines raise structured errors: the parameter at fault (by its engine name, e.g. `max_length`),
the reason and an optional hint. They never spell a CLI flag; each front end renders the name its
user typed (`--max-length` on the command line, `params.max_length` in a request file, a field of
an HTTP body or of a batch row) with `render(name)`. A hint may mention other parameters as
`{parameter}` placeholders, rendered the same way.
"""

from __future__ import annotations

from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

ParameterNamer = Callable[[str], str]


def plain_name(parameter: str) -> str:
    """A parameter as the engines call it."""
    return parameter


class _Names(dict):
    """format_map() mapping that names any `{parameter}` placeholder with a front end's namer."""

    def __init__(self, name: ParameterNamer) -> None:
        super().__init__()
        self.name = name

    def __missing__(self, key: str) -> str:
        return self.name(key)


class CliError(Exception):
    """An error the user should see as one line on stderr, without a traceback.

    Either a plain `message`, or structured: `param` (the engine's parameter name), `reason` and
    an optional `hint`; `where` prefixes an input's name (a file, `<stdin>:3`, a request field).
    """

    exit_code = EXIT_FAILURE

    def __init__(
        self,
        message: str = "",
        *,
        param: str | None = None,
        reason: str | None = None,
        hint: str | None = None,
        where: str | None = None,
    ) -> None:
        self.param = param
        self.reason = reason
        self.hint = hint
        self.where = where
        self._message = message
        super().__init__(self.render())

    @property
    def message(self) -> str:
        """The error rendered with the engines' own parameter names."""
        return self.render()

    def render(self, name: ParameterNamer = plain_name) -> str:
        """The one-line message, naming parameters with `name`."""
        names = _Names(name)
        if self.param is None and self.reason is None:
            text = self._message
        else:
            text = self.reason or ""
            if self.param is not None:
                text = f"{name(self.param)}: {text}" if text else name(self.param)
            if self.hint:
                text += f" ({self.hint.format_map(names)})"
        if self.where:
            text = f"{self.where}: {text}"
        return text


class InputError(CliError):
    """Bad input or bad usage: empty text, invalid UTF-8, out-of-range options."""

    exit_code = EXIT_USAGE


class ModelError(CliError):
    """A model that cannot be found, downloaded or loaded, or whose files are at fault."""

    exit_code = EXIT_FAILURE


class MissingExtraError(CliError):
    """An optional dependency is needed for what was asked."""

    exit_code = EXIT_FAILURE

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the '{extra}' extra: pip install 'gpt2cli[{extra}]'")


def require(condition: bool, message: str) -> None:
    """Raise an InputError with `message` unless `condition` holds."""
    if not condition:
        raise InputError(message)
