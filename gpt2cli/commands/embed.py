"""`gpt2cli embed`: feature vectors from a GPT-2 model's hidden states."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import Enum
from functools import partial
from typing import IO, Annotated

from gpt2cli import options
from gpt2cli.errors import InputError
from gpt2cli.outputs import output_stream, show_progress, to_json, warn

DEFAULT_MODEL = "gpt2"
DEFAULT_BATCH_SIZE = 16
BLOCK_TEXTS = 1024  # texts embedded (and written) at a time, so output streams
FEATURES = "Features"
OUTPUT = "Output"


class Pooling(str, Enum):
    """--pooling choices (the engine's POOLINGS)."""

    mean = "mean"
    last = "last"
    first = "first"
    none = "none"


class EmbedFormat(str, Enum):
    """--format choices."""

    json = "json"
    jsonl = "jsonl"
    npy = "npy"


_option = partial(options.panel_option, panel=FEATURES)


def embed(
    texts: options.Texts = None,
    files: options.Files = None,
    lines: options.Lines = False,
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
        bool,
        _option("--truncate", help="Keep the first tokens of texts longer than the context."),
    ] = False,
    output_format: Annotated[
        EmbedFormat,
        _option("--format", help="jsonl (one object per text), json, or npy.", panel=OUTPUT),
    ] = EmbedFormat.jsonl,
    batch_size: Annotated[
        int,
        _option(
            "--batch-size",
            "-b",
            min=1,
            help=f"Texts per forward pass ({DEFAULT_BATCH_SIZE}).",
            panel=OUTPUT,
        ),
    ] = DEFAULT_BATCH_SIZE,
    output: options.Output = None,
    force: options.Force = False,
) -> None:
    """Embed texts: GPT2Model hidden states, pooled to one vector per text.

    jsonl and json give, per text in input order, its index, source, token
    count, whether it was truncated, and the vector. npy writes one float32
    array of shape (texts, dim) for numpy.load (--pooling none: (tokens, dim)
    for one text).
    """
    from gpt2cli.embedding import EmbedOptions
    from gpt2cli.inputs import read_texts, resolve_sources
    from gpt2cli.outputs import check_output
    from gpt2cli.session import ModelOptions, open_model

    check_output(output, force)  # before any input is read or any model loads
    to_stdout = output in (None, "-")
    if output_format is EmbedFormat.npy and to_stdout and sys.stdout.isatty():
        raise InputError("--format npy is binary: give -o PATH or redirect stdout")
    resolve_sources(texts, files)  # fail on missing input before loading the model
    inputs = read_texts(texts, files, lines=lines, replace_invalid=replace_invalid)
    session = open_model(
        ModelOptions(model or DEFAULT_MODEL, backend, device, dtype, threads), load=False
    )
    if layer is not None:
        session.info.hidden_state_index(layer)  # before the weights load
    engine = session.load()
    settings = EmbedOptions(layer, pooling.value, normalize, truncate, batch_size)
    sources = [t.source for t in inputs]
    # Tokenize everything first, so a text that is too long fails before any output.
    encoded = session.encode_for_embedding([t.text for t in inputs], sources, truncate)
    truncated = sum(1 for e in encoded if len(e.ids) < e.text_tokens)
    if truncated:
        warn(
            f"{truncated} of {len(encoded)} texts were longer than the model's context and were "
            f"truncated to their first {engine.info.n_positions} tokens"
        )
    if output_format is EmbedFormat.npy and pooling is Pooling.none and len(encoded) > 1:
        if len({len(e.ids) for e in encoded}) > 1:
            raise InputError(
                "--pooling none with --format npy needs texts of equal token counts "
                "(one array of shape texts x tokens x dim); use --format jsonl"
            )

    progress = show_progress() and len(encoded) > BLOCK_TEXTS
    binary = output_format is EmbedFormat.npy
    with output_stream(output, force, binary=binary) as out:
        writer = _Writer(out, output_format)
        for start in range(0, len(encoded), BLOCK_TEXTS):
            block = encoded[start : start + BLOCK_TEXTS]
            results = session.embed(block, settings, first_index=start)
            writer.write(results, sources[start : start + BLOCK_TEXTS])
            if progress:
                sys.stderr.write(f"\rgpt2cli: embedded {start + len(block)}/{len(encoded)} texts")
                sys.stderr.flush()
        if progress:
            sys.stderr.write("\r\x1b[K")
        writer.close()


class _Writer:
    """Writes results in input order: JSON lines as they come, a JSON array, or one npy array."""

    def __init__(self, out: IO, output_format: EmbedFormat) -> None:
        self.out = out
        self.format = output_format
        self.count = 0
        self.vectors: list = []

    def write(self, results: Sequence, sources: Sequence[str]) -> None:
        for result, source in zip(results, sources, strict=True):
            if self.format is EmbedFormat.npy:
                self.vectors.append(result.vector)
                continue
            record = {
                "index": result.index,
                "source": source,
                "tokens": result.tokens,
                "truncated": result.truncated,
                "embedding": result.vector.tolist(),
            }
            if self.format is EmbedFormat.jsonl:
                self.out.write(to_json(record) + "\n")
            else:
                self.out.write(("[\n" if self.count == 0 else ",\n") + to_json(record))
            self.count += 1

    def close(self) -> None:
        if self.format is EmbedFormat.json:
            self.out.write("\n]\n" if self.count else "[]\n")
        elif self.format is EmbedFormat.npy:
            import numpy as np

            array = (
                self.vectors[0]
                if len(self.vectors) == 1 and self.vectors[0].ndim == 2
                else (np.stack(self.vectors))
            )
            np.save(self.out, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
