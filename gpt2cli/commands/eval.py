"""`gpt2cli eval`: the GPT-2 paper's zero-shot table (LAMBADA, CBT, WikiText, PTB, enwik8,
text8, 1BW) with lm-evaluation-harness's definitions."""

from __future__ import annotations

import sys
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from gpt2cli import options
from gpt2cli.errors import InputError

if TYPE_CHECKING:
    from gpt2cli.evaluation.tasks import EvalOptions, Task, TaskResult

DEFAULT_MODEL = "gpt2"
TASKS_PANEL = "Tasks and data"
MEASURE = "Measurement"

_option = partial(options.panel_option, panel=MEASURE)
_task_option = partial(options.panel_option, panel=TASKS_PANEL)
# The libraries whose versions every record names (those installed).
LIBRARIES = ("gpt2cli", "numpy", "tokenizers", "tiktoken", "torch", "transformers",
             "onnxruntime", "datasets")  # fmt: skip


def evaluate(
    tasks: Annotated[
        list[str] | None,
        _task_option(
            "--tasks", metavar="LIST",
            help="Tasks, comma-separated (repeatable): lambada_openai, cbt_cn, cbt_ne, "
            "wikitext2, ptb, enwik8, text8, wikitext103, 1bw.",
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        _task_option(
            "--data", metavar="TASK=PATH",
            help="Read TASK's data from PATH (JSONL, Parquet or text in the task's layout; "
            "see the README). Without it, the Hub dataset lm-eval uses (needs the 'datasets' "
            "extra; HF_HUB_OFFLINE=1 reads the cache only). Repeatable.",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        _task_option(
            "--limit", metavar="N", min=1,
            help="Only the first N documents of each task (ptb: sentences; enwik8, text8: "
            "windows).",
        ),
    ] = None,
    model: options.Model = None,
    backend: options.BackendOpt = options.BackendName.auto,
    device: options.DeviceOpt = options.DeviceName.cpu,
    dtype: options.DtypeOpt = options.DtypeName.float32,
    threads: options.ThreadsOpt = None,
    ctx: Annotated[
        int | None,
        _option(
            "--ctx", "-c", "--ctx-size", metavar="N", min=1,
            help="Tokens fed to the model per window (lm-eval's max_length; default: the "
            "model's context).",
        ),
    ] = None,
    stride: Annotated[
        int | None,
        _option(
            "--stride", metavar="N", min=1,
            help="Perplexity tasks: overlapping windows starting every N tokens instead of "
            "lm-eval's disjoint ones (the output says so).",
        ),
    ] = None,
    last_token: Annotated[
        bool,
        _option(
            "--last-token",
            help="lambada_openai: the paper's protocol, predicting only the last BPE token "
            "(default: lm-eval's, the whole last word).",
        ),
    ] = False,
    batch_size: Annotated[
        int,
        _option("--batch-size", "-b", metavar="N", min=1, help="Windows per forward pass (8)."),
    ] = 8,
    fmt: options.FormatOpt = None,
    as_json: options.JsonFlag = False,
    as_jsonl: options.JsonlFlag = False,
    output: options.Output = None,
    force: options.Force = False,
) -> None:
    """Evaluate a model on the GPT-2 paper's zero-shot tasks, with lm-evaluation-harness's
    definitions.

    Prints one table: each task's figures with their standard errors and
    the number of documents, beside the paper's 124M and 355M figures
    (the paper used other tokenization and detokenization: not like for
    like). JSON has one record per task: every metric, its stderr and
    definition, n, the model, backend and library versions.
    """
    from gpt2cli.evaluation import tasks as evaluation
    from gpt2cli.outputs import RecordWriter, check_output, output_stream
    from gpt2cli.session import ModelOptions, open_model

    check_output(output, force)
    output_format = options.output_format(fmt, as_json, as_jsonl)
    chosen = _task_list(tasks)
    paths = _data_paths(data, chosen)
    if stride is not None and not any(t.kind == "rolling" for t in chosen):
        raise InputError("--stride applies to the perplexity tasks (wikitext2, ptb, ...), "
                         "and none was chosen")  # fmt: skip
    if last_token and not any(t.kind == "lambada" for t in chosen):
        raise InputError("--last-token applies to lambada_openai, which was not chosen")
    if ctx is not None and stride is not None and stride > ctx:
        raise InputError(f"--stride: must be between 1 and {ctx}, got {stride}")
    session = open_model(
        ModelOptions(model or DEFAULT_MODEL, backend, device, dtype, threads), load=False
    )
    settings = evaluation.EvalOptions(
        ctx=ctx if ctx is not None else session.info.n_positions,
        stride=stride,
        last_token=last_token,
        batch_size=batch_size,
        limit=limit,
    )
    evaluation.check_options(settings, session.info.n_positions)
    loaded = [(task, *_load(task, paths.get(task.name))) for task in chosen]  # before the model
    engine = session.load()
    header = _Header(engine, settings, str(getattr(dtype, "value", dtype)))
    if _interactive():
        from gpt2cli.outputs import log

        log(f"eval: {header.describe()}")
    with output_stream(output, force) as out:
        writer = RecordWriter(out, output_format, render=_render_task)
        if output_format == "text":
            out.write(_TABLE_HEAD)
        records = []
        for index, (task, source, docs) in enumerate(loaded):
            result = _run(session, task, docs, settings)
            record = _record(index, source, task, result, header)
            records.append(record)
            writer.write(record)
        if output_format == "text":
            out.write(_table_foot(records, header))
        writer.close()


def _interactive() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


def _task_list(given: list[str] | None) -> list[Task]:
    from gpt2cli.evaluation.tasks import TASKS, get_task

    names = [name.strip() for value in given or [] for name in value.split(",") if name.strip()]
    if not names:
        raise InputError("--tasks: give one or more of " + ", ".join(TASKS))
    chosen: list[Task] = []
    for name in names:
        try:
            task = get_task(name)
        except InputError as exc:
            raise InputError(exc.render(options.cli_name)) from None
        if task not in chosen:
            chosen.append(task)
    return chosen


def _data_paths(given: list[str] | None, chosen: list[Task]) -> dict[str, str]:
    paths: dict[str, str] = {}
    names = {task.name for task in chosen}
    for value in given or []:
        name, sep, path = value.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise InputError(
                f"--data {value}: expected TASK=PATH (e.g. --data wikitext2=wiki.test.raw)"
            )
        if name not in names:
            raise InputError(f"--data {value}: {name} is not one of the --tasks")
        if name in paths:
            raise InputError(f"--data: {name} given twice")
        paths[name] = path
    return paths


def _load(task: Task, path: str | None) -> tuple[str, list[Any]]:
    """(source, documents) of `task`: the --data file, else the Hub dataset."""
    from gpt2cli.evaluation.data import read_hub, read_local

    if path is not None:
        docs = read_local(path, task.layout, task.field)
        source = path
    else:
        docs = read_hub(task.name, task.hub)
        hub = task.hub
        assert hub is not None
        source = f"hub:{hub.path} ({hub.name}, {hub.split})"
    if not docs:
        raise InputError(f"{task.name}: {source} holds no documents")
    return source, docs


def _run(session: Any, task: Task, docs: list[Any], settings: EvalOptions) -> TaskResult:
    from gpt2cli.outputs import Progress

    with Progress(f"eval {task.name}") as progress:

        def tick(done: int, total: int) -> None:
            progress.update(completed=done, total=total)

        return session.evaluate(task, docs, settings, tick)


class _Header:
    """The model and settings every record states."""

    def __init__(self, engine: Any, settings: EvalOptions, dtype: str) -> None:
        self.model = engine.info.source
        self.directory = str(engine.info.model_dir)
        self.backend = engine.name
        self.dtype = dtype
        self.settings = settings
        self.versions = _versions(engine.name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ctx": self.settings.ctx,
            "stride": self.settings.stride,
            "last_token": self.settings.last_token,
            "limit": self.settings.limit,
            "model": self.model,
            "model_directory": self.directory,
            "backend": self.backend,
            "dtype": self.dtype,
            "versions": self.versions,
        }

    def describe(self) -> str:
        from gpt2cli.outputs import escape_controls

        how = f"model {escape_controls(self.model)} ({self.backend}, {self.dtype}); "
        how += f"ctx {self.settings.ctx}"
        if self.settings.stride is not None:
            how += f", stride {self.settings.stride} (overlapping windows)"
        if self.settings.last_token:
            how += ", lambada: last token"
        if self.settings.limit is not None:
            how += f", limit {self.settings.limit}"
        return how


def _versions(backend: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in LIBRARIES:
        if backend == "onnx" and name in {"torch", "transformers"}:
            continue
        if backend == "torch" and name == "onnxruntime":
            continue
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _record(index: int, source: str, task: Task, result: TaskResult, header: _Header) -> dict:
    from gpt2cli.evaluation.tasks import PAPER_NOTE

    record: dict[str, Any] = {
        "index": index,
        "source": source,
        "task": task.name,
        "n": result.n,
        "token_count": result.token_count,
    }
    for metric in result.metrics:
        record[metric.name] = metric.value
        record[f"{metric.name}_stderr"] = metric.stderr
    record["limited"] = result.limited
    record["definition"] = result.definition
    record["definitions"] = {metric.name: metric.definition for metric in result.metrics}
    record["paper"] = {
        metric.name: {"124M": metric.paper[0], "355M": metric.paper[1],
                      "unit": "percent" if metric.scale == 100 else None}
        for metric in result.metrics if metric.paper is not None
    }  # fmt: skip
    record["paper_note"] = PAPER_NOTE
    record.update(header.as_dict())
    return record


_COLUMNS = "{:<15} {:<19} {:>12} {:>12} {:>7} {:>11} {:>11}\n"
_TABLE_HEAD = _COLUMNS.format("task", "metric", "value", "stderr", "n", "paper 124M*",
                              "paper 355M*")  # fmt: skip


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1e7:
        return f"{value:.4g}"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"


def _render_task(record: dict[str, Any]) -> str:
    """A task's rows of the table: one per metric (acc in percent, as the paper)."""
    from gpt2cli.outputs import escape_controls

    lines = []
    for name in record["definitions"]:
        paper = record["paper"].get(name)
        scale = 100.0 if paper and paper["unit"] == "percent" else 1.0
        value, stderr = record[name], record[f"{name}_stderr"]
        lines.append(_COLUMNS.format(
            escape_controls(record["task"]),
            name + (" (%)" if scale != 1 else ""),
            _number(None if value is None else value * scale),
            "n/a" if stderr is None else "±" + _number(stderr * scale),
            record["n"],
            f"{paper['124M']:.2f}" if paper else "-",
            f"{paper['355M']:.2f}" if paper else "-",
        ))  # fmt: skip
    return "".join(lines)


def _table_foot(records: list[dict[str, Any]], header: _Header) -> str:
    from gpt2cli.evaluation.tasks import PAPER_NOTE
    from gpt2cli.outputs import escape_controls

    lines = [f"\n* {PAPER_NOTE}\n", f"{header.describe()}\n"]
    for record in records:
        limited = " (--limit: part of the data)" if record["limited"] else ""
        lines.append(
            f"{record['task']}: {escape_controls(record['source'])}{limited}: "
            f"{record['definition']}\n"
        )
    return "".join(lines)
