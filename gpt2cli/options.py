"""Option aliases shared by the subcommands, so a flag means the same thing everywhere."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from gpt2cli.backends import registry

# Engine parameters whose flag is not simply --name-with-dashes.
CLI_NAMES = {"hidden_layer": "--layer", "truncate_left": "--truncate"}


def cli_name(parameter: str) -> str:
    """How an engine parameter is spelled on the command line (errors name parameters by their
    engine names; the CLI renders them with this)."""
    return CLI_NAMES.get(parameter, "--" + parameter.replace("_", "-"))


def panel_option(*names: str, help: str, panel: str, **kwargs: Any) -> Any:  # noqa: A002
    """A typer.Option shown under the `panel` heading of the command's help."""
    return typer.Option(*names, help=help, rich_help_panel=panel, **kwargs)


Texts = Annotated[
    list[str] | None,
    typer.Argument(help="Texts to process; each argument is one text.", show_default=False),
]
Prompts = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt", "-p", metavar="TEXT",
        help="A text to process (as llama.cpp's -p); the same as a TEXT argument. Repeatable.",
        show_default=False,
    ),
]
Files = Annotated[
    list[str] | None,
    typer.Option(
        "--file", "-f", metavar="PATH", help="Read a text from PATH ('-' is stdin). Repeatable."
    ),
]
Lines = Annotated[bool, typer.Option("--lines", help="Treat each input line as its own text.")]
KeepNewline = Annotated[
    bool,
    typer.Option(
        "--keep-newline",
        help="Keep the line break that ends a file or piped text (dropped by default, so that "
        "`echo TEXT |` and a TEXT argument give the same result).",
    ),
]
ReplaceInvalid = Annotated[
    bool,
    typer.Option("--replace-invalid", help="Replace invalid UTF-8 with U+FFFD instead of failing."),
]
def check_model(value: str | None) -> str | None:
    """--model as given; an empty one is refused, not taken for the default model."""
    if value is not None and not value.strip():
        from gpt2cli.errors import InputError

        raise InputError("--model: empty; give a Hub model id or a directory")
    return value


def check_threads(value: int | None) -> int | None:
    """--threads within 1 .. tokenizer.max_threads(), checked before anything loads."""
    from gpt2cli.tokenizer import check_threads as checked

    return checked(value)


Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        help="Hub model id (gpt2, distilgpt2, ...) or a local directory. [default: gpt2]",
        callback=check_model,
    ),
]
Output = Annotated[
    str | None,
    typer.Option("--output", "-o", metavar="PATH", help="Write results to PATH (atomically)."),
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]


def _choices(name: str, values: tuple[str, ...], doc: str) -> type[Enum]:
    """A str Enum of `values` (so `choice == "onnx"` works), each member named as its value."""
    choices = Enum(name, {value: value for value in values}, type=str, module=__name__)
    choices.__doc__ = doc
    return choices


# From the backend registry, so a new backend needs no change here.
BackendName = _choices("BackendName", registry.CHOICES, "--backend choices.")
DeviceName = _choices("DeviceName", registry.DEVICES, "--device choices.")
DtypeName = _choices("DtypeName", registry.DTYPES, "--dtype choices.")


BackendOpt = Annotated[
    BackendName,
    typer.Option(
        "--backend",
        help="auto: ONNX if the model directory holds an ONNX export, else torch.",
        case_sensitive=False,
    ),
]
DeviceOpt = Annotated[
    DeviceName, typer.Option("--device", help="Where to run the model.", case_sensitive=False)
]
DtypeOpt = Annotated[
    DtypeName,
    typer.Option(
        "--dtype",
        help="Compute precision; bfloat16/float16 where the backend and device support them.",
        case_sensitive=False,
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        "-t",
        metavar="N",
        help="CPU threads for the model (default: the backend's; at most 4 per CPU).",
        callback=check_threads,
    ),
]


class OutputFormat(str, Enum):
    """--format choices (outputs.FORMATS)."""

    text = "text"
    json = "json"
    jsonl = "jsonl"


FormatOpt = Annotated[
    OutputFormat | None,
    typer.Option(
        "--format",
        help="text (default); json: one document, an array of one object per input; "
        "jsonl: one object per input per line.",
        case_sensitive=False,
        show_default=False,
    ),
]
# Hidden aliases of --format json / --format jsonl, kept for scripts written before --format.
JsonFlag = Annotated[bool, typer.Option("--json", hidden=True)]
JsonlFlag = Annotated[bool, typer.Option("--jsonl", hidden=True)]


def output_format(chosen: Enum | None, as_json: bool = False, as_jsonl: bool = False) -> str:
    """The format named by --format or its hidden aliases --json/--jsonl ("text" when none
    is given); two different ones are refused."""
    from gpt2cli.errors import InputError

    named = {getattr(chosen, "value", None), "json" if as_json else None}
    named |= {"jsonl" if as_jsonl else None}
    named.discard(None)
    if len(named) > 1:
        raise InputError(f"--format: {' and '.join(sorted(named))} given together; choose one")
    return named.pop() if named else "text"
