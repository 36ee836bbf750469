"""`gpt2cli generate`: text generation on the torch or onnx backend."""

from __future__ import annotations

import inspect
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import IO, TYPE_CHECKING, Annotated, Any

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.generation_params import PARAMETERS
from gpt2cli.outputs import output_stream, to_json
from gpt2cli.session import ModelOptions

if TYPE_CHECKING:
    from gpt2cli.decoding import GeneratedSequence, GenerationParams
    from gpt2cli.inputs import Text
    from gpt2cli.scheduler import GenerationUpdate
    from gpt2cli.session import Session

DEFAULT_MODEL = "gpt2"
DEFAULT_BATCH_SIZE = 8
# Rows decoded together, at most (vLLM's default max_num_seqs is 256 too): each holds a KV cache
# of up to the context's length.
MAX_BATCH_ROWS = 256
GENERATION = "Generation (transformers' names; defaults: the model's generation config)"
OUTPUT = "Output"


class OutputFormat(str, Enum):
    """--format choices."""

    text = "text"
    json = "json"
    jsonl = "jsonl"


class Truncate(str, Enum):
    """--truncate choices."""

    none = "none"
    left = "left"


_option = partial(options.panel_option, panel=GENERATION, show_default=False)


def parameter_values(values: dict[str, Any]) -> dict[str, Any]:
    """The generation parameters' option values as GenerationParams takes them (None: unset;
    backslash escapes in strings undone, repeated options as tuples)."""
    out: dict[str, Any] = {}
    for parameter in PARAMETERS:
        value = values.get(parameter.name)
        flag = "--" + parameter.name.replace("_", "-")
        if parameter.repeated:
            value = tuple(unescape(v, flag) for v in value) if value else None
        elif isinstance(value, str):
            value = unescape(value, flag)
        out[parameter.name] = value
    return out


def parameter_options(after: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command decorator: an option per generation parameter in place of the command's
    **kwargs, inserted after its parameter `after` (Typer reads `__signature__`)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command.__signature__ = _with_options(command, after)
        return command

    return decorate


def _with_options(command: Callable[..., Any], after: str) -> inspect.Signature:
    table = []
    for parameter in PARAMETERS:
        flag = "--" + parameter.name.replace("_", "-")
        if parameter.cli_off:
            flag += "/" + parameter.cli_off
        names = (flag, parameter.cli_short) if parameter.cli_short else (flag,)
        info = _option(*names, help=parameter.help, metavar=parameter.metavar)
        table.append(
            inspect.Parameter(
                parameter.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None,
                annotation=Annotated[parameter.cli_type, info],
            )
        )
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.kind != inspect.Parameter.VAR_KEYWORD]
    at = next(i for i, p in enumerate(own) if p.name == after) + 1
    return inspect.Signature([*own[:at], *table, *own[at:]], return_annotation=None)


@parameter_options(after="threads")
def generate(
    texts: options.Texts = None,
    files: options.Files = None,
    lines: options.Lines = False,
    replace_invalid: options.ReplaceInvalid = False,
    model: options.Model = None,
    backend: options.BackendOpt = options.BackendName.auto,
    device: options.DeviceOpt = options.DeviceName.cpu,
    dtype: options.DtypeOpt = options.DtypeName.float32,
    threads: options.ThreadsOpt = None,
    truncate: Annotated[
        Truncate,
        _option("--truncate", help="left: drop the start of prompts that overflow the context."),
    ] = Truncate.none,
    return_full_text: Annotated[
        bool | None,
        _option(
            "--return-full-text/--no-return-full-text",
            help="Print the prompt before its continuation (default: yes).",
            panel=OUTPUT,
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat | None,
        _option("--format", help="text (default), json or jsonl.", panel=OUTPUT),
    ] = None,
    separator: Annotated[
        str | None,
        _option(
            "--separator",
            metavar="STR",
            help="Written after each sequence in text output (default '\\n' for one sequence, "
            "'\\n---\\n' for several; '\\0' for NUL).",
            panel=OUTPUT,
        ),
    ] = None,
    stream: Annotated[
        bool | None,
        _option(
            "--stream/--no-stream",
            help="Print text as it is generated (default: on a terminal).",
            panel=OUTPUT,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        _option(
            "--batch-size",
            "-b",
            min=1,
            max=MAX_BATCH_ROWS,
            help=f"Rows (prompts x sequences) per forward pass (8; at most {MAX_BATCH_ROWS}).",
            panel=OUTPUT,
        ),
    ] = DEFAULT_BATCH_SIZE,
    request: Annotated[
        str | None,
        _option(
            "--request",
            metavar="FILE",
            help="Answer a JSON request in the model cards' format A or B ('-': stdin).",
            panel=OUTPUT,
        ),
    ] = None,
    output: options.Output = None,
    force: options.Force = False,
    **generation: Any,
) -> None:
    """Generate text from prompts with a GPT-2 model.

    Prompts come from TEXT arguments, -f FILE, or stdin; --lines makes each line a prompt.
    Parameters use transformers' names and meanings, and default to the model's generation
    config (gpt2: sampling with top-k 50 up to 50 tokens in all). With --request, read a JSON
    request like the hosted endpoints' and answer in the same format.
    """
    from gpt2cli.outputs import check_output

    check_output(output, force)  # before any input is read or any model loads
    overrides: dict[str, Any] = {
        **parameter_values(generation),
        "truncate_left": truncate == Truncate.left,
    }
    job = _Job(
        ModelOptions(model or DEFAULT_MODEL, backend, device, dtype, threads),
        overrides, batch_size, replace_invalid, output, force, return_full_text,
    )
    if request is not None:
        if texts or files or lines:
            raise InputError("--request takes no TEXT arguments, --file or --lines")
        if output_format is not None or separator is not None or stream:
            raise InputError("--request answers in the request's own JSON format: drop --format, "
                             "--separator and --stream")
        _answer_request(request, job)
        return

    from gpt2cli.inputs import iter_texts, resolve_sources
    from gpt2cli.session import open_model

    fmt = output_format or OutputFormat.text
    if fmt != OutputFormat.text and separator is not None:
        raise InputError("--separator applies to --format text only")
    if separator is not None:
        separator = unescape(separator, "--separator")
    if stream and output not in (None, "-"):
        raise InputError("--stream writes to stdout, not to -o")
    sources = resolve_sources(texts, files)  # fail on missing input before loading the model
    session = open_model(job.model, load=False)
    params = session.generation_params(overrides)  # bad parameters fail before the weights load
    session.load()
    if separator is None:
        single = len(sources) == 1 and not lines and params.num_return_sequences == 1
        separator = "\n" if single else "\n---\n"
    full_text = True if return_full_text is None else return_full_text
    prompts = iter_texts(texts, files, lines=lines, replace_invalid=replace_invalid)
    with output_stream(output, force) as out:
        writer: SequenceWriter
        if fmt == OutputFormat.text:
            to_terminal = output in (None, "-") and sys.stdout.isatty()
            live = to_terminal if stream is None else stream
            writer = TextWriter(out, separator, full_text, params.stop, live)
        else:
            writer = JsonWriter(out, full_text, lines=fmt == OutputFormat.jsonl)
        for update in _updates(session, params, prompts, batch_size):
            writer.add(update.planned)
            if writer.live:
                writer.update()
        writer.update()
        writer.close()


@dataclass(frozen=True)
class _Job:
    """What a generate run was asked for, beyond its inputs and output format."""

    model: ModelOptions
    overrides: dict[str, Any]
    batch_size: int
    replace_invalid: bool
    output: str | None
    force: bool
    return_full_text: bool | None


def _updates(session: Session, params: GenerationParams, texts: Iterable[Text], batch_size: int,
             name: Callable[[str], str] | None = None) -> Iterator[GenerationUpdate]:
    """The session's step updates for `texts`, warning once per prompt cut to fit."""
    from gpt2cli.decoding import Prompt
    from gpt2cli.options import cli_name
    from gpt2cli.outputs import warn

    prompts = (Prompt(t.text, t.source) for t in texts)
    for update in session.generate(prompts, params, batch_size=batch_size,
                                   name=name or cli_name):
        for seq in update.planned:
            if seq.truncated_tokens and seq.sequence_index == 0:
                warn(f"{seq.prompt.source}: dropped the first {seq.truncated_tokens} prompt tokens "
                     "to fit the context (--truncate left)")
        yield update


class SequenceWriter:
    """Writes finished (or, when streaming, growing) sequences in input order."""

    live = False  # update after every decode step, not only at the end

    def __init__(self) -> None:
        self.pending: deque[GeneratedSequence] = deque()  # planned, not yet written, in order

    def add(self, sequences: Iterable[GeneratedSequence]) -> None:
        self.pending.extend(sequences)

    def update(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TextWriter(SequenceWriter):
    """Plain text: each sequence followed by the separator; streams the oldest unfinished one."""

    def __init__(self, out: IO[str], separator: str, full_text: bool, stops: Sequence[str],
                 live: bool) -> None:
        super().__init__()
        self.out = out
        self.separator = separator
        self.full_text = full_text
        self.stops = tuple(s.encode("utf-8") for s in stops)
        self.live = live
        self.opened = False

    def update(self) -> None:
        wrote = False
        while self.pending:
            seq = self.pending[0]
            if not self.opened:
                self.opened = True
                if self.full_text:
                    self.out.write(seq.prompt.text)
                    wrote = True
            piece = seq.take_text(self.stops)
            if piece:
                self.out.write(piece)
                wrote = True
            if not seq.finished:
                break
            self.out.write(self.separator)
            wrote = True
            self.pending.popleft()
            self.opened = False
        if wrote and self.live:
            self.out.flush()


class JsonWriter(SequenceWriter):
    """One object per sequence: a JSON array at the end, or JSON lines as sequences finish."""

    def __init__(self, out: IO[str], full_text: bool, lines: bool) -> None:
        super().__init__()
        self.out = out
        self.full_text = full_text
        self.lines = self.live = lines
        self.records: list[dict] = []

    def update(self) -> None:
        while self.pending and self.pending[0].finished:
            record = sequence_record(self.pending.popleft(), self.full_text)
            if self.lines:
                self.out.write(to_json(record) + "\n")
                self.out.flush()
            else:
                self.records.append(record)

    def close(self) -> None:
        if not self.lines:
            self.out.write(to_json(self.records, indent=2) + "\n")


def sequence_record(seq: GeneratedSequence, full_text: bool) -> dict[str, Any]:
    """The JSON object for one generated sequence."""
    return {
        "index": seq.prompt_index,
        "sequence": seq.sequence_index,
        "source": seq.prompt.source,
        "prompt": seq.prompt.text,
        "generated_text": (seq.prompt.text + seq.text) if full_text else seq.text,
        "token_ids": seq.token_ids,
        "finish_reason": seq.finish_reason,
        "stop_string": seq.stop_string,
        "prompt_tokens": len(seq.prompt_ids),
        "generated_tokens": len(seq.token_ids),
        "truncated_tokens": seq.truncated_tokens,
    }


def _answer_request(request_path: str, job: _Job) -> None:
    """Answer a --request file in its own format (A or B)."""
    from gpt2cli.inputs import Text, read_texts
    from gpt2cli.options import cli_name
    from gpt2cli.request_formats import parse_request
    from gpt2cli.session import open_model

    (body,) = read_texts(None, [request_path], replace_invalid=job.replace_invalid)
    request = parse_request(body.text, body.source, job.replace_invalid)
    session = open_model(job.model, load=False)

    def name(key: str) -> str:
        return request.field(key) if key in request.parameters else cli_name(key)

    params = session.generation_params({**job.overrides, **request.parameters}, name)
    session.load()
    full_text = next(
        v for v in (request.return_full_text, job.return_full_text, True) if v is not None
    )
    prompts = [Text(text, request.prompt_source(i)) for i, text in enumerate(request.prompts)]
    planned: list[GeneratedSequence] = []
    for update in _updates(session, params, prompts, job.batch_size, name):
        planned.extend(update.planned)
    texts: list[list[str]] = [[] for _ in prompts]
    for seq in planned:
        texts[seq.prompt_index].append((seq.prompt.text + seq.text) if full_text else seq.text)
    with output_stream(job.output, job.force) as out:
        out.write(to_json(request.answer(texts)) + "\n")


def unescape(value: str, option: str) -> str:
    r"""Backslash escapes in option values: \n, \t, \0, \\, \xHH, \uXXXX; `option` names the
    option in errors."""
    if "\\" not in value:
        return value
    try:
        text = value.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as exc:
        raise InputError(f"{option}: {value!r}: bad backslash escape ({exc.reason})") from None
    surrogate = next((ch for ch in text if "\ud800" <= ch <= "\udfff"), None)
    if surrogate is not None:
        raise InputError(
            f"{option}: {value!r}: \\u{ord(surrogate):04x} is a lone surrogate, not a character"
        )
    return text
