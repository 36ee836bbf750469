"""Option aliases shared by the subcommands, so a flag means the same thing everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

Texts = Annotated[
    list[str] | None,
    typer.Argument(help="Texts to process; each argument is one text.", show_default=False),
]
Files = Annotated[
    list[str] | None,
    typer.Option(
        "--file", "-f", metavar="PATH", help="Read a text from PATH ('-' is stdin). Repeatable."
    ),
]
Lines = Annotated[bool, typer.Option("--lines", help="Treat each input line as its own text.")]
ReplaceInvalid = Annotated[
    bool,
    typer.Option("--replace-invalid", help="Replace invalid UTF-8 with U+FFFD instead of failing."),
]
Model = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub model id (gpt2, distilgpt2, ...) or a local directory."),
]
Output = Annotated[
    str | None,
    typer.Option("--output", "-o", metavar="PATH", help="Write results to PATH (atomically)."),
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
