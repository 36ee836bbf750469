"""Training data from local files (or `hf:NAME` through the datasets library), read with the
shared input module and checked row by row: a bad row is an InputError naming `file:line`.

- clm: plain text (the whole file is one text), or JSONL (`.jsonl`/`.json`) with a text field;
- classify: CSV (`.csv`, `.tsv`) or JSONL with a text and a label field (names or integers);
- ner: CoNLL-2003 column files (`-DOCSTART-` lines skipped, blank lines between sentences, the
  token in the first column and its tag in the last) or JSONL with token and tag lists.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from gpt2cli.errors import InputError
from gpt2cli.inputs import Source, iter_decoded, iter_lines

HF_PREFIX = "hf:"
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv", ".tsv")


@dataclass
class Examples:
    """The rows of one data file: texts (clm, classify) or token lists (ner), with labels, and
    where each came from (`file:line`)."""

    path: str
    texts: list[Any] = field(default_factory=list)  # str, or list[str] for ner
    labels: list[Any] = field(default_factory=list)  # raw labels (str or int); ner: lists
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def describe_file(path: str) -> dict[str, Any]:
    """A data file for the manifest: its path, size and SHA-256 (or the Hub dataset's name)."""
    if path.startswith(HF_PREFIX):
        return {"path": path}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path),
            "sha256": digest.hexdigest()}


def _lines(path: str) -> list[tuple[int, str]]:
    return list(iter_lines(iter_decoded(Source(path, path=path))))


def _json_rows(path: str) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object per line")
        rows.append((where, row))
    return rows


def _field(where: str, row: dict[str, Any], name: str, param: str) -> Any:
    if name not in row:
        keys = ", ".join(sorted(map(str, row))[:8]) or "none"
        raise InputError(
            where=where, reason=f"no field {name!r} (the row has {keys})",
            hint=f"choose the field with {{{param}}}",
        )
    return row[name]


def _hf_rows(name: str, split: str) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a Hub dataset through the datasets library: `hf:NAME` or `hf:NAME:SPLIT`."""
    try:
        import datasets
    except ImportError:
        from gpt2cli.errors import MissingExtraError

        raise MissingExtraError("hf: data sets", "train") from None
    spec = name[len(HF_PREFIX):]
    dataset_name, _, chosen = spec.partition(":")
    try:
        loaded = datasets.load_dataset(dataset_name, split=chosen or split)
    except Exception as exc:  # network, missing data set, bad split: many types
        raise InputError(f"{name}: cannot load the data set: {str(exc).splitlines()[0]}") from None
    names = _class_names(loaded)
    rows = []
    for index, row in enumerate(loaded):
        for key, label_names in names.items():
            value = row.get(key)
            if isinstance(value, int):
                row[key] = label_names[value]
            elif isinstance(value, list):
                row[key] = [label_names[v] for v in value]
        rows.append((f"{name}:{index + 1}", row))
    return rows


def _class_names(dataset: Any) -> dict[str, list[str]]:
    """Label names from a Hub data set's ClassLabel features (emotion, conll2003)."""
    names: dict[str, list[str]] = {}
    for key, feature in getattr(dataset, "features", {}).items():
        inner = getattr(feature, "feature", feature)
        if hasattr(inner, "names"):
            names[key] = list(inner.names)
    return names


def _rows(path: str, split: str) -> list[tuple[str, dict[str, Any]]]:
    if path.startswith(HF_PREFIX):
        return _hf_rows(path, split)
    return _json_rows(path)


def _check_text(where: str, value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: {name}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{where}: {name}: empty text")
    return value


def _check_label(where: str, value: Any, name: str) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(
            f"{where}: {name}: expected a label name or an integer, got {json.dumps(value)}"
        )
    if isinstance(value, int) and value < 0:
        raise InputError(f"{where}: {name}: a label number must be 0 or more, got {value}")
    if isinstance(value, str) and not value.strip():
        raise InputError(f"{where}: {name}: empty label")
    return value


def read_clm(path: str, text_field: str = "text", split: str = "train") -> Examples:
    """Texts for causal LM training: a plain text file is one text; JSONL gives one per row."""
    examples = Examples(path)
    if path.startswith(HF_PREFIX) or path.endswith(JSONL_SUFFIXES):
        for where, row in _rows(path, split):
            text = _check_text(where, _field(where, row, text_field, "text_field"), text_field)
            examples.texts.append(text)
            examples.sources.append(where)
    else:
        text = "".join(iter_decoded(Source(path, path=path)))
        if not text.strip():
            raise InputError(f"{path}: input is empty" if not text else
                             f"{path}: input is only whitespace")
        examples.texts.append(text)
        examples.sources.append(path)
    if not examples.texts:
        raise InputError(f"{path}: no rows")
    return examples


def read_classify(
    path: str, text_field: str = "text", label_field: str = "label", split: str = "train"
) -> Examples:
    """(text, label) rows from CSV/TSV (a header row names the fields) or JSONL."""
    examples = Examples(path)
    if path.endswith(CSV_SUFFIXES):
        rows = _csv_rows(path)
    else:
        rows = _rows(path, split)
    for where, row in rows:
        text = _check_text(where, _field(where, row, text_field, "text_field"), text_field)
        label = _field(where, row, label_field, "label_field")
        if path.endswith(CSV_SUFFIXES) and isinstance(label, str) and label.strip().isdigit():
            label = int(label)
        examples.texts.append(text)
        examples.labels.append(_check_label(where, label, label_field))
        examples.sources.append(where)
    if not examples.texts:
        raise InputError(f"{path}: no rows")
    return examples


def _csv_rows(path: str) -> list[tuple[str, dict[str, Any]]]:
    text = "".join(iter_decoded(Source(path, path=path)))
    reader = csv.reader(text.splitlines(keepends=True), delimiter="\t" if path.endswith(".tsv")
                        else ",")
    rows: list[tuple[str, dict[str, Any]]] = []
    header: list[str] | None = None
    try:
        for values in reader:
            where = f"{path}:{reader.line_num}"
            if not any(v.strip() for v in values):
                continue
            if header is None:
                header = values
                continue
            if len(values) != len(header):
                raise InputError(
                    f"{where}: {len(values)} columns, but the header has {len(header)}"
                )
            rows.append((where, dict(zip(header, values, strict=True))))
    except csv.Error as exc:
        raise InputError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None
    return rows


def read_ner(
    path: str, tokens_field: str = "tokens", tags_field: str = "ner_tags", split: str = "train"
) -> Examples:
    """Sentences of (token, tag) pairs from a CoNLL-2003 column file or JSONL lists."""
    examples = Examples(path)
    if path.startswith(HF_PREFIX) or path.endswith(JSONL_SUFFIXES):
        for where, row in _rows(path, split):
            tokens = _field(where, row, tokens_field, "tokens_field")
            tags = _field(where, row, tags_field, "tags_field")
            if not isinstance(tokens, list) or not all(
                isinstance(t, str) and t.strip() for t in tokens
            ):
                raise InputError(f"{where}: {tokens_field}: expected a list of non-empty strings")
            if not isinstance(tags, list) or len(tags) != len(tokens):
                raise InputError(
                    f"{where}: {tags_field}: expected a list of {len(tokens)} tags, one per token"
                )
            if not tokens:
                continue
            examples.texts.append(tokens)
            examples.labels.append([_check_label(where, t, tags_field) for t in tags])
            examples.sources.append(where)
    else:
        _read_conll(path, examples)
    if not examples.texts:
        raise InputError(f"{path}: no sentences")
    return examples


def _read_conll(path: str, examples: Examples) -> None:
    tokens: list[str] = []
    tags: list[str] = []
    start = 0

    def flush() -> None:
        if tokens:
            examples.texts.append(list(tokens))
            examples.labels.append(list(tags))
            examples.sources.append(f"{path}:{start}")
        tokens.clear()
        tags.clear()

    for number, line in _lines(path):
        columns = line.split()
        if not columns:
            flush()
            continue
        if columns[0] == "-DOCSTART-":
            flush()
            continue
        if len(columns) < 2:
            raise InputError(
                f"{path}:{number}: expected a token and its tag (whitespace-separated columns), "
                f"got {line.strip()!r}"
            )
        if not tokens:
            start = number
        tokens.append(columns[0])
        tags.append(columns[-1])
    flush()


def label_names(
    train: list[Any], valid: list[Any], names: list[str] | None, where: list[str],
    valid_where: list[str],
) -> list[str]:
    """id2label for the labels seen (flattened): integers index `names` (or become LABEL_i);
    strings are sorted, "O" first. A validation label unseen in training is an error."""
    seen = set(train)
    if any(isinstance(v, int) for v in seen) and any(isinstance(v, str) for v in seen):
        raise InputError(f"{where[0].rsplit(':', 1)[0]}: labels mix names and integers")
    if seen and all(isinstance(v, int) for v in seen):
        count = max(seen) + 1
        if names is not None:
            if len(names) < count:
                raise InputError(
                    param="label_names",
                    reason=f"{len(names)} names, but the data has label {count - 1}",
                )
            count = len(names)
        result = list(names) if names is not None else [f"LABEL_{i}" for i in range(count)]
    else:
        result = sorted(seen, key=lambda name: (name != "O", name))
    allowed = set(range(len(result))) if result and all(isinstance(v, int) for v in seen) \
        else set(result)
    for value, place in zip(valid, valid_where, strict=True):
        if value not in allowed:
            raise InputError(f"{place}: label {value!r} does not occur in the training data")
    return result
