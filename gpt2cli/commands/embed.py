"""`gpt2cli embed`: feature vectors from a GPT-2 model's hidden states."""

from __future__ import annotations

import sys
from enum import Enum
from functools import partial
from typing import IO, TYPE_CHECKING, Annotated

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.outputs import RecordWriter, output_stream, warn
from gpt2cli.records import embed_record
from gpt2cli.session import BLOCK_TEXTS

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MODEL = "gpt2"
DEFAULT_BATCH_SIZE = 16
FEATURES = "Features"
OUTPUT = "Output"


class Pooling(str, Enum):
    """--pooling choices (the engine's POOLINGS)."""

    mean = "mean"
    last = "last"
    first = "first"
    none = "none"


class EmbedFormat(str, Enum):
    """--format choices: the shared ones and npy."""

    text = "text"
    json = "json"
    jsonl = "jsonl"
    npy = "npy"


class Truncation(str, Enum):
    """--truncate choices (the engine's TRUNCATIONS)."""

    none = "none"
    left = "left"
    right = "right"


_option = partial(options.panel_option, panel=FEATURES)


def embed(
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
    layer: Annotated[
        int | None,
        _option(
            "--layer",
            metavar="N",
            help="Hidden state N (transformers' hidden_states: 0 embeddings, n_layer the last, "
            "negative from the end). Default: last_hidden_state.",
        ),
    ] = None,
    pooling: Annotated[
        Pooling,
        _option("--pooling", help="mean (over real tokens), last, first, or none (every token)."),
    ] = Pooling.mean,
    normalize: Annotated[
        bool, _option("--normalize", help="Scale each vector to unit L2 length.")
    ] = False,
    truncate: Annotated[
        Truncation,
        _option(
            "--truncate",
            help="A text longer than the context: none refuses it, right drops its end (keeps "
            "the first tokens), left drops its start (keeps the last tokens).",
            case_sensitive=False,
        ),
    ] = Truncation.none,
    output_format: Annotated[
        EmbedFormat | None,
        _option(
            "--format",
            help="jsonl (default): one object per text; json: one array of them; text: one "
            "vector per line; npy: one float32 array for numpy.load.",
            panel=OUTPUT,
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    as_json: options.JsonFlag = False,
    as_jsonl: options.JsonlFlag = False,
    batch_size: Annotated[
        int,
        _option(
            "--batch-size",
            "-b",
            metavar="N",
            min=1,
            help=f"Texts per forward pass ({DEFAULT_BATCH_SIZE}).",
            panel=OUTPUT,
        ),
    ] = DEFAULT_BATCH_SIZE,
    output: options.Output = None,
    force: options.Force = False,
) -> None:
    """Embed texts: GPT2Model hidden states, pooled to one vector per text.

    jsonl and json give, per text in input order, its index, source, token_count,
    truncated_tokens and the embedding. text prints one vector per line (--pooling none: one
    line per token, a blank line after each text). npy writes one float32 array of shape
    (texts, dim) for numpy.load (--pooling none: (tokens, dim) for one text). A file or piped
    text loses the one line break that ends it, unless --keep-newline.
    """
    from gpt2cli.embedding import EmbedOptions
    from gpt2cli.inputs import read_texts, resolve_sources
    from gpt2cli.outputs import Progress, check_output

    given = output_format is not None or as_json or as_jsonl
    fmt = options.output_format(output_format, as_json, as_jsonl) if given else "jsonl"
    texts = [*(texts or []), *(prompts or [])]
    check_output(output, force)  # before any input is read or any model loads
    to_stdout = output in (None, "-")
    if fmt == "npy" and to_stdout and sys.stdout.isatty():
        raise InputError("--format npy is binary: give -o PATH or redirect stdout")
    resolve_sources(texts, files)  # fail on missing input before loading the model
    inputs = read_texts(
        texts, files, lines=lines, replace_invalid=replace_invalid,
        drop_final_newline=not keep_newline,
    )
    from gpt2cli.session import ModelOptions, open_model

    session = open_model(
        ModelOptions(model or DEFAULT_MODEL, backend, device, dtype, threads), load=False
    )
    if layer is not None:
        session.info.hidden_state_index(layer)  # before the weights load
    engine = session.load()
    settings = EmbedOptions(layer, pooling.value, normalize, truncate.value, batch_size)
    sources = [t.source for t in inputs]
    # Tokenize everything first, so a text that is too long fails before any output.
    encoded = session.encode_for_embedding([t.text for t in inputs], sources, truncate.value)
    truncated = sum(1 for e in encoded if len(e.ids) < e.text_tokens)
    if truncated:
        end = "first" if truncate is Truncation.right else "last"
        warn(
            f"{truncated} of {len(encoded)} texts were longer than the model's context and were "
            f"truncated to their {end} {engine.info.n_positions} tokens"
        )
    if fmt == "npy" and pooling is Pooling.none and len(encoded) > 1:
        if len({len(e.ids) for e in encoded}) > 1:
            raise InputError(
                "--pooling none with --format npy needs texts of equal token counts "
                "(one array of shape texts x tokens x dim); use --format jsonl"
            )

    total = sum(len(e.ids) for e in encoded)
    with (
        output_stream(output, force, binary=fmt == "npy") as out,
        Progress("embedding", total=total, unit="tokens") as progress,
    ):
        vectors: list[np.ndarray] = []
        writer = None if fmt == "npy" else RecordWriter(out, fmt, _render_text)
        for start in range(0, len(encoded), BLOCK_TEXTS):
            block = encoded[start : start + BLOCK_TEXTS]
            results = session.embed(block, settings, first_index=start, progress=progress.advance)
            for result, source in zip(results, sources[start : start + BLOCK_TEXTS], strict=True):
                if writer is None:
                    vectors.append(result.vector)
                    continue
                writer.write(embed_record(result, source))
        if writer is not None:
            writer.close()
        else:
            _save_npy(out, vectors)


def _render_text(record: dict) -> str:
    """One vector per line, its components space-separated (9 significant digits: a float32
    reads back exactly); a matrix (--pooling none) one line per token and a blank line."""
    embedding = record["embedding"]
    if embedding and isinstance(embedding[0], list):
        return "".join(_vector_line(row) for row in embedding) + "\n"
    return _vector_line(embedding)


def _vector_line(vector: list[float]) -> str:
    return " ".join(f"{value:.9g}" for value in vector) + "\n"


def _save_npy(out: IO[bytes], vectors: list[np.ndarray]) -> None:
    import numpy as np

    array = vectors[0] if len(vectors) == 1 and vectors[0].ndim == 2 else np.stack(vectors)
    np.save(out, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
