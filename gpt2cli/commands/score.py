"""`gpt2cli score`: how likely a model finds texts (perplexity, bits per byte, per token)."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain
from typing import IO, TYPE_CHECKING, Annotated, Any

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.outputs import escape_piece, log, output_stream, use_color
from gpt2cli.session import BLOCK_TEXTS

if TYPE_CHECKING:
    from gpt2cli.inputs import Text
    from gpt2cli.outputs import Progress

DEFAULT_MODEL = "gpt2"
MEASURE = "Measurement"
OUTPUT = "Output"


_option = partial(options.panel_option, panel=MEASURE)


def score(
    texts: options.Texts = None,
    prompts: options.Prompts = None,
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
        _option(
            "--ctx", "-c", "--ctx-size", metavar="N",
            help="Tokens per window (default: the model's context).", min=2,
        ),
    ] = None,
    stride: Annotated[
        int | None,
        _option(
            "--stride", metavar="N", help="Tokens between window starts (default: half of --ctx).",
            min=1,
        ),
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
            "continuation given the context; the total adds lm-eval's acc and perplexity.",
        ),
    ] = False,
    limit: Annotated[
        int | None,
        _option(
            "--limit", metavar="N", min=1,
            help="Score at most N tokens, then stop: a text is cut where N is reached, a pair "
            "is scored whole or not at all.",
        ),
    ] = None,
    kl_base: Annotated[
        str | None,
        _option(
            "--kl-base", metavar="MODEL",
            help="Also score with base MODEL over the same windows: KL(base || model) per "
            "token and top-1 agreement, as llama-perplexity's --kl-divergence.",
        ),
    ] = None,
    per_token: Annotated[
        bool,
        _option(
            "--per-token",
            help="Every token: id, piece, logprob, rank, entropy (TSV; arrays in each "
            "record with --format json/jsonl).",
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
    fmt: options.FormatOpt = None,
    as_json: options.JsonFlag = False,
    as_jsonl: options.JsonlFlag = False,
    batch_size: Annotated[
        int,
        _option(
            "--batch-size", "-b", metavar="N", min=1, help="Windows per forward pass (8).",
            panel=OUTPUT,
        ),
    ] = 8,
    output: options.Output = None,
    force: options.Force = False,
) -> None:
    """Score texts: perplexity ± its standard error, bits per byte, per-token log-probabilities.

    Every token of a text is scored, the first one after <|endoftext|>
    (lm-eval's rolling loglikelihood; --no-prefix leaves it unscored, as the
    Hugging Face perplexity guide does). Texts longer than --ctx use the
    guide's strided window, so every token sees at least ctx - stride tokens
    of context. Perplexity is exp(NLL / tokens); bits per byte is
    NLL / UTF-8 bytes / ln 2.

    Text output is one line per text, PERPLEXITY ±STDERR TOKEN_COUNT
    BITS_PER_BYTE SOURCE (tab-separated; --pairs and --kl-base add columns
    before SOURCE), and a `total` line when there are two texts or more.
    The settings (model, ctx, stride) are in every JSON record, and on
    stderr when it is a terminal.
    """
    from gpt2cli import scoring
    from gpt2cli.inputs import iter_texts, resolve_sources
    from gpt2cli.outputs import Progress, check_output
    from gpt2cli.session import ModelOptions, open_model

    check_output(output, force)  # before any input is read, any model loads or any scoring
    output_format = options.output_format(fmt, as_json, as_jsonl)
    if per_token and show:
        raise InputError("--per-token and --show are exclusive")
    if show and output_format != "text":
        raise InputError(f"--show draws text; drop --format {output_format}")
    if pairs and context is not None:
        raise InputError("--pairs and --context are exclusive")
    conditional = pairs or context is not None
    if conditional and (stride is not None or no_prefix):
        raise InputError("--stride and --no-prefix apply to whole texts, not to --context/--pairs")
    if context is not None and not context:
        raise InputError("--context is empty: leave it out to score whole texts")
    if kl_base is not None and not kl_base.strip():
        raise InputError("--kl-base: empty; give a Hub model id or a directory")

    if ctx is not None and stride is not None:
        scoring.check_window(ctx, stride)  # before the model loads
    given = [*(texts or []), *(prompts or [])] or None
    resolve_sources(given, files)  # fail on missing input before loading the model
    stream = iter_texts(given, files, lines=lines or pairs, replace_invalid=replace_invalid)
    blocks = _blocks(stream, pairs, context, replace_invalid)
    first = next(blocks)  # read before the model loads: an input error there fails fast
    session = open_model(
        ModelOptions(model or DEFAULT_MODEL, backend, device, dtype, threads), load=False
    )
    base_session = None
    if kl_base is not None:
        # The reference in its own precision (float32) on the same device.
        base_session = open_model(ModelOptions(kl_base, "auto", device, "float32", threads),
                                  load=False)  # fmt: skip
    window = ctx if ctx is not None else session.info.n_positions
    if base_session is not None and ctx is None:
        window = min(window, base_session.info.n_positions)
    settings = scoring.ScoreOptions(
        ctx=window,
        stride=stride if stride is not None else max(1, window // 2),
        prefix_eos=not no_prefix,
        details=per_token or show,
        greedy=conditional,
        batch_size=batch_size,
    )
    scoring.check_window(settings.ctx, settings.stride, session.info.n_positions)  # before loading
    if base_session is not None:
        scoring.check_base_info(session.info, base_session.info, settings.ctx)
    engine = session.load()
    if base_session is not None:
        settings = replace(settings, kl_base=base_session.load())
    if not conditional and settings.stride == settings.ctx:
        log(
            f"note: stride = ctx ({settings.ctx}): windows are disjoint, and the first token "
            "of each window is not scored"
        )
    header = _Header(engine, settings, str(getattr(dtype, "value", dtype)), conditional)
    if _interactive():
        log(f"scoring: {header.describe()}")
    report = _Report(header, engine.tokenizer, arrays=per_token)
    remaining = limit
    stopped = False
    with output_stream(output, force) as out, Progress("scored", total=limit) as progress:
        writer: _Writer
        if per_token and output_format == "text":
            writer = _PerTokenWriter(out, report)
        elif show:
            writer = _ShowWriter(out, report, use_color(out))
        else:
            writer = _RecordsWriter(out, report, output_format)
        tick = _Ticker(progress)
        for block in chain([first], blocks):
            sources = [entry.source for entry in block]
            block_settings = replace(settings, limit=remaining)
            if conditional:
                pairs_ = [(entry.context or "", entry.text) for entry in block]
                results = session.score_pairs(
                    pairs_, block_settings, tick, report.count, sources
                )
            else:
                texts_ = [entry.text for entry in block]
                results = session.score(texts_, block_settings, tick, report.count)
            tick.next_block()
            writer.write(results, sources)
            if remaining is not None:
                remaining -= sum(result.stats.tokens for result in results)
                cut = len(results) < len(block) or any(r.limited for r in results)
                if cut or remaining <= 0:
                    stopped = cut or next(blocks, None) is not None
                    break
        writer.close()
    if stopped and _interactive():
        what = "pairs" if pairs else "texts"
        log(f"--limit {limit}: stopped after {report.total.tokens} scored tokens "
            f"({report.count} {what}); the rest was not scored")  # fmt: skip


def _interactive() -> bool:
    """Settings and notes go to stderr when a person is watching it (never under --quiet)."""
    return sys.stderr is not None and sys.stderr.isatty()


class _Ticker:
    """The engine's (done, total) callback of each block, as advances of one progress bar."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        self.progress.advance(done - self.done)
        self.done = done

    def next_block(self) -> None:
        self.done = 0


# At most this many characters scored, then written, at a time: memory stays bounded.
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
        base = getattr(settings, "kl_base", None)
        self.base = base.info.source if base is not None else None
        self.base_backend = base.name if base is not None else None
        if conditional:
            self.first_token = "continuation only"
        elif settings.prefix_eos:
            self.first_token = "after <|endoftext|>"
        else:
            self.first_token = "not scored"

    def as_dict(self) -> dict[str, Any]:
        from gpt2cli.records import score_settings

        fields = score_settings(self.ctx, None if self.conditional else self.stride,
                                self.first_token, self.model, self.backend, self.dtype)
        if self.base is not None:
            fields.update(kl_base=self.base, kl_base_backend=self.base_backend)
        return fields

    def describe(self) -> str:
        how = f"ctx {self.ctx}"
        if not self.conditional:
            how += f", stride {self.stride}, first token {self.first_token}"
        how += f"; model {_cell(self.model)} ({self.backend}, {self.dtype})"
        if self.base is not None:
            how += f"; KL against {_cell(self.base)} ({self.base_backend}, float32)"
        return how


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _summary_line(header: _Header, stats) -> str:  # noqa: ANN001
    line = (
        f"{stats.tokens} tokens, perplexity {_number(stats.perplexity)} "
        f"± {_number(stats.perplexity_stderr)}, bits/byte {_number(stats.bits_per_byte)}"
    )
    if stats.kl is not None:
        kl = stats.kl.as_dict()
        line += f", KL {_number(kl['kl_divergence'], 6)}, same top {_percent(kl['top1_agreement'])}"
    return f"{line} ({header.describe()})"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


class _Report:
    """The records of scored texts and the running totals (all that is kept across blocks)."""

    def __init__(self, header: _Header, tokenizer, arrays: bool = False) -> None:  # noqa: ANN001
        from gpt2cli.scoring import Stats

        self.header = header
        self.tokenizer = tokenizer
        self.arrays = arrays  # per-token arrays in each record
        self.count = 0  # results so far
        self.total = Stats()
        # --pairs: lm-eval's acc (greedy continuations) and per-pair log-likelihoods
        self.greedy = 0
        self.ll_sum = 0.0

    def add(self, result) -> None:  # noqa: ANN001
        self.count += 1
        self.total.add(result.stats)
        if self.header.conditional:
            self.greedy += bool(result.is_greedy)
            self.ll_sum += result.logprob

    def record(self, result, source: str) -> dict[str, Any]:  # noqa: ANN001
        """One text's (or pair's) record: index, source, token_count, its figures, settings."""
        from gpt2cli.records import score_record

        obj = score_record(result, source, self.header.conditional)
        if self.arrays:
            obj.update(self._arrays(result.tokens))
        obj.update(self.header.as_dict())
        return obj

    def _arrays(self, tokens) -> dict[str, Any]:  # noqa: ANN001
        ids = tokens.ids.tolist()
        arrays: dict[str, Any] = {
            "positions": tokens.positions.tolist(),
            "ids": ids,
            "pieces": [
                self.tokenizer.token_bytes(i).decode("utf-8", errors="replace") for i in ids
            ],
            "logprobs": tokens.logprobs.tolist(),
            "ranks": tokens.ranks.tolist() if tokens.ranks is not None else None,
            "entropies": tokens.entropies.tolist() if tokens.entropies is not None else None,
        }
        if tokens.kl is not None:
            arrays["kl_divergences"] = tokens.kl.tolist()
        return arrays

    def total_record(self) -> dict[str, Any]:
        """The corpus figures: sums of tokens, bytes and NLL (so the perplexity is per token
        over every text), and with --pairs lm-eval's acc and perplexity over the pairs."""
        stats = self.total.as_dict()
        obj: dict[str, Any] = {"index": None, "source": "total",
                               "token_count": stats.pop("token_count"), "texts": self.count}
        if self.header.conditional:
            obj.update(self.pair_summary())
        obj.update(stats)
        obj.update(self.header.as_dict())
        return obj

    def pair_summary(self) -> dict[str, Any]:
        """lm-eval's acc (the fraction of continuations that greedy decoding produces) with
        its standard error, and its LAMBADA perplexity: exp(-mean log-likelihood per pair)."""
        n = self.count
        acc = self.greedy / n if n else None
        stderr = math.sqrt(acc * (1 - acc) / (n - 1)) if acc is not None and n > 1 else None
        perplexity = None
        if n:
            try:
                perplexity = math.exp(-self.ll_sum / n)
            except OverflowError:
                perplexity = None
        return {"logprob": self.ll_sum, "acc": acc, "acc_stderr": stderr,
                "pair_perplexity": perplexity}  # fmt: skip

    def line(self, record: dict[str, Any]) -> str:
        """A record as one tab-separated line: PERPLEXITY ±STDERR TOKEN_COUNT BITS_PER_BYTE,
        then with --pairs LOGPROB ACC PAIR_PERPLEXITY, with --kl-base KL ±STDERR SAME_TOP,
        and SOURCE last."""
        cells = [
            _number(record["perplexity"]),
            "±" + _number(record["perplexity_stderr"]),
            str(record["token_count"]),
            _number(record["bits_per_byte"]),
        ]
        if self.header.conditional:
            total = record["index"] is None
            logprob = record["logprob"]
            if total:
                acc, pair_perplexity = record["acc"], record["pair_perplexity"]
            else:
                acc = 1.0 if record["is_greedy"] else 0.0
                pair_perplexity = _exp_or_none(-logprob)
            cells += [_number(logprob), _number(acc, 4 if total else 0),
                      _number(pair_perplexity)]  # fmt: skip
        if "kl_divergence" in record:
            cells += [
                _number(record["kl_divergence"], 6),
                "±" + _number(record["kl_divergence_stderr"], 6),
                _percent(record["top1_agreement"]),
            ]
        cells.append(_cell(record["source"]))
        return "\t".join(cells) + "\n"


def _exp_or_none(value: float) -> float | None:
    try:
        return math.exp(value)
    except OverflowError:
        return None


class _Writer:
    """Writes results block by block as they are scored."""

    def __init__(self, out: IO[str], report: _Report) -> None:
        self.out = out
        self.report = report

    def write(self, results: Sequence, sources: Sequence[str]) -> None:
        for result, source in zip(results, sources, strict=False):
            self.report.add(result)
            self.one(result, source)

    def one(self, result, source: str) -> None:  # noqa: ANN001
        raise NotImplementedError

    def close(self) -> None:
        pass


class _RecordsWriter(_Writer):
    """One record per text (text: one line each), then a total record with two texts or more."""

    def __init__(self, out: IO[str], report: _Report, output_format: str) -> None:
        from gpt2cli.outputs import RecordWriter

        super().__init__(out, report)
        self.records = RecordWriter(out, output_format, render=report.line)

    def one(self, result, source: str) -> None:  # noqa: ANN001
        self.records.write(self.report.record(result, source))

    def close(self) -> None:
        if self.report.count >= 2:
            self.records.write(self.report.total_record())
        self.records.close()


class _PerTokenWriter(_Writer):
    """Every scored token as TSV; the totals go to stderr."""

    def __init__(self, out: IO[str], report: _Report) -> None:
        super().__init__(out, report)
        self.kl = report.header.base is not None
        header = "index\tposition\tid\tpiece\tlogprob\trank\tentropy"
        self.out.write(header + ("\tkl_divergence\n" if self.kl else "\n"))

    def one(self, result, source: str) -> None:  # noqa: ANN001
        tokens = result.tokens
        columns = [tokens.positions.tolist(), tokens.ids.tolist(), tokens.logprobs.tolist(),
                   tokens.ranks.tolist(), tokens.entropies.tolist()]  # fmt: skip
        if self.kl:
            columns.append(tokens.kl.tolist())
        tokenizer = self.report.tokenizer
        for position, token_id, logprob, rank, entropy, *kl in zip(*columns, strict=True):
            piece = escape_piece(tokenizer.token_bytes(token_id))
            line = f"{result.index}\t{position}\t{token_id}\t{piece}\t{logprob:.6f}\t{rank}\t"
            line += f"{entropy:.6f}"
            if kl:
                line += f"\t{kl[0]:.6f}"
            self.out.write(line + "\n")

    def close(self) -> None:
        log(_summary_line(self.report.header, self.report.total))


# GLTR's colours: green, yellow, red, violet.
_BUCKET_STYLES = ("30;48;5;157", "30;48;5;229", "30;48;5;217", "30;48;5;183")
_BUCKET_NAMES = ("top 10", "top 100", "top 1000", "beyond")


class _ShowWriter(_Writer):
    """The GLTR view: each text with its tokens marked by rank bucket, then a legend."""

    def __init__(self, out: IO[str], report: _Report, color: bool) -> None:
        super().__init__(out, report)
        self.color = color
        self.buckets = [0] * len(_BUCKET_NAMES)

    def one(self, result, source: str) -> None:  # noqa: ANN001
        from gpt2cli.scoring import rank_bucket

        if self.report.count > 1:
            self.out.write("\n")
        buckets = {
            int(p): rank_bucket(int(r))
            for p, r in zip(result.tokens.positions, result.tokens.ranks, strict=True)
        }
        for bucket in buckets.values():
            self.buckets[bucket] += 1
        self.out.write(_render(self.report.tokenizer, result.ids, buckets, self.color) + "\n")

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
        self.out.write(f"\n{legend}\n{_summary_line(self.report.header, self.report.total)}\n")


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
