"""User-facing errors and the one place that maps them to exit codes.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad input, 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error the user should see as one line on stderr, without a traceback."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(CliError):
    """Bad input or bad usage: empty text, invalid UTF-8, out-of-range options."""

    exit_code = EXIT_USAGE


class ModelError(CliError):
    """A model that cannot be found, downloaded or loaded."""

    exit_code = EXIT_FAILURE


class MissingExtraError(CliError):
    """An optional dependency is needed for what was asked."""

    exit_code = EXIT_FAILURE

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the '{extra}' extra: pip install 'gpt2cli[{extra}]'")


class Interrupted(BaseException):
    """Raised from the SIGINT handler; a BaseException so that nothing swallows it."""


def require(condition: bool, message: str) -> None:
    """Raise an InputError with `message` unless `condition` holds."""
    if not condition:
        raise InputError(message)
