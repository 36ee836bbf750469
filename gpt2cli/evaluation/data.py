"""The evaluation data: local files in each task's documented layout, or the Hub datasets
lm-evaluation-harness uses (through `datasets` and the Hugging Face cache).

Layouts (`--data TASK=PATH`; the format comes from the file name):

- `.jsonl` / `.json` (JSON lines) and `.parquet`: one record per document, with the field the
  task's Hub dataset has (`text`, `page`, `sentence`, or CBT's `sentences`, `question`,
  `answer`, `options`).
- anything else is UTF-8 text, read as the task's original distribution is laid out:
  lambada_openai and 1bw one document per line, wikitext2/wikitext103 the raw split
  (`wiki.test.raw`) cut into articles at their `= Title =` lines, ptb `ptb.test.txt` (one
  sentence per line), enwik8 and text8 the whole file as one stream, cbt_cn/cbt_ne the original
  `cbtest_*.txt` (21 numbered lines per question, the 21st `question<TAB>answer<TAB><TAB>a|b|...`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2cli.errors import InputError, ModelError

JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class CBTQuestion:
    """One Children's Book Test question: 20 sentences of context, a sentence with `XXXXX`
    where a word was taken out, the 10 candidates and the answer."""

    sentences: tuple[str, ...]
    question: str
    answer: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class HubDataset:
    path: str
    name: str
    split: str
    field: str


def read_local(path: str, layout: str, field: str) -> list[Any]:
    """The documents of `path` (a str each, or CBTQuestion for layout "cbt")."""
    file = Path(path)
    if not file.is_file():
        reason = "no such file" if not file.exists() else "not a regular file"
        raise InputError(f"--data {path}: {reason}")
    suffix = file.suffix.lower()
    if suffix in JSON_SUFFIXES:
        records = _json_lines(file)
    elif suffix in PARQUET_SUFFIXES:
        records = _parquet(file)
    else:
        text = _utf8(file)
        return _text_layout(text, layout, path)
    if layout == "cbt":
        return [_cbt_record(record, f"{path}:{number}") for number, record in records]
    docs = []
    for number, record in records:
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise InputError(f'{path}:{number}: expected an object with a string "{field}"')
        docs.append(value)
    return docs


def _utf8(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{file}: invalid UTF-8 at byte offset {exc.start}") from None


def _json_lines(file: Path) -> list[tuple[int, Any]]:
    records = []
    for number, line in enumerate(_utf8(file).splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise InputError(f"{file}:{number}: not JSON: {getattr(exc, 'msg', exc)}") from None
    return records


def _parquet(file: Path) -> list[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            f"{file}: reading Parquet needs pyarrow (pip install pyarrow), or give JSONL"
        ) from None
    try:
        rows = pq.read_table(file).to_pylist()
    except Exception as exc:  # pyarrow's errors have no common base
        raise InputError(f"{file}: not a Parquet file that can be read ({exc})") from None
    return [(number, row) for number, row in enumerate(rows, 1)]


def _text_layout(text: str, layout: str, path: str) -> list[Any]:
    if layout == "lines":
        return [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if layout == "wikitext":
        return wikitext_articles(text)
    if layout == "stream":
        return [text] if text else []
    if layout == "cbt":
        return cbt_questions(text, path)
    raise ValueError(layout)


_ARTICLE_TITLE = re.compile(r"^ = [^=].* = $")


def wikitext_articles(raw: str) -> list[str]:
    """WikiText's raw split cut into articles: each starts at a level-1 heading line
    (` = Title = `; sections are `= = ... = =`), CRLF read as LF, every line kept as it is."""
    lines = raw.replace("\r\n", "\n").split("\n")
    articles: list[list[str]] = []
    for line in lines:
        if _ARTICLE_TITLE.match(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    pages = ["\n".join(article) for article in articles]
    return [page for page in pages if page.strip()]


def cbt_questions(text: str, path: str) -> list[CBTQuestion]:
    """The original CBT files: questions of 21 numbered lines, separated by blank lines."""
    questions = []
    block: list[tuple[int, str]] = []
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n") + [""], 1):
        if line.strip():
            block.append((number, line))
            continue
        if block:
            questions.append(_cbt_block(block, path))
            block = []
    return questions


def _cbt_block(block: list[tuple[int, str]], path: str) -> CBTQuestion:
    first = block[0][0]
    if len(block) != 21:
        raise InputError(f"{path}:{first}: a CBT question has 21 lines, this one {len(block)}")
    sentences = []
    for index, (number, line) in enumerate(block, 1):
        label, _, rest = line.partition(" ")
        if label != str(index):
            raise InputError(f"{path}:{number}: expected line {index} of a CBT question")
        sentences.append(rest)
    parts = sentences.pop().split("\t")
    if len(parts) != 4:
        raise InputError(f"{path}:{block[-1][0]}: expected question<TAB>answer<TAB><TAB>options")
    question, answer, _, options = parts
    return _cbt(sentences, question, answer, options.split("|"), f"{path}:{first}")


def _cbt_record(record: Any, where: str) -> CBTQuestion:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected an object")
    return _cbt(record.get("sentences"), record.get("question"), record.get("answer"),
                record.get("options"), where)  # fmt: skip


def _cbt(sentences: Any, question: Any, answer: Any, options: Any, where: str) -> CBTQuestion:
    def strings(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    if not (strings(sentences) and isinstance(question, str) and isinstance(answer, str)
            and strings(options)):  # fmt: skip
        raise InputError(
            f'{where}: expected "sentences" (strings), "question", "answer" and "options" '
            "(strings)"
        )
    if "XXXXX" not in question:
        raise InputError(f"{where}: the question has no XXXXX to fill")
    if answer not in options:
        raise InputError(f"{where}: the answer {answer!r} is not one of the options")
    return CBTQuestion(tuple(sentences), question, answer, tuple(options))


def read_hub(task: str, hub: HubDataset | None) -> list[str]:
    """The task's documents from the Hub dataset lm-eval uses, through the Hugging Face cache
    (HF_HUB_OFFLINE=1: the cache only)."""
    if hub is None:
        raise InputError(f"{task}: no Hub dataset is wired for this task; give it with "
                         f"--data {task}=PATH")  # fmt: skip
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"{task}: loading {hub.path} needs the 'datasets' extra "
            f"(pip install 'gpt2cli[datasets]'); or give the data with --data {task}=PATH"
        ) from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        rows = datasets.load_dataset(hub.path, hub.name, split=hub.split)
    except Exception as exc:  # datasets raises many kinds; each is one line here
        if offline:
            reason = "is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
        else:
            reason = f"could not be loaded ({_first_line(exc)})"
        raise ModelError(
            f"{task}: {hub.path} ({hub.name}, {hub.split}) {reason}; give the data with "
            f"--data {task}=PATH"
        ) from None
    return [str(value) for value in rows[hub.field]]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
