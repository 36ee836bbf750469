"""The `gpt2cli` Typer app: wiring of subcommands, global flags, and error-to-exit-code mapping."""

from __future__ import annotations

import copy
import errno
import fcntl
import io
import os
import re
import signal
import stat
import sys
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._coercion import RuntimeParam, build_runtime_param
from typer._param_types import coerce_cli_choice
from typer.core import TyperArgument, TyperGroup

from gpt2cli import __version__
from gpt2cli.commands.batch import batch
from gpt2cli.commands.classify import classify
from gpt2cli.commands.embed import embed
from gpt2cli.commands.eval import evaluate
from gpt2cli.commands.export_onnx import export_onnx
from gpt2cli.commands.finetune import finetune_app
from gpt2cli.commands.generate import generate
from gpt2cli.commands.info import info
from gpt2cli.commands.score import score
from gpt2cli.commands.serve import serve
from gpt2cli.commands.tokenize import tokenize
from gpt2cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, CliError, InputError
from gpt2cli.options import CLI_NAMES as CLI_NAMES
from gpt2cli.options import cli_name
from gpt2cli.outputs import Settings, color_allowed, escape_controls

HELP_OPTION_NAMES = ["-h", "--help"]


def _dashes(token: str) -> str:
    """Option names are matched with `_` read as `-` (`--top_p` is `--top-p`), as transformers'
    HfArgumentParser accepts both spellings of its parameter names."""
    return token.replace("_", "-")


# Metavars for parameters that set none, by type: never Typer's `<int>`, `<list[str]>`.
_TYPE_METAVARS: dict[type, str] = {int: "N", float: "X", str: "TEXT", Path: "PATH"}
_NAME_METAVARS = {"model": "MODEL", "output": "PATH", "outdir": "OUTDIR", "files": "PATH"}
# One vocabulary: explicit metavars that mean the same as these are shown as these.
_SAME_METAVARS = {"STR": "TEXT", "FILE": "PATH", "DIR": "PATH", "INT": "N", "FLOAT": "X"}


class _Argument(TyperArgument):
    """A positional argument shown by its metavar alone (`TEXT...`), as Click shows it, without
    Typer's type column (`<list[str]>`)."""

    @property
    def display_name_raw(self) -> str:
        name = self.metavar or (self.name or "").upper()
        return name + "..." if self.nargs != 1 else name

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.metavar or (self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return name + "..." if self.nargs != 1 else name


def _metavar(param: Any) -> str:
    """The value placeholder a parameter shows in help: none for flags, the choices for an
    enum, else by name (MODEL, PATH) or type (N, X, TEXT)."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.metavar:
        return _SAME_METAVARS.get(param.metavar, param.metavar)
    element = param.type_descriptor.annotation
    if typing.get_origin(element) is list:
        element = typing.get_args(element)[0]
    if isinstance(element, type) and issubclass(element, Enum):
        return "[" + "|".join(str(member.value) for member in element) + "]"
    if param.name in _NAME_METAVARS:
        return _NAME_METAVARS[param.name]
    for kind, name in _TYPE_METAVARS.items():
        if isinstance(element, type) and issubclass(element, kind) and element is not bool:
            return name
    return "VALUE"


def _escape_markup(text: str | None) -> str | None:
    """Help is Rich markup to Typer: a literal `[default: gpt2]` or `[start, end]` would vanish."""
    return re.sub(r"(?<!\\)\[", r"\\[", text) if text else text


def _plain_param(param: Any) -> None:
    param.help = _escape_markup(param.help)
    if isinstance(param, TyperArgument):
        param.__class__ = _Argument
    param.metavar = _metavar(param)


def _plain_help(command: Any) -> None:
    """Give every parameter of `command`, its --help too, a plain metavar, literal help and
    plain coercion."""
    command.help = _escape_markup(command.help)
    # Click makes the help option on first use and keeps it: make it now, to set its metavar.
    context = typer.Context(command, help_option_names=HELP_OPTION_NAMES)
    for param in [*command.params, command.get_help_option(context)]:
        if param is not None:
            _plain_param(param)
            _plain_coercion(param)


_UNSURE = object()  # a value _plain_value leaves to Typer
_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,17})")
_DECIMAL = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,15})?")


def _plain_value(annotation: Any, info: Any, value: Any, ctx: Any) -> Any:
    """`value` coerced to `annotation` as Typer's Pydantic adapter would, for the kinds of
    value whose outcome is certain (a str, an int or decimal in plain digits within range, an
    enum choice, a list of str); _UNSURE for anything else, errors included."""
    if info.parser is not None:
        return _UNSURE
    if annotation is str:
        return value if type(value) is str else _UNSURE
    if typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,):
        plain = type(value) in (list, tuple) and all(type(item) is str for item in value)
        return list(value) if plain else _UNSURE
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return coerce_cli_choice(
                value, choices=list(annotation), case_sensitive=info.case_sensitive, ctx=ctx
            )
        except ValueError:
            return _UNSURE
    if annotation is int and type(value) is int:
        number: Any = value
    elif annotation is int and type(value) is str and _INTEGER.fullmatch(value):
        number = int(value)
    elif annotation is float and type(value) is float:
        number = value
    elif annotation is float and type(value) is str and _DECIMAL.fullmatch(value):
        number = float(value)
    else:
        return _UNSURE
    if info.clamp or (info.min is not None and number < info.min):
        return _UNSURE
    return _UNSURE if info.max is not None and number > info.max else number


@dataclass(frozen=True)
class _PlainRuntimeParam(RuntimeParam):
    """Typer's coercion of a parameter, without Pydantic for plain values (_plain_value):
    importing Pydantic and building its adapters cost about 0.2 s of every run. Other values,
    and so every error message, are Typer's own."""

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        plain = _plain_value(self.annotation, self.parameter_info, value, ctx)
        if plain is not _UNSURE:
            return plain
        typer_param = build_runtime_param(param.type_descriptor)
        param._runtime_param = typer_param
        return typer_param._coerce_value(value, param=param, ctx=ctx)


def _plain_coercion(param: Any) -> None:
    """Coerce `param` with _PlainRuntimeParam (parameters that open files keep Typer's)."""
    descriptor = getattr(param, "type_descriptor", None)
    if getattr(param, "_runtime_param", _UNSURE) is None and descriptor.file_annotation is None:
        param._runtime_param = _PlainRuntimeParam(
            parameter_info=descriptor.parameter_info, annotation=descriptor.annotation
        )


class _Group(TyperGroup):
    """The gpt2cli command group: built by Typer from the registered commands (on every run, so
    commands registered anywhere are included), then given plain help and plain coercion
    throughout."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for command in [self, *self.commands.values()]:
            _plain_help(command)

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:  # Typer adds --install-completion and --show-completion later
            if param.metavar is None:
                _plain_param(param)
            _plain_coercion(param)
        return params


app = typer.Typer(
    name="gpt2cli",
    cls=_Group,
    help="Generate, tokenize, embed, score and export with the GPT-2 model family.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": HELP_OPTION_NAMES, "token_normalize_func": _dashes},
)

app.command("tokenize")(tokenize)
app.command("embed")(embed)
app.command("score")(score)
app.command("generate")(generate)
app.command("export-onnx")(export_onnx)
app.command("info")(info)
app.command("serve")(serve)
app.add_typer(finetune_app, name="finetune", cls=_Group)
app.command("classify")(classify)
app.command("batch")(batch)
app.command("eval")(evaluate)

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


def _error(message: str) -> None:
    """The error as one line on stderr, with control characters shown escaped."""
    print(f"gpt2cli: error: {escape_controls(message)}", file=sys.stderr)


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _is_closed_pipe(exc: BaseException) -> bool:
    """A write to a reader that went away (`| head -1`), however the writer reports it: numpy,
    for one, turns EPIPE into a plain OSError ("4096 requested and 0 written")."""
    if isinstance(exc, BrokenPipeError) or getattr(exc, "errno", None) == errno.EPIPE:
        return True
    if isinstance(exc, OSError) and exc.errno is None:
        try:
            return _stdout_reader_gone()
        except (OSError, ValueError):
            return False
    return False


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe with no reader left."""
    import select

    fd = sys.stdout.fileno()
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLERR)
    return any(event & select.POLLERR for _, event in poller.poll(0))


def app_for(args: list[str]) -> typer.Typer:
    """`app`, or a copy of it holding only the command that `args` start with: Typer builds
    the options of every registered command on each run (reading their annotations is most
    of a cold start's parsing time), and one is enough to run one. The root's help, its
    options and shell completion use the whole app, as do unknown options' suggestions."""
    if not args or f"_{app.info.name}_COMPLETE".upper() in os.environ:
        return app
    commands = [command for command in app.registered_commands if command.name == args[0]]
    groups = [group for group in app.registered_groups if group.name == args[0]]
    if len(commands) + len(groups) != 1:
        return app
    narrow = copy.copy(app)
    narrow.registered_commands, narrow.registered_groups = commands, groups
    return narrow


def run(args: list[str]) -> int:
    """Run the app on `args` and map every outcome to an exit code."""
    if not args:
        args = ["--help"]
    try:
        args = check_argument_encoding(args)
        result = app_for(args)(args=args, prog_name="gpt2cli", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except CliError as exc:
        if Settings.debug:
            raise
        _error(exc.render(cli_name))
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if _is_closed_pipe(exc):
            _silence_stdout()
            return EXIT_FAILURE
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # a Click usage error
            _error(_usage_message(exc).replace("\n", " "))
            return int(getattr(exc, "exit_code", EXIT_USAGE))
        if type(exc).__name__ == "Abort":
            return EXIT_INTERRUPTED
        if Settings.debug:
            raise
        _error(f"{type(exc).__name__}: {exc} (rerun with --debug for a traceback)")
        return EXIT_FAILURE


# Names other tools use (llama.cpp, OpenAI, transformers) for options gpt2cli spells otherwise,
# with the spellings to suggest, best first; only those the command has are suggested.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "--json": ("--format json",),
    "--jsonl": ("--format jsonl",),
    "--ndjson": ("--format jsonl",),
    "--max-tokens": ("--max-new-tokens",),
    "--n-predict": ("--max-new-tokens",),
    "--num-tokens": ("--max-new-tokens",),
    "--temp": ("--temperature",),
    "--ctx-size": ("--ctx-size", "--ctx"),
    "--context-size": ("--ctx-size", "--ctx"),
    "--context-length": ("--ctx-size", "--ctx"),
    "--n-ctx": ("--ctx-size", "--ctx"),
    "--repeat-penalty": ("--repetition-penalty",),
    "--num-threads": ("--threads",),
    "--n-threads": ("--threads",),
    "--nthreads": ("--threads",),
    "--out": ("--output",),
    "--outfile": ("--output",),
    "--output-file": ("--output",),
    "--prompt-file": ("--file",),
    "--input": ("--file",),
    "--num-sequences": ("--num-return-sequences",),
    "--sample": ("--do-sample",),
    "--no-sample": ("--greedy",),
    "--reverse-prompt": ("--stop",),
    "--stop-sequence": ("--stop",),
    "--batch": ("--batch-size",),
    "--quantization": ("--quantize",),
    "--normalise": ("--normalize",),
    "--pool": ("--pooling",),
}


def _usage_message(exc: Exception) -> str:
    """Click's message, with a useful suggestion for an unknown option."""
    ctx = getattr(exc, "ctx", None)
    name = getattr(exc, "option_name", None)
    if type(exc).__name__ != "NoSuchOption" or ctx is None or not name:
        return exc.format_message()  # type: ignore[attr-defined]
    message = f"No such option: {escape_controls(name)}"
    hint = suggest_option(name, ctx.command, typer.main.get_command(app))  # all commands
    return f"{message} ({hint})" if hint else message


def _long_names(command: Any) -> list[str]:
    """The visible long option names of `command`, in its order."""
    return [
        name
        for param in command.params
        if param.param_type_name == "option" and not getattr(param, "hidden", False)
        for name in (*param.opts, *param.secondary_opts)
        if name.startswith("--")
    ]


def suggest_option(typo: str, command: Any, root: Any) -> str | None:
    """What to say about an unknown option `typo` of `command`: the option meant (a synonym
    from another tool, the one it abbreviates or extends, else the closest spelling), or the
    commands that have it."""
    key = _dashes(typo.partition("=")[0]).lower()
    names = [*_long_names(command), "--help"]
    for target in SYNONYMS.get(key, ()):
        if target.split()[0] in names:
            return f"did you mean {target}?"
    if key.startswith("--"):
        longer = [name for name in names if name.startswith(key)]
        if len(longer) == 1:  # --temp, --max-new
            return f"did you mean {longer[0]}?"
        shorter = [name for name in names if key.startswith(name + "-")]
        if shorter:  # --ctx-len
            return f"did you mean {max(shorter, key=len)}?"
        stems = {name[2:]: name for name in names}
        stems.update({s[2:]: t[0] for s, t in SYNONYMS.items() if t[0].split()[0] in names})
        import difflib

        close = difflib.get_close_matches(key[2:], list(stems), n=2, cutoff=0.75)
        if close:
            return "did you mean " + " or ".join(dict.fromkeys(stems[c] for c in close)) + "?"
    here = getattr(command, "name", None)
    elsewhere = [
        name
        for name, other in getattr(root, "commands", {}).items()
        if name != here and not other.hidden
        and any(key in (*p.opts, *p.secondary_opts) for p in other.params if not p.hidden)
    ]
    if elsewhere:
        return f"{key} is an option of {', '.join(elsewhere)}"
    return None


# Parameters that name files or models: any bytes the file system allows are fine there.
PATH_PARAMETERS = frozenset({"files", "output", "model", "request", "outdir"})


def check_argument_encoding(args: list[str]) -> list[str]:
    """Refuse command-line text that is not valid UTF-8 (Python hands it over as lone
    surrogates), naming the argument; with --replace-invalid, substitute U+FFFD instead.
    File and model paths are left alone: a file name may be any bytes."""
    bad = [i for i, arg in enumerate(args) if _has_surrogates(arg)]
    if not bad:
        return args
    command, names = _parameter_names(args)
    replace = "--replace-invalid" in args[: args.index("--")] if "--" in args else (
        "--replace-invalid" in args
    )
    fixed = list(args)
    for index in bad:
        name, is_path = names.get(index, (f"argument {index + 1}", False))
        if is_path:
            continue
        if replace:
            fixed[index] = _replace_invalid(args[index])
            continue
        value = args[index]
        if value.startswith("-") and "=" in value and not name.startswith(("text", "argument")):
            value = value.partition("=")[2]  # --stop=VALUE: count from the value
        raw = value.encode("utf-8", "surrogateescape") if _is_escaped(value) else None
        where = ""
        if raw is not None:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                where = f" at byte offset {exc.start}"
        what = "invalid UTF-8" if raw is not None else "a lone surrogate"
        hint = " (pass --replace-invalid to substitute U+FFFD)" if command != "export-onnx" else ""
        raise InputError(f"{name}: {what}{where}{hint}")
    return fixed


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _is_escaped(text: str) -> bool:
    """Whether the surrogates are all surrogateescape's (undecodable bytes), not real ones."""
    return all(not "\ud800" <= ch <= "\udfff" or "\udc80" <= ch <= "\udcff" for ch in text)


def _replace_invalid(text: str) -> str:
    if _is_escaped(text):
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text.encode("utf-8", "replace").decode("utf-8")


def _parameter_names(args: list[str]) -> tuple[str | None, dict[int, tuple[str, bool]]]:
    """The subcommand, and for each argument index that is a value: how to name it and
    whether it is a path."""
    group = typer.main.get_command(app)
    position = 0
    while position < len(args) and args[position].startswith("-"):
        position += 1  # global flags before the subcommand take no values
    if position >= len(args):
        return None, {}
    command = getattr(group, "commands", {}).get(args[position])
    if command is None:
        return args[position], {}
    options: dict[str, Any] = {}
    arguments: list[Any] = []
    for param in command.params:
        if param.param_type_name == "option":
            for opt in (*param.opts, *param.secondary_opts):
                options[opt] = param
        else:
            arguments.append(param)
    names: dict[int, tuple[str, bool]] = {}
    index = position + 1
    argument_number = 0
    only_arguments = False
    while index < len(args):
        arg = args[index]
        if not only_arguments and arg == "--":
            only_arguments = True
        elif not only_arguments and arg.startswith("-") and len(arg) > 1:
            flag, _, value = arg.partition("=")
            param = options.get(flag) or options.get(_dashes(flag))
            if param is not None and not getattr(param, "is_flag", False):
                name = flag
                is_path = param.name in PATH_PARAMETERS
                if value or "=" in arg:
                    names[index] = (name, is_path)
                else:
                    index += 1
                    names[index] = (name, is_path)
            elif param is None:
                names[index] = (f"option {flag}", False)
        else:
            argument_number += 1
            param = arguments[0] if len(arguments) == 1 else (
                arguments[argument_number - 1] if argument_number <= len(arguments) else None
            )
            is_path = param is not None and param.name in PATH_PARAMETERS
            label = "text" if param is not None and param.name == "texts" else "argument"
            names[index] = (f"{label} {argument_number}", is_path)
        index += 1
    return command.name, names


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


class _ClosedStdout:
    """Stands in for a stdout that was closed (`>&-`): commands that write elsewhere (-o, an
    export directory) still work, and writing results is one clear error."""

    encoding = "utf-8"

    def __init__(self) -> None:
        self.buffer = self

    def write(self, data: object) -> int:
        raise CliError("stdout is closed: nothing to write the results to (give -o FILE)")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "stdout is closed")


def _hold_closed_descriptors() -> None:
    """Open /dev/null on standard descriptors that were closed at startup, so that the next
    file opened (a model, a database of onnxruntime's) does not become stdout for C code."""
    closed = []
    for fd in (0, 1, 2):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            closed.append(fd)
    Settings.closed_descriptors = frozenset(closed)


def _standard_streams() -> None:
    """UTF-8 on stdout whatever the locale (as `cat` passes bytes through), escapes for what
    stderr cannot show, and stand-ins for closed descriptors."""
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()  # type: ignore[assignment]
    elif isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.encoding.lower() != "utf-8":
        sys.stdout.reconfigure(encoding="utf-8")
    if sys.stderr is None:
        # Otherwise print(file=sys.stderr) would write diagnostics to stdout.
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    elif isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(errors="backslashreplace")


def main() -> None:
    """Console-script entry point."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    sys.unraisablehook = _unraisable
    _hold_closed_descriptors()
    _standard_streams()
    if not color_allowed():
        # Rich (help screens) keeps bold under NO_COLOR; as a non-terminal it writes no codes.
        os.environ.setdefault("TTY_COMPATIBLE", "0")
    try:
        code = run(_take_global_flags(sys.argv[1:]))
        try:
            sys.stdout.flush()
        except OSError as exc:
            if not _is_closed_pipe(exc):
                raise
            _silence_stdout()
            code = code or EXIT_FAILURE
    except KeyboardInterrupt:  # outside the app: while parsing flags or flushing
        code = EXIT_INTERRUPTED
    if Settings.interrupted:
        code = 128 + Settings.interrupted
    if code == 0 and _is_the_program() and _nothing_to_tear_down():
        # Freeing a loaded model and every module takes about 0.1 s of a cold start, for
        # memory the system reclaims at once anyway.
        os._exit(code)
    sys.exit(code)


def _is_the_program() -> bool:
    """Whether main() runs as the process's program (the console script, `python -m
    gpt2cli`), not called by other code that goes on after it returns."""
    path = Path(getattr(sys.modules.get("__main__"), "__file__", None) or "")
    return path.name == "gpt2cli" or (path.name, path.parent.name) == ("__main__.py", "gpt2cli")


def _nothing_to_tear_down() -> bool:
    """Whether exiting without the interpreter's teardown loses nothing: no other thread, no
    exit handler (logging's is run here), stderr flushed (stdout already is)."""
    import atexit
    import threading

    handlers = getattr(atexit, "_ncallbacks", lambda: -1)()
    if "logging" in sys.modules:
        import logging

        logging.shutdown()  # flushes and closes any handler, as its own exit handler would
        handlers -= 1
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        return False
    return handlers == 0 and threading.active_count() == 1
