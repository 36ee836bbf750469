"""`gpt2cli batch`: generate, embed or score every row of input files into a resumable output
directory, on this machine or on Ray Data."""

from __future__ import annotations

import sys
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from gpt2cli import options
from gpt2cli.commands.generate import DEFAULT_BATCH_SIZE, MAX_BATCH_ROWS, parameter_options
from gpt2cli.errors import InputError

DEFAULT_MODEL = "gpt2"
JOB = "Job"
ENGINE = "Engine"
GENERATION = "Generation (batch generate; the same options as generate)"
FEATURES = "Embedding (batch embed) and scoring (batch score)"


class TaskName(str, Enum):
    """The TASK argument."""

    generate = "generate"
    embed = "embed"
    score = "score"


class InputFormat(str, Enum):
    """--input-format choices (batch.rows.INPUT_FORMATS)."""

    jsonl = "jsonl"
    csv = "csv"
    parquet = "parquet"
    txt = "txt"
    openai = "openai"


class ShardFormat(str, Enum):
    """--output-format choices (batch.shards.OUTPUT_FORMATS)."""

    jsonl = "jsonl"
    parquet = "parquet"


class EngineName(str, Enum):
    """--engine choices."""

    local = "local"
    ray = "ray"


class Truncation(str, Enum):
    """--truncate choices: generate takes none|left, embed none|left|right."""

    none = "none"
    left = "left"
    right = "right"


class Pooling(str, Enum):
    """--pooling choices (embed)."""

    mean = "mean"
    last = "last"
    first = "first"


_job = partial(options.panel_option, panel=JOB, show_default=False)
_engine = partial(options.panel_option, panel=ENGINE, show_default=False)
_feature = partial(options.panel_option, panel=FEATURES, show_default=False)


@parameter_options(after="threads")
def batch(
    task: Annotated[TaskName, typer.Argument(metavar="TASK", help="generate, embed or score.",
                                             case_sensitive=False, show_default=False)],
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT", show_default=False,
                                                help="Input files (jsonl, csv, parquet, txt, "
                                                "or an OpenAI batch file).")],
    output_dir: Annotated[str, _job("--output-dir", metavar="OUT",
                                    help="The job's directory: shards, manifest, _SUCCESS.")],
    model: options.Model = None,
    backend: options.BackendOpt = options.BackendName.auto,
    device: options.DeviceOpt = options.DeviceName.cpu,
    dtype: options.DtypeOpt = options.DtypeName.float32,
    threads: options.ThreadsOpt = None,
    input_format: Annotated[InputFormat | None, _job(
        "--input-format", case_sensitive=False,
        help="Default: from the extension (.jsonl .csv .parquet .txt); a .jsonl of OpenAI "
        "batch requests reads as openai.")] = None,
    text_field: Annotated[str | None, _job(
        "--text-field", metavar="NAME",
        help="The field or column holding the text (text; an Azure ML CSV's input_string "
        "is found without it).")] = None,
    id_field: Annotated[str | None, _job(
        "--id-field", metavar="NAME",
        help="The field holding each row's unique id (default: line number and a hash of "
        "the text).")] = None,
    output_format: Annotated[ShardFormat, _job(
        "--output-format", case_sensitive=False, help="Shards as jsonl (default) or parquet.",
    )] = ShardFormat.jsonl,
    shard_rows: Annotated[int, _job("--shard-rows", metavar="N", min=1,
                                    help="Rows per shard (1000).")] = 1000,
    batch_size: Annotated[int | None, _job(
        "--batch-size", "-b", metavar="N", min=1, max=MAX_BATCH_ROWS,
        help=f"Rows decoded together (generate: {DEFAULT_BATCH_SIZE}), texts (embed: 16) or "
        "windows (score: 8) per forward pass.")] = None,
    resume: Annotated[bool, _job("--resume", help="Continue the job in OUT: skip the rows "
                                 "its finished shards hold.")] = False,
    overwrite: Annotated[bool, _job("--overwrite", help="Delete the job in OUT and start "
                                    "again.")] = False,
    max_errors: Annotated[int | None, _job(
        "--max-errors", metavar="N", min=1,
        help="Stop with exit 1 once N rows have failed (default: no limit; failed rows "
        "carry their error).")] = None,
    truncate: Annotated[Truncation, _feature(
        "--truncate", case_sensitive=False,
        help="A text past the context: none refuses the row; left drops its start; right "
        "(embed) its end.")] = Truncation.none,
    return_full_text: Annotated[bool, typer.Option(
        "--return-full-text/--no-return-full-text", rich_help_panel=GENERATION,
        help="generated_text starts with the prompt (default: yes).")] = True,
    layer: Annotated[int | None, _feature("--layer", metavar="N",
                                          help="embed: hidden state N (default: the last, "
                                          "after the final layer norm).")] = None,
    pooling: Annotated[Pooling, _feature("--pooling", case_sensitive=False,
                                         help="embed: mean, last or first.")] = Pooling.mean,
    normalize: Annotated[bool, _feature("--normalize", help="embed: unit L2 length.")] = False,
    ctx: Annotated[int | None, _feature("--ctx", "-c", metavar="N", min=2,
                                        help="score: tokens per window.")] = None,
    stride: Annotated[int | None, _feature("--stride", metavar="N", min=1,
                                           help="score: tokens between windows.")] = None,
    no_prefix: Annotated[bool, _feature("--no-prefix", help="score: no <|endoftext|> "
                                        "before each text.")] = False,
    engine: Annotated[EngineName, _engine(
        "--engine", case_sensitive=False,
        help="local (this process) or ray (Ray Data; pip install 'gpt2cli[ray]').")
    ] = EngineName.local,
    ray_address: Annotated[str | None, _engine(
        "--ray-address", metavar="ADDR",
        help="A Ray cluster to join (auto: the one RAY_ADDRESS or this node names); default: "
        "start a local instance.")] = None,
    num_workers: Annotated[int, _engine("--num-workers", metavar="N", min=1,
                                        help="Ray: model replicas (actors), 1.")] = 1,
    cpus_per_worker: Annotated[int, _engine("--cpus-per-worker", metavar="K", min=1,
                                            help="Ray: CPUs (threads) per replica, 1.")] = 1,
    fmt: options.FormatOpt = None,
    as_json: options.JsonFlag = False,
    as_jsonl: options.JsonlFlag = False,
    **generation: Any,
) -> None:
    """Run generate, embed or score over every row of INPUT files into OUT.

    Rows come from jsonl (--text-field, --id-field), csv (an Azure ML input_string column
    too), parquet, txt (one row per non-blank line) or the OpenAI batch format (custom_id,
    body.prompt or body.input, answered in OpenAI's batch output shape). OUT gets
    part-NNNNN.jsonl (or .parquet) shards, each renamed into place when whole, a
    _manifest.json (command, model and weights hash, versions, row counts) and _SUCCESS last.
    Each output row holds the id, the command's JSON fields and error (null on success).

    --resume continues a killed job: every row ends up exactly once. A non-empty OUT is
    refused without --resume or --overwrite. Seeds come from --seed and each row's id, so a
    resumed, reordered or Ray run gives each row the same text. Prints a summary (text or
    json).
    """
    from gpt2cli.batch import job as batch_job
    from gpt2cli.batch.rows import Fields
    from gpt2cli.batch.settings import JobSettings, RaySettings
    from gpt2cli.batch.tasks import TaskSpec
    from gpt2cli.commands.generate import parameter_values
    from gpt2cli.embedding import EmbedOptions
    from gpt2cli.outputs import output_stream, to_json
    from gpt2cli.session import ModelOptions, open_model

    output = options.output_format(fmt, as_json, as_jsonl)
    name = task.value
    if resume and overwrite:
        raise InputError("--resume and --overwrite are exclusive")
    values = parameter_values(generation)
    given = [key for key, value in values.items() if value is not None]
    _only(name == "generate", given and "--" + given[0].replace("_", "-"), "generate")
    _only(name == "generate", not return_full_text and "--no-return-full-text", "generate")
    for flag, used in (("--layer", layer is not None), ("--pooling", pooling != Pooling.mean),
                       ("--normalize", normalize)):  # fmt: skip
        _only(name == "embed", used and flag, "embed")
    for flag, used in (("--ctx", ctx is not None), ("--stride", stride is not None),
                       ("--no-prefix", no_prefix)):  # fmt: skip
        _only(name == "score", used and flag, "score")
    if name == "score" and truncate != Truncation.none:
        raise InputError("--truncate does not apply to batch score (its windows cover every "
                         "token)")  # fmt: skip
    if name == "generate" and truncate == Truncation.right:
        raise InputError("--truncate right applies to batch embed; generate takes none or left")
    if engine == EngineName.local and (ray_address or num_workers != 1 or cpus_per_worker != 1):
        raise InputError("--ray-address, --num-workers and --cpus-per-worker need --engine ray")
    ray = RaySettings(ray_address, num_workers, cpus_per_worker)
    model_options = ModelOptions(model or DEFAULT_MODEL, backend, device, dtype,
                                 cpus_per_worker if engine == EngineName.ray else threads)
    settings = JobSettings(
        inputs=inputs,
        output_dir=Path(output_dir),
        input_format=input_format.value if input_format else None,
        fields=Fields(text_field or "text", id_field, text_field is not None),
        output_format=output_format.value,
        shard_rows=shard_rows,
        resume=resume,
        overwrite=overwrite,
        max_errors=max_errors,
        engine=engine.value,
        ray=ray,
        command=["gpt2cli", *sys.argv[1:]],
    )
    batch_job.input_formats(settings, name)  # missing or mixed inputs before any model opens
    if engine == EngineName.ray:
        from gpt2cli.batch.ray_engine import check_ray

        check_ray()  # before any model opens
    session = open_model(model_options, load=False)

    def spec_for(old_seed: int | None) -> TaskSpec:
        from gpt2cli.decoding import fresh_seed

        overrides = {**values, "truncate_left": truncate == Truncation.left}
        seed = values.get("seed")
        if seed is None:
            seed = old_seed if old_seed is not None else fresh_seed()
        default_size = {"generate": DEFAULT_BATCH_SIZE, "embed": 16, "score": 8}[name]
        return TaskSpec(
            task=name,
            model=model_options,
            batch_size=batch_size or default_size,
            overrides=overrides if name == "generate" else {},
            seed=seed if name == "generate" else 0,
            full_text=return_full_text,
            embed=EmbedOptions(layer, pooling.value, normalize, truncate.value,
                               batch_size or default_size) if name == "embed" else None,
            score={"ctx": ctx, "stride": stride, "prefix_eos": not no_prefix}
            if name == "score" else {},
        )

    summary = batch_job.run(name, spec_for, session, settings, options.cli_name)
    record = summary.as_dict()
    with output_stream(None, False) as out:
        if output == "text":
            state = "complete" if summary.complete else "incomplete"
            rate = record["rows_per_second"]
            out.write(f"{summary.output_dir}: {state}: {summary.rows} rows ({summary.written} "
                      f"written now, {summary.resumed} before), {summary.errors} errors, "
                      f"{summary.shards} shards, {summary.seconds:.1f} s"
                      + (f", {rate:.2f} rows/s" if rate else "") + "\n")
        else:
            out.write(to_json(record, indent=2 if output == "json" else None) + "\n")


def _only(allowed: bool, flag: str | bool | None, task: str) -> None:
    if flag and not allowed:
        raise InputError(f"{flag} applies to batch {task} only")
