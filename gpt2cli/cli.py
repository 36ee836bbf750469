"""The `gpt2cli` Typer app: wiring of subcommands, global flags, and error-to-exit-code mapping."""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Annotated

import typer

from gpt2cli import __version__
from gpt2cli.commands.embed import embed
from gpt2cli.commands.export_onnx import export_onnx
from gpt2cli.commands.generate import generate
from gpt2cli.commands.score import score
from gpt2cli.commands.tokenize import tokenize
from gpt2cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, CliError
from gpt2cli.outputs import Settings, color_allowed

app = typer.Typer(
    name="gpt2cli",
    help="Generate, tokenize, embed, score and export with the GPT-2 model family.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("tokenize")(tokenize)
app.command("embed")(embed)
app.command("score")(score)
app.command("generate")(generate)
app.command("export-onnx")(export_onnx)

GLOBAL_FLAGS = ("--debug", "--quiet")


def _version(value: bool) -> None:
    if value:
        print(f"gpt2cli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No logs or progress on stderr.")
    ] = False,
) -> None:
    """Generate, tokenize, embed, score and export with the GPT-2 model family.

    Results go to stdout, diagnostics to stderr. Exit codes: 0 success, 1 runtime failure,
    2 bad usage or input, 130 interrupted.
    """
    Settings.debug = Settings.debug or debug
    Settings.quiet = Settings.quiet or quiet


def _take_global_flags(args: list[str]) -> list[str]:
    """Accept --debug and --quiet after the subcommand too (before any `--`)."""
    end = args.index("--") if "--" in args else len(args)
    for flag in GLOBAL_FLAGS:
        while flag in args[:end]:
            args.remove(flag)
            end -= 1
            setattr(Settings, flag[2:], True)
    if os.environ.get("GPT2CLI_DEBUG"):
        Settings.debug = True
    return args


# Line breaks and terminal controls: messages quote file names and JSON keys, which may hold them.
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _error(message: str) -> None:
    """The error as one line on stderr, with control characters shown escaped."""
    message = _CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], message)
    print(f"gpt2cli: error: {message}", file=sys.stderr)


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def run(args: list[str]) -> int:
    """Run the app on `args` and map every outcome to an exit code."""
    if not args:
        args = ["--help"]
    try:
        result = app(args=args, prog_name="gpt2cli", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except CliError as exc:
        if Settings.debug:
            raise
        _error(exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILURE
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # a Click usage error
            _error(exc.format_message().replace("\n", " "))
            return int(getattr(exc, "exit_code", EXIT_USAGE))
        if type(exc).__name__ == "Abort":
            return EXIT_INTERRUPTED
        if Settings.debug:
            raise
        _error(f"{type(exc).__name__}: {exc} (rerun with --debug for a traceback)")
        return EXIT_FAILURE


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C raises KeyboardInterrupt and SIGTERM SystemExit: both unwind, so atomic outputs
    remove their temporary files. The flag outlives an exception that Python swallows."""
    Settings.interrupted = signum
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _unraisable(hook: object) -> None:
    """An interrupt raised inside a finalizer cannot propagate; don't print it as an error."""
    if Settings.interrupted and isinstance(
        getattr(hook, "exc_value", None), KeyboardInterrupt | SystemExit
    ):
        return
    sys.__unraisablehook__(hook)


def main() -> None:
    """Console-script entry point."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    sys.unraisablehook = _unraisable
    if not color_allowed():
        # Rich (help screens) keeps bold under NO_COLOR; as a non-terminal it writes no codes.
        os.environ.setdefault("TTY_COMPATIBLE", "0")
    try:
        code = run(_take_global_flags(sys.argv[1:]))
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            code = code or EXIT_FAILURE
    except KeyboardInterrupt:  # outside the app: while parsing flags or flushing
        code = EXIT_INTERRUPTED
    if Settings.interrupted:
        code = 128 + Settings.interrupted
    sys.exit(code)
