"""`gpt2cli generate`: text generation on the torch or onnx backend."""

from __future__ import annotations

import inspect
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import IO, TYPE_CHECKING, Annotated, Any

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.generation_params import PARAMETERS, PIPELINE_MAX_NEW_TOKENS
from gpt2cli.outputs import output_stream, to_json
from gpt2cli.records import prompt_record
from gpt2cli.session import ModelOptions

if TYPE_CHECKING:
    from gpt2cli.decoding import GeneratedSequence, GenerationParams
    from gpt2cli.inputs import Text
    from gpt2cli.outputs import RecordWriter
    from gpt2cli.scheduler import GenerationUpdate
    from gpt2cli.session import Session, Timings

DEFAULT_MODEL = "gpt2"
DEFAULT_BATCH_SIZE = 8
# Rows decoded together, at most (vLLM's default max_num_seqs is 256 too): each holds a KV cache
# of up to the context's length.
MAX_BATCH_ROWS = 256
GENERATION = (
    f"Generation (transformers' names; defaults: the model's, else greedy, "
    f"{PIPELINE_MAX_NEW_TOKENS} new tokens)"
)
OUTPUT = "Output"
OutputFormat = options.OutputFormat  # --format choices (kept importable from here)


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
        names = (flag, *parameter.cli_aliases)
        if parameter.cli_short:
            names += (parameter.cli_short,)
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
    prompts: options.Prompts = None,
    files: options.Files = None,
    lines: options.Lines = False,
    keep_newline: options.KeepNewline = False,
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
    output_format: options.FormatOpt = None,
    as_json: options.JsonFlag = False,
    as_jsonl: options.JsonlFlag = False,
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
            metavar="N",
            help=f"Rows (prompts x sequences) per forward pass (8; at most {MAX_BATCH_ROWS}).",
            panel=OUTPUT,
        ),
    ] = DEFAULT_BATCH_SIZE,
    request: Annotated[
        str | None,
        _option(
            "--request",
            metavar="FILE",
            help="Answer a JSON request ('-': stdin): the model cards' format A or B, or the "
            "Inference API's {\"inputs\": ..., \"parameters\": ...}. Its parameters win over "
            "flags (each overridden flag is reported).",
            panel=OUTPUT,
        ),
    ] = None,
    verbose: Annotated[
        bool,
        _option(
            "--verbose",
            "-v",
            help="Report timings on stderr: load, prompt and generation tokens, tok/s.",
            panel=OUTPUT,
        ),
    ] = False,
    output: options.Output = None,
    force: options.Force = False,
    **generation: Any,
) -> None:
    """Generate text from prompts with a GPT-2 model.

    Prompts come from TEXT arguments, -p TEXT, -f FILE, or stdin; --lines makes each line a
    prompt. One line break ending a file or stdin is dropped (--keep-newline keeps it).

    Parameters use transformers' names and meanings and default to the model's generation
    config; with no length there, 256 new tokens (the text-generation pipeline's default),
    stopping at the end of the context. gpt2: sampling with top-k 50, 256 new tokens.
    --temperature/--temp, --top-k and --top-p turn sampling on unless --greedy is given (then
    they are ignored, with a warning); --temp 0 is greedy. -n is --max-new-tokens, as in
    llama.cpp.

    --format json prints one array with an object per prompt, jsonl one object per line. With
    --request, answer a JSON request like the hosted endpoints and in their format.
    """
    from gpt2cli.outputs import check_output

    started = time.perf_counter()
    check_output(output, force)  # before any input is read or any model loads
    fmt = options.output_format(output_format, as_json, as_jsonl)
    texts = [*(texts or []), *(prompts or [])] or None
    overrides: dict[str, Any] = {
        **parameter_values(generation),
        "truncate_left": truncate == Truncate.left,
    }
    job = _Job(
        ModelOptions(model or DEFAULT_MODEL, backend, device, dtype, threads),
        overrides, batch_size, replace_invalid, output, force, return_full_text,
        verbose, started,
    )
    if request is not None:
        if texts or files or lines:
            raise InputError("--request takes no TEXT arguments, --prompt, --file or --lines")
        if fmt != "text" or separator is not None or stream:
            raise InputError("--request answers in the request's own JSON format: drop --format, "
                             "--separator and --stream")
        _answer_request(request, job)
        return

    from gpt2cli.inputs import iter_texts, resolve_sources
    from gpt2cli.outputs import Progress, RecordWriter
    from gpt2cli.session import Timings, open_model

    if fmt != "text" and separator is not None:
        raise InputError("--separator applies to --format text only")
    if separator is not None:
        separator = unescape(separator, "--separator")
    if stream and output not in (None, "-"):
        raise InputError("--stream writes to stdout, not to -o")
    sources = resolve_sources(texts, files)  # fail on missing input before loading the model
    session = open_model(job.model, load=False)
    params = session.generation_params(overrides)  # bad parameters fail before the weights load
    _warn_ignored(params, options.cli_name)
    session.load()
    if separator is None:
        single = len(sources) == 1 and not lines and params.num_return_sequences == 1
        separator = "\n" if single else "\n---\n"
    full_text = True if return_full_text is None else return_full_text
    inputs = iter_texts(texts, files, lines=lines, replace_invalid=replace_invalid,
                        drop_final_newline=not keep_newline)
    timings = Timings() if verbose else None
    to_terminal = output in (None, "-") and sys.stdout.isatty()
    with output_stream(output, force) as out:
        writer: SequenceWriter
        if fmt == "text":
            live = to_terminal if stream is None else stream
            writer = TextWriter(out, separator, full_text, params.stop, live, params)
        else:
            writer = RecordsWriter(RecordWriter(out, fmt), full_text, params)
        # A bar per finished prompt for several prompts, unless text streams to the terminal.
        several = lines or len(sources) > 1
        show = several and not (fmt == "text" and writer.live and to_terminal)
        total = None if lines else len(sources)
        with Progress("generating", total, "prompts") if show else nullcontext() as progress:
            begin = time.perf_counter()
            for update in _updates(session, params, inputs, batch_size, timings=timings):
                writer.add(update.planned)
                if writer.live:
                    writer.update()
                if progress is not None:
                    progress.update(completed=writer.prompts_done)
            writer.update()
            writer.close()
    if timings is not None:
        _report_timings(timings, writer, begin, started)


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
    verbose: bool = False
    started: float = 0.0  # time.perf_counter() when the command started


def _updates(session: Session, params: GenerationParams, texts: Iterable[Text], batch_size: int,
             name: Callable[[str], str] | None = None,
             timings: Timings | None = None) -> Iterator[GenerationUpdate]:
    """The session's step updates for `texts`, warning once per prompt cut to fit."""
    from gpt2cli.decoding import Prompt
    from gpt2cli.options import cli_name
    from gpt2cli.outputs import warn

    prompts = (Prompt(t.text, t.source) for t in texts)
    for update in session.generate(prompts, params, batch_size=batch_size,
                                   name=name or cli_name, timings=timings):
        for seq in update.planned:
            if seq.truncated_tokens and seq.sequence_index == 0:
                warn(f"{seq.prompt.source}: dropped the first {seq.truncated_tokens} prompt tokens "
                     "to fit the context (--truncate left)")
        yield update


def _warn_ignored(params: GenerationParams, name: Callable[[str], str]) -> None:
    """One warning per explicit parameter that greedy decoding ignores."""
    from gpt2cli.generation_params import GREEDY, greedy_aware
    from gpt2cli.outputs import warn

    named = greedy_aware(name)
    for parameter in params.greedy_ignores:
        warn(f"{named(parameter)} is ignored under greedy decoding ({named(GREEDY)})")


class SequenceWriter:
    """Writes finished (or, when streaming, growing) sequences in input order."""

    live = False  # update after every decode step, not only at the end

    def __init__(self, params: GenerationParams) -> None:
        self.pending: deque[GeneratedSequence] = deque()  # planned, not yet written, in order
        self.per_prompt = params.num_return_sequences
        self.prompts_done = 0  # prompts whose every sequence is written
        self.prompt_tokens = 0  # over written sequences (rows), for --verbose
        self.generated_tokens = 0

    def add(self, sequences: Iterable[GeneratedSequence]) -> None:
        self.pending.extend(sequences)

    def written(self, seq: GeneratedSequence) -> None:
        """Count a finished sequence that has been written."""
        self.prompt_tokens += len(seq.prompt_ids)
        self.generated_tokens += len(seq.token_ids)
        if seq.sequence_index == self.per_prompt - 1:
            self.prompts_done += 1

    def update(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TextWriter(SequenceWriter):
    """Plain text: each sequence followed by the separator; streams the oldest unfinished one."""

    def __init__(self, out: IO[str], separator: str, full_text: bool, stops: Sequence[str],
                 live: bool, params: GenerationParams) -> None:
        super().__init__(params)
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
            self.written(self.pending.popleft())
            self.opened = False
        if wrote and self.live:
            self.out.flush()


class RecordsWriter(SequenceWriter):
    """json/jsonl: one record per prompt (its sequences inside), written through the shared
    RecordWriter as soon as all of the prompt's sequences have ended, in input order."""

    live = True

    def __init__(self, writer: RecordWriter, full_text: bool, params: GenerationParams) -> None:
        super().__init__(params)
        self.writer = writer
        self.full_text = full_text

    def update(self) -> None:
        n = self.per_prompt
        while len(self.pending) >= n and all(self.pending[i].finished for i in range(n)):
            sequences = [self.pending.popleft() for _ in range(n)]
            self.writer.write(prompt_record(sequences, self.full_text))
            for seq in sequences:
                self.written(seq)

    def close(self) -> None:
        self.writer.close()


def _report_timings(timings: Timings, writer: SequenceWriter | None, begin: float,
                    started: float) -> None:
    """llama.cpp's timings block, on stderr (never stdout)."""
    from gpt2cli.outputs import log

    end = time.perf_counter()
    if writer is not None:
        timings.prompt_tokens = writer.prompt_tokens
        timings.generated_tokens = writer.generated_tokens
    timings.generate_s = max(end - begin - timings.prompt_s, 0.0)

    def rate(seconds: float, tokens: int) -> str:
        per_token = f"{seconds * 1000 / tokens:8.2f}" if tokens else "       -"
        per_second = f"{tokens / seconds:9.2f}" if seconds > 0 and tokens else "        -"
        return f"({per_token} ms per token, {per_second} tokens per second)"

    t = timings
    for label, text in (
        ("load time", f"{t.load_s * 1000:10.2f} ms"),
        ("prompt eval time", f"{t.prompt_s * 1000:10.2f} ms / {t.prompt_tokens:6d} tokens "
         + rate(t.prompt_s, t.prompt_tokens)),
        ("eval time", f"{t.generate_s * 1000:10.2f} ms / {t.generated_tokens:6d} tokens "
         + rate(t.generate_s, t.generated_tokens)),
        ("total time", f"{(end - started) * 1000:10.2f} ms / "
         f"{t.prompt_tokens + t.generated_tokens:6d} tokens"),
    ):
        log(f"{label:>16} = {text}")


def _answer_request(request_path: str, job: _Job) -> None:
    """Answer a --request file in its own format (A, B or the Inference API's)."""
    from gpt2cli.inputs import Text, read_texts
    from gpt2cli.options import cli_name
    from gpt2cli.outputs import warn
    from gpt2cli.request_formats import parse_request
    from gpt2cli.session import Timings, open_model

    (body,) = read_texts(None, [request_path], replace_invalid=job.replace_invalid)
    request = parse_request(body.text, body.source, job.replace_invalid)
    session = open_model(job.model, load=False)

    def name(key: str) -> str:
        return request.field(key) if key in request.parameters else cli_name(key)

    # The request's parameters win over flags: a flag is a default for what the request leaves
    # unset, and each one it overrides is reported.
    for key, value in request.parameters.items():
        flag = job.overrides.get(key)
        if flag is not None and flag != value:
            shown = list(flag) if isinstance(flag, tuple) else flag
            mine = list(value) if isinstance(value, tuple) else value
            warn(f"{cli_name(key)} {to_json(shown)} is overridden by {request.field(key)} "
                 f"{to_json(mine)} (a request's parameters win over flags)")
    if request.return_full_text is not None and job.return_full_text is not None and (
        request.return_full_text != job.return_full_text
    ):
        flag = "--return-full-text" if job.return_full_text else "--no-return-full-text"
        warn(f"{flag} is overridden by {request.field('return_full_text')} "
             f"{to_json(request.return_full_text)} (a request's parameters win over flags)")
    params = session.generation_params({**job.overrides, **request.parameters}, name)
    _warn_ignored(params, name)
    session.load()
    full_text = next(
        v for v in (request.return_full_text, job.return_full_text, True) if v is not None
    )
    prompts = [Text(text, request.prompt_source(i)) for i, text in enumerate(request.prompts)]
    timings = Timings() if job.verbose else None
    begin = time.perf_counter()
    planned: list[GeneratedSequence] = []
    for update in _updates(session, params, prompts, job.batch_size, name, timings):
        planned.extend(update.planned)
    texts: list[list[str]] = [[] for _ in prompts]
    for seq in planned:
        texts[seq.prompt_index].append((seq.prompt.text + seq.text) if full_text else seq.text)
    with output_stream(job.output, job.force) as out:
        out.write(to_json(request.answer(texts)) + "\n")
    if timings is not None:
        timings.prompt_tokens = sum(len(seq.prompt_ids) for seq in planned)
        timings.generated_tokens = sum(len(seq.token_ids) for seq in planned)
        _report_timings(timings, None, begin, job.started)


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
