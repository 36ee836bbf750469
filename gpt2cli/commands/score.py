"""`gpt2cli score`: how likely a model finds texts (perplexity, bits per byte, per token)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import IO, TYPE_CHECKING, Annotated, Any

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.outputs import escape_piece, log, output_stream, show_progress, to_json, use_color

if TYPE_CHECKING:
    from gpt2cli.inputs import Text

DEFAULT_MODEL = "gpt2"
MEASURE = "Measurement"
OUTPUT = "Output"


_option = partial(options.panel_option, panel=MEASURE)


def score(
    texts: options.Texts = None,
    files: options.Files = None,
    lines: options.Lines = False,
    replace_invalid: options.ReplaceInvalid = False,
    model: options.Model = None,
    backend: options.BackendOpt = options.BackendName.auto,
    device: options.DeviceOpt = options.DeviceName.cpu,
    dtype: options.DtypeOpt = options.DtypeName.float32,
    threads: options.ThreadsOpt = None,
    ctx: Annotated[
        int | None,
        _option("--ctx", help="Tokens per window (default: the model's context).", min=2),
    ] = None,
    stride: Annotated[
        int | None,
        _option("--stride", help="Tokens between window starts (default: half of --ctx).", min=1),
    ] = None,
    no_prefix: Annotated[
        bool,
        _option(
            "--no-prefix",
            help="Do not put <|endoftext|> before each text: its first token is then context "
            "only, as in the Hugging Face perplexity guide.",
        ),
    ] = False,
    context: Annotated[
        str | None,
        _option(
            "--context",
            metavar="TEXT",
            help="Score each input as a continuation of TEXT (lm-eval loglikelihood).",
        ),
    ] = None,
    pairs: Annotated[
        bool,
        _option(
            "--pairs",
            help='Each input line is {"context": ..., "continuation": ...}: score the '
            "continuation given the context.",
        ),
    ] = False,
    per_token: Annotated[
        bool,
        _option(
            "--per-token",
            help="Write every token: id, piece, logprob, rank, entropy (TSV; JSONL with --jsonl).",
            panel=OUTPUT,
        ),
    ] = False,
    show: Annotated[
        bool,
        _option(
            "--show",
            help="Show the text coloured by each token's rank (GLTR: top 10/100/1000/beyond).",
            panel=OUTPUT,
        ),
    ] = False,
    as_json: Annotated[
        bool, _option("--json", help="One JSON object with every result.", panel=OUTPUT)
    ] = False,
    as_jsonl: Annotated[
        bool, _option("--jsonl", help="One JSON object per text.", panel=OUTPUT)
    ] = False,
    batch_size: Annotated[
        int,
        _option("--batch-size", "-b", min=1, help="Windows per forward pass (8).", panel=OUTPUT),
    ] = 8,
    output: options.Output = None,
    force: options.Force = False,
) -> None:
    """Score texts: perplexity, bits per byte, per-token log-probabilities.

    Every token of a text is scored, the first one after <|endoftext|>
    (lm-eval's rolling loglikelihood; --no-prefix leaves it unscored, as the
    Hugging Face perplexity guide does). Texts longer than --ctx use the
    guide's strided window, so every token sees at least ctx - stride tokens
    of context. Perplexity is exp(NLL / tokens); bits per byte is
    NLL / UTF-8 bytes / ln 2. Every result states its ctx and stride.
    """
    from gpt2cli import scoring
    from gpt2cli.inputs import iter_texts, resolve_sources
    from gpt2cli.outputs import check_output
    from gpt2cli.session import ModelOptions, open_model

    check_output(output, force)  # before any input is read, any model loads or any scoring
    modes = [name for name, on in (("--per-token", per_token), ("--show", show)) if on]
    if as_json and as_jsonl:
        raise InputError("--json and --jsonl are exclusive")
    if len(modes) > 1:
        raise InputError("--per-token and --show are exclusive")
    if show and (as_json or as_jsonl):
        raise InputError("--show draws text; drop --json/--jsonl")
    if per_token and as_json:
        raise InputError("--per-token writes TSV, or JSONL with --jsonl")
    if pairs and context is not None:
        raise InputError("--pairs and --context are exclusive")
    conditional = pairs or context is not None
    if conditional and (stride is not None or no_prefix):
        raise InputError("--stride and --no-prefix apply to whole texts, not to --context/--pairs")
    if context is not None and not context:
        raise InputError("--context is empty: leave it out to score whole texts")

    if ctx is not None and stride is not None:
        scoring.check_window(ctx, stride)  # before the model loads
    resolve_sources(texts, files)  # fail on missing input before loading the model
    stream = iter_texts(texts, files, lines=lines or pairs, replace_invalid=replace_invalid)
    blocks = _blocks(stream, pairs, context, replace_invalid)
    # Two blocks are read before the model loads: an input error there fails fast, and a text
    # known to be the only one gets the one-text table. The rest streams through in blocks.
    first = next(blocks)
    second = next(blocks, None)
    single = len(first) == 1 and second is None
    session = open_model(
        ModelOptions(model or DEFAULT_MODEL, backend, device, dtype, threads), load=False
    )
    window = ctx if ctx is not None else session.info.n_positions
    settings = scoring.ScoreOptions(
        ctx=window,
        stride=stride if stride is not None else max(1, window // 2),
        prefix_eos=not no_prefix,
        details=per_token or show,
        greedy=conditional,
        batch_size=batch_size,
    )
    scoring.check_window(settings.ctx, settings.stride, session.info.n_positions)  # before loading
    engine = session.load()
    if not conditional and settings.stride == settings.ctx:
        log(
            f"note: stride = ctx ({settings.ctx}): windows are disjoint, and the first token "
            "of each window is not scored"
        )
    header = _Header(engine, settings, str(getattr(dtype, "value", dtype)), conditional)
    progress = _Progress() if show_progress() else None
    with output_stream(output, force) as out:
        writer: _Writer
        if per_token:
            writer = _PerTokenWriter(out, header, engine.tokenizer, as_jsonl)
        elif show:
            writer = _ShowWriter(out, header, engine.tokenizer, use_color(out))
        elif as_json or as_jsonl:
            writer = _JsonWriter(out, header, as_jsonl)
        else:
            writer = _TextWriter(out, header, single)
        rest = [first] if second is None else [first, second]
        for block in chain(rest, blocks):
            sources = [entry.source for entry in block]
            if conditional:
                pairs_ = [(entry.context or "", entry.text) for entry in block]
                results = session.score_pairs(pairs_, settings, progress, writer.count, sources)
            else:
                texts_ = [entry.text for entry in block]
                results = session.score(texts_, settings, progress, writer.count)
            if progress is not None:
                progress.next_block()
            writer.write(results, sources)
        if progress is not None:
            progress.close()
        writer.close()


# Texts scored, then written, at a time (fewer when long): memory stays bounded for any input.
BLOCK_TEXTS = 1024
BLOCK_CHARS = 1 << 20


@dataclass(frozen=True)
class _Entry:
    """One input to score: a text, or a continuation of `context`."""

    text: str
    source: str
    context: str | None = None


def _blocks(
    stream: Iterable[Text], pairs: bool, context: str | None, replace_invalid: bool
) -> Iterator[list[_Entry]]:
    """The inputs in blocks of at most BLOCK_TEXTS texts or about BLOCK_CHARS characters."""
    block: list[_Entry] = []
    chars = 0
    for item in stream:
        if pairs:
            pair_context, continuation = _parse_pair(item.text, item.source, replace_invalid)
            entry = _Entry(continuation, item.source, pair_context)
        else:
            entry = _Entry(item.text, item.source, context)
        block.append(entry)
        chars += len(entry.text) + len(entry.context or "")
        if len(block) >= BLOCK_TEXTS or chars >= BLOCK_CHARS:
            yield block
            block, chars = [], 0
    if block:
        yield block


def _parse_pair(line: str, source: str, replace_invalid: bool = False) -> tuple[str, str]:
    """A --pairs line, as strict as a --request body: no duplicate key, no NaN, no lone
    surrogate (U+FFFD with --replace-invalid)."""
    from gpt2cli.request_formats import strict_loads

    try:
        obj = strict_loads(line, source, replace_invalid)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: not JSON: {exc.msg}") from None
    except (ValueError, RecursionError):  # an over-long integer, or nesting too deep
        raise InputError(f"{source}: not JSON that can be read") from None
    if not isinstance(obj, dict):
        raise InputError(f'{source}: expected an object {{"context": ..., "continuation": ...}}')
    context, continuation = obj.get("context"), obj.get("continuation")
    if not isinstance(context, str) or not isinstance(continuation, str):
        raise InputError(f'{source}: "context" and "continuation" must both be strings')
    if not continuation:
        raise InputError(f'{source}: "continuation" is empty')
    return context, continuation


class _Progress:
    """A one-line token counter on stderr (interactive terminals only), across blocks."""

    def __init__(self) -> None:
        self.before = 0  # tokens of the blocks already written
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        sys.stderr.write(f"\rgpt2cli: scored {self.before + done} tokens")
        sys.stderr.flush()

    def next_block(self) -> None:
        self.before += self.done
        self.done = 0

    def close(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


# Terminal controls from the input (ESC, BEL, CR, C1, line separators) are shown escaped in
# what score prints; a view of the text keeps its newlines and tabs as layout.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROLS_BUT_LAYOUT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def _cell(text: str) -> str:
    """A name in a table cell: one line, no tab, no terminal control."""
    return _CONTROLS.sub(_escaped, text)


def _visible(text: str) -> str:
    """Input text in the --show view: controls other than newline and tab escaped."""
    return _CONTROLS_BUT_LAYOUT.sub(_escaped, text)


class _Header:
    """How the results were computed, stated with every result."""

    def __init__(self, engine, settings, dtype: str, conditional: bool) -> None:  # noqa: ANN001
        self.model = engine.info.source
        self.backend = engine.name
        self.dtype = dtype
        self.ctx = settings.ctx
        self.stride = None if conditional else settings.stride
        self.conditional = conditional
        if conditional:
            self.first_token = "continuation only"
        elif settings.prefix_eos:
            self.first_token = "after <|endoftext|>"
        else:
            self.first_token = "not scored"

    def as_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"ctx": self.ctx}
        if not self.conditional:
            fields["stride"] = self.stride
            fields["first_token"] = self.first_token
        return fields

    def describe(self) -> str:
        how = f"ctx {self.ctx}"
        if not self.conditional:
            how += f", stride {self.stride}, first token {self.first_token}"
        return f"{how}; model {_cell(self.model)} ({self.backend}, {self.dtype})"


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _summary_line(header: _Header, stats) -> str:  # noqa: ANN001
    return (
        f"{stats.tokens} tokens, perplexity {_number(stats.perplexity)}, "
        f"bits/byte {_number(stats.bits_per_byte)} ({header.describe()})"
    )


STAT_COLUMNS = ("tokens", "bytes", "chars", "nll", "perplexity", "bits/token", "bits/byte",
                "bits/char")  # fmt: skip


def _stat_cells(stats) -> list[str]:  # noqa: ANN001
    return [
        str(stats.tokens),
        str(stats.bytes),
        str(stats.chars),
        _number(stats.nll),
        _number(stats.perplexity),
        _number(stats.bits_per_token),
        _number(stats.bits_per_byte),
        _number(stats.bits_per_char),
    ]


class _Writer:
    """Writes results block by block as they are scored; keeps only running totals, which
    `close` writes as the aggregate."""

    def __init__(self, out: IO[str], header: _Header) -> None:
        from gpt2cli.scoring import Stats

        self.out = out
        self.header = header
        self.count = 0  # results written so far
        self.greedy = 0  # of them, continuations greedy decoding would produce
        self.total = Stats()

    def write(self, results: Sequence, sources: Sequence[str]) -> None:
        self.rows(results, sources)
        for result in results:
            self.total.add(result.stats)
            self.greedy += bool(result.is_greedy)
        self.count += len(results)

    def rows(self, results: Sequence, sources: Sequence[str]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _TextWriter(_Writer):
    """One text: a two-column table. Several: TSV, one row per text and a total row."""

    def __init__(self, out: IO[str], header: _Header, single: bool) -> None:
        super().__init__(out, header)
        self.single = single

    def rows(self, results: Sequence, sources: Sequence[str]) -> None:
        header = self.header
        if self.single:
            self._one(results[0])
            return
        if self.count == 0:
            self.out.write(f"# {header.describe()}\n")
            extra = ["logprob", "greedy", "context_tokens"] if header.conditional else []
            self.out.write("\t".join(["source", *extra, *STAT_COLUMNS]) + "\n")
        for result, source in zip(results, sources, strict=True):
            cells = []
            if header.conditional:
                cells = [_number(result.logprob), "yes" if result.is_greedy else "no",
                         str(result.context_tokens)]  # fmt: skip
            self.out.write("\t".join([_cell(source), *cells, *_stat_cells(result.stats)]) + "\n")

    def _one(self, result) -> None:  # noqa: ANN001
        header = self.header
        rows = list(zip(STAT_COLUMNS, _stat_cells(result.stats), strict=True))
        if result.stats.tokens != result.text_tokens:
            rows.insert(1, ("text tokens", str(result.text_tokens)))
        if header.conditional:
            rows[0:0] = [
                ("logprob", _number(result.logprob)),
                ("greedy", "yes" if result.is_greedy else "no"),
                ("context tokens", str(result.context_tokens)),
            ]
            if result.context_truncated:
                rows.append(("context", "truncated on the left to fit --ctx"))
        rows.append(("ctx", str(header.ctx)))
        if not header.conditional:
            rows += [("stride", str(header.stride)), ("first token", header.first_token)]
        rows.append(("model", f"{_cell(header.model)} ({header.backend}, {header.dtype})"))
        width = max(len(key) for key, _ in rows)
        for key, value in rows:
            self.out.write(f"{key:<{width}}  {value}\n")

    def close(self) -> None:
        if self.single:
            return
        cells = []
        if self.header.conditional:
            cells = [_number(-self.total.nll), f"{self.greedy}/{self.count}", ""]
        self.out.write("\t".join(["total", *cells, *_stat_cells(self.total)]) + "\n")


def _result_object(result, source: str, header: _Header) -> dict[str, Any]:  # noqa: ANN001
    obj: dict[str, Any] = {"index": result.index, "source": source}
    if header.conditional:
        obj["logprob"] = result.logprob
        obj["is_greedy"] = result.is_greedy
        obj["context_tokens"] = result.context_tokens
        obj["context_truncated"] = result.context_truncated
    else:
        obj["text_tokens"] = result.text_tokens
    obj.update(result.stats.as_dict())
    return obj


class _JsonWriter(_Writer):
    """JSON lines as they come, or one JSON document streamed: the settings, "results" (one
    object per text) and "total", the same bytes `json.dumps(document, indent=2)` would give."""

    def __init__(self, out: IO[str], header: _Header, lines: bool) -> None:
        super().__init__(out, header)
        self.lines = lines
        self.common = {**header.as_dict(), "model": header.model, "backend": header.backend,
                       "dtype": header.dtype}  # fmt: skip

    def rows(self, results: Sequence, sources: Sequence[str]) -> None:
        for result, source in zip(results, sources, strict=True):
            obj = _result_object(result, source, self.header)
            if self.lines:
                self.out.write(to_json({**obj, **self.common}) + "\n")
                continue
            if self.count == 0 and result is results[0]:
                opening = to_json(self.common, indent=2).removesuffix("\n}")
                self.out.write(opening + ',\n  "results": [\n')
            else:
                self.out.write(",\n")
            self.out.write("    " + to_json(obj, indent=2).replace("\n", "\n    "))

    def close(self) -> None:
        if self.lines:
            return
        aggregate: dict[str, Any] = {"texts": self.count}
        if self.header.conditional:
            aggregate["logprob"] = -self.total.nll
            aggregate["greedy"] = self.greedy
        aggregate.update(self.total.as_dict())
        closing = to_json(aggregate, indent=2).replace("\n", "\n  ")
        self.out.write(f'\n  ],\n  "total": {closing}\n}}\n')


class _PerTokenWriter(_Writer):
    """Every scored token: TSV, or JSON lines; the aggregate goes to stderr."""

    def __init__(self, out: IO[str], header: _Header, tokenizer, lines: bool) -> None:  # noqa: ANN001
        super().__init__(out, header)
        self.tokenizer = tokenizer
        self.lines = lines

    def rows(self, results: Sequence, sources: Sequence[str]) -> None:
        if self.count == 0 and not self.lines:
            self.out.write("text\tposition\tid\tpiece\tlogprob\trank\tentropy\n")
        for result in results:
            tokens = result.tokens
            for position, token_id, logprob, rank, entropy in zip(
                tokens.positions.tolist(),
                tokens.ids.tolist(),
                tokens.logprobs.tolist(),
                tokens.ranks.tolist(),
                tokens.entropies.tolist(),
                strict=True,
            ):
                piece = self.tokenizer.token_bytes(token_id)
                if self.lines:
                    record = {
                        "text": result.index,
                        "position": position,
                        "id": token_id,
                        "piece": piece.decode("utf-8", errors="replace"),
                        "logprob": logprob,
                        "rank": rank,
                        "entropy": entropy,
                    }
                    self.out.write(to_json(record) + "\n")
                else:
                    self.out.write(
                        f"{result.index}\t{position}\t{token_id}\t{escape_piece(piece)}\t"
                        f"{logprob:.6f}\t{rank}\t{entropy:.6f}\n"
                    )

    def close(self) -> None:
        log(_summary_line(self.header, self.total))


# GLTR's colours: green, yellow, red, violet.
_BUCKET_STYLES = ("30;48;5;157", "30;48;5;229", "30;48;5;217", "30;48;5;183")
_BUCKET_NAMES = ("top 10", "top 100", "top 1000", "beyond")


class _ShowWriter(_Writer):
    """The GLTR view: each text with its tokens marked by rank bucket, then a legend."""

    def __init__(self, out: IO[str], header: _Header, tokenizer, color: bool) -> None:  # noqa: ANN001
        super().__init__(out, header)
        self.tokenizer = tokenizer
        self.color = color
        self.buckets = [0] * len(_BUCKET_NAMES)

    def rows(self, results: Sequence, sources: Sequence[str]) -> None:
        from gpt2cli.scoring import rank_bucket

        for number, result in enumerate(results, self.count):
            if number:
                self.out.write("\n")
            buckets = {
                int(p): rank_bucket(int(r))
                for p, r in zip(result.tokens.positions, result.tokens.ranks, strict=True)
            }
            for bucket in buckets.values():
                self.buckets[bucket] += 1
            self.out.write(_render(self.tokenizer, result.ids, buckets, self.color) + "\n")

    def close(self) -> None:
        scored = sum(self.buckets) or 1
        if self.color:
            keys = [
                f"\x1b[{s}m {n} \x1b[0m" for s, n in zip(_BUCKET_STYLES, _BUCKET_NAMES, strict=True)
            ]
        else:
            keys = [f"{{{i + 1}}} {n}" for i, n in enumerate(_BUCKET_NAMES)]
        legend = "  ".join(
            f"{key} {count} ({100 * count / scored:.0f}%)"
            for key, count in zip(keys, self.buckets, strict=True)
        )
        self.out.write(f"\n{legend}\nperplexity {_number(self.total.perplexity)} over "
                       f"{self.total.tokens} tokens ({self.header.describe()})\n")  # fmt: skip


def _render(tokenizer, ids: list[int], buckets: dict[int, int], color: bool) -> str:  # noqa: ANN001
    """The text with each token marked by its rank bucket; partial UTF-8 joins the next token."""
    parts: list[str] = []
    pending = b""
    worst = -1
    for position, token_id in enumerate(ids):
        pending += tokenizer.token_bytes(token_id)
        worst = max(worst, buckets.get(position, -1))
        try:
            segment = pending.decode("utf-8")
        except UnicodeDecodeError:
            continue
        parts.append(_mark(segment, worst, color))
        pending, worst = b"", -1
    if pending:
        parts.append(_mark(pending.decode("utf-8", errors="replace"), worst, color))
    return "".join(parts)


def _mark(segment: str, bucket: int, color: bool) -> str:
    segment = _visible(segment)
    if bucket < 0:
        return segment
    if color:
        return f"\x1b[{_BUCKET_STYLES[bucket]}m{segment}\x1b[0m"
    return f"{segment}{{{bucket + 1}}}"
