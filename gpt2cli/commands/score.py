"""`gpt2cli score`: how likely a model finds texts (perplexity, bits per byte, per token)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from functools import partial
from typing import IO, Annotated, Any

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.outputs import escape_piece, log, output_stream, show_progress, to_json, use_color

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
    from gpt2cli.inputs import read_texts, resolve_sources
    from gpt2cli.loader import load_backend, locate_model
    from gpt2cli.outputs import check_output

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
    inputs = read_texts(texts, files, lines=lines or pairs, replace_invalid=replace_invalid)
    located = locate_model(model or DEFAULT_MODEL, backend)
    window = ctx if ctx is not None else located.info.n_positions
    settings = scoring.ScoreOptions(
        ctx=window,
        stride=stride if stride is not None else max(1, window // 2),
        prefix_eos=not no_prefix,
        details=per_token or show,
        greedy=conditional,
        batch_size=batch_size,
    )
    scoring.check_window(settings.ctx, settings.stride, located.info.n_positions)  # before loading
    engine = load_backend(located, backend, device, dtype, threads)
    progress = _Progress() if show_progress() else None
    if conditional:
        pair_list = (
            [_parse_pair(t.text, t.source) for t in inputs]
            if pairs
            else [(context or "", t.text) for t in inputs]
        )
        results = scoring.score_pairs(engine, pair_list, settings, progress)
    else:
        if settings.stride == settings.ctx:
            log(
                f"note: stride = ctx ({settings.ctx}): windows are disjoint, and the first token "
                "of each window is not scored"
            )
        results = scoring.score_texts(engine, [t.text for t in inputs], settings, progress)
    if progress is not None:
        progress.close()

    header = _Header(engine, settings, str(getattr(dtype, "value", dtype)), conditional)
    sources = [t.source for t in inputs]
    with output_stream(output, force) as out:
        if per_token:
            _write_per_token(out, engine.tokenizer, results, as_jsonl)
            log(_summary_line(header, scoring.total(results)))
        elif show:
            _write_show(out, engine.tokenizer, results, header, use_color(out))
        elif as_json or as_jsonl:
            _write_json(out, results, sources, header, as_jsonl)
        else:
            _write_text(out, results, sources, header)


def _parse_pair(line: str, source: str) -> tuple[str, str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: not JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise InputError(f'{source}: expected an object {{"context": ..., "continuation": ...}}')
    context, continuation = obj.get("context"), obj.get("continuation")
    if not isinstance(context, str) or not isinstance(continuation, str):
        raise InputError(f'{source}: "context" and "continuation" must both be strings')
    if not continuation:
        raise InputError(f'{source}: "continuation" is empty')
    return context, continuation


class _Progress:
    """A one-line token counter on stderr (interactive terminals only)."""

    def __call__(self, done: int, total: int) -> None:
        sys.stderr.write(f"\rgpt2cli: scored {done}/{total} tokens")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


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
        return f"{how}; model {self.model} ({self.backend}, {self.dtype})"


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


def _write_text(out: IO[str], results: Sequence, sources: Sequence[str], header: _Header) -> None:
    from gpt2cli.scoring import total

    if len(results) == 1:
        result = results[0]
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
        rows.append(("model", f"{header.model} ({header.backend}, {header.dtype})"))
        width = max(len(key) for key, _ in rows)
        for key, value in rows:
            out.write(f"{key:<{width}}  {value}\n")
        return
    out.write(f"# {header.describe()}\n")
    extra = ["logprob", "greedy", "context_tokens"] if header.conditional else []
    out.write("\t".join(["source", *extra, *STAT_COLUMNS]) + "\n")
    for result, source in zip(results, sources, strict=True):
        cells = []
        if header.conditional:
            cells = [_number(result.logprob), "yes" if result.is_greedy else "no",
                     str(result.context_tokens)]  # fmt: skip
        out.write("\t".join([source, *cells, *_stat_cells(result.stats)]) + "\n")
    aggregate = total(results)
    cells = []
    if header.conditional:
        greedy = sum(1 for r in results if r.is_greedy)
        cells = [_number(-aggregate.nll), f"{greedy}/{len(results)}", ""]
    out.write("\t".join(["total", *cells, *_stat_cells(aggregate)]) + "\n")


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


def _write_json(
    out: IO[str], results: Sequence, sources: Sequence[str], header: _Header, lines: bool
) -> None:
    from gpt2cli.scoring import total

    common = {**header.as_dict(), "model": header.model, "backend": header.backend,
              "dtype": header.dtype}  # fmt: skip
    objects = [_result_object(r, s, header) for r, s in zip(results, sources, strict=True)]
    if lines:
        for obj in objects:
            out.write(to_json({**obj, **common}) + "\n")
        return
    aggregate: dict[str, Any] = {"texts": len(results)}
    if header.conditional:
        aggregate["logprob"] = -total(results).nll
        aggregate["greedy"] = sum(1 for r in results if r.is_greedy)
    aggregate.update(total(results).as_dict())
    out.write(to_json({**common, "results": objects, "total": aggregate}, indent=2) + "\n")


def _write_per_token(out: IO[str], tokenizer, results: Sequence, lines: bool) -> None:  # noqa: ANN001
    if not lines:
        out.write("text\tposition\tid\tpiece\tlogprob\trank\tentropy\n")
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
            piece = tokenizer.token_bytes(token_id)
            if lines:
                record = {
                    "text": result.index,
                    "position": position,
                    "id": token_id,
                    "piece": piece.decode("utf-8", errors="replace"),
                    "logprob": logprob,
                    "rank": rank,
                    "entropy": entropy,
                }
                out.write(to_json(record) + "\n")
            else:
                out.write(
                    f"{result.index}\t{position}\t{token_id}\t{escape_piece(piece)}\t"
                    f"{logprob:.6f}\t{rank}\t{entropy:.6f}\n"
                )


# GLTR's colours: green, yellow, red, violet.
_BUCKET_STYLES = ("30;48;5;157", "30;48;5;229", "30;48;5;217", "30;48;5;183")
_BUCKET_NAMES = ("top 10", "top 100", "top 1000", "beyond")


def _write_show(out: IO[str], tokenizer, results: Sequence, header: _Header, color: bool) -> None:  # noqa: ANN001
    from gpt2cli.scoring import rank_bucket, total

    counts = [0] * len(_BUCKET_NAMES)
    for number, result in enumerate(results):
        if number:
            out.write("\n")
        buckets = {
            int(p): rank_bucket(int(r))
            for p, r in zip(result.tokens.positions, result.tokens.ranks, strict=True)
        }
        for bucket in buckets.values():
            counts[bucket] += 1
        out.write(_render(tokenizer, result.ids, buckets, color) + "\n")
    scored = sum(counts) or 1
    if color:
        keys = [
            f"\x1b[{s}m {n} \x1b[0m" for s, n in zip(_BUCKET_STYLES, _BUCKET_NAMES, strict=True)
        ]
    else:
        keys = [f"{{{i + 1}}} {n}" for i, n in enumerate(_BUCKET_NAMES)]
    legend = "  ".join(
        f"{key} {count} ({100 * count / scored:.0f}%)"
        for key, count in zip(keys, counts, strict=True)
    )
    stats = total(results)
    out.write(f"\n{legend}\nperplexity {_number(stats.perplexity)} over {stats.tokens} tokens "
              f"({header.describe()})\n")  # fmt: skip


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
    if bucket < 0:
        return segment
    if color:
        return f"\x1b[{_BUCKET_STYLES[bucket]}m{segment}\x1b[0m"
    return f"{segment}{{{bucket + 1}}}"
