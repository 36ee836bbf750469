"""`generate`: greedy decoding against transformers' generate, sampling reproducibility, the
memorised paragraph through the CLI, and the command's output formats and errors."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpt2cli.decoding import GenerationParams
from gpt2cli.generation_params import PIPELINE_MAX_NEW_TOKENS
from gpt2cli.scheduler import generate
from tests.clirun import assert_one_line_error, run_cli, run_in_process
from tests.models import MEMORISED_PARAGRAPH, MEMORISED_PROMPT_TOKENS

EOS = 50256
PROMPTS = [
    "Hello, I'm a language model,",
    "The",
    "Once upon a time, far far away, there lived a",
    "Long time ago",
]


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path, hf_model):  # noqa: ANN001, ANN201
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    return hf_model, tokenizer


def hf_generate(hf, prompts: list[str], **kwargs: Any) -> list[list[int]]:  # noqa: ANN001
    """transformers' generate on a left-padded batch: the new tokens of each row, up to EOS."""
    import torch

    model, tokenizer = hf
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**encoded, pad_token_id=EOS, **kwargs)
    rows = []
    for row in out[:, encoded["input_ids"].shape[1] :].tolist():
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows


def ours(backend, prompts: list[str], batch_size: int, **values: Any) -> list[list[int]]:  # noqa: ANN001
    params = GenerationParams.resolve(backend.info.generation_defaults, values)
    return [s.token_ids for s in generate(backend, prompts, params, batch_size)]


# --- transformers as the oracle ----------------------------------------------------------------


def test_greedy_equals_transformers_for_single_prompts(torch_backend, hf) -> None:  # noqa: ANN001
    for prompt in PROMPTS:
        expected = hf_generate(hf, [prompt], do_sample=False, max_new_tokens=30)
        assert ours(torch_backend, [prompt], 1, do_sample=False, max_new_tokens=30) == expected


def test_greedy_equals_transformers_for_padded_batches(torch_backend, hf) -> None:  # noqa: ANN001
    expected = hf_generate(hf, PROMPTS, do_sample=False, max_new_tokens=30)
    assert ours(torch_backend, PROMPTS, 4, do_sample=False, max_new_tokens=30) == expected
    assert ours(torch_backend, PROMPTS, 3, do_sample=False, max_new_tokens=30) == expected


def test_greedy_with_processors_equals_transformers(torch_backend, hf) -> None:  # noqa: ANN001
    kwargs = {"repetition_penalty": 1.4, "no_repeat_ngram_size": 2, "min_new_tokens": 8}
    for prompt in PROMPTS[:2]:
        expected = hf_generate(hf, [prompt], do_sample=False, max_new_tokens=25, **kwargs)
        got = ours(torch_backend, [prompt], 1, do_sample=False, max_new_tokens=25, **kwargs)
        assert got == expected
    expected = hf_generate(hf, PROMPTS, do_sample=False, max_new_tokens=25, **kwargs)
    assert ours(torch_backend, PROMPTS, 4, do_sample=False, max_new_tokens=25, **kwargs) == expected


def test_max_length_counts_the_prompt_like_transformers(torch_backend, hf) -> None:  # noqa: ANN001
    prompt = PROMPTS[0]  # 8 tokens
    expected = hf_generate(hf, [prompt], do_sample=False, max_length=20, min_length=20)
    got = ours(torch_backend, [prompt], 1, do_sample=False, max_length=20, min_length=20)
    assert got == expected and len(got[0]) == 12


def test_model_defaults_are_the_pipelines(tiny_model_dir: Path) -> None:
    """gpt2's task_specific_params sample with top-k 50; the length is the pipeline's default
    of new tokens, which its max_length 50 does not replace (transformers 4.57 applies the
    task parameters after choosing the length default, and max_new_tokens beats max_length)."""
    params = session_for(tiny_model_dir).generation_params({})
    assert params.do_sample and params.top_k == 50 and params.temperature == 1.0
    assert params.max_new_tokens == PIPELINE_MAX_NEW_TOKENS and params.default_length


def test_same_seed_samples_the_same(torch_backend) -> None:  # noqa: ANN001
    values = {"do_sample": True, "max_new_tokens": 20, "seed": 1234, "num_return_sequences": 2}
    first = ours(torch_backend, PROMPTS, 4, **values)
    assert first == ours(torch_backend, PROMPTS, 4, **values)
    assert first == ours(torch_backend, PROMPTS, 1, **values)  # batch size does not matter
    assert first != ours(torch_backend, PROMPTS, 4, **{**values, "seed": 1235})
    assert first[0] != first[1]  # two samples of one prompt differ


# --- the onnx backend against the torch backend --------------------------------------------------


def test_onnx_greedy_equals_torch_greedy(torch_backend, onnx_backend) -> None:  # noqa: ANN001
    for batch in (1, 4):
        expected = ours(torch_backend, PROMPTS, batch, do_sample=False, max_new_tokens=30)
        assert ours(onnx_backend, PROMPTS, batch, do_sample=False, max_new_tokens=30) == expected
    kwargs = {"repetition_penalty": 1.4, "no_repeat_ngram_size": 2, "max_new_tokens": 20}
    expected = ours(torch_backend, PROMPTS, 4, do_sample=False, **kwargs)
    assert ours(onnx_backend, PROMPTS, 4, do_sample=False, **kwargs) == expected


def test_onnx_samples_like_torch_with_the_same_seed(torch_backend, onnx_backend) -> None:  # noqa: ANN001
    values = {"do_sample": True, "max_new_tokens": 20, "seed": 99, "top_k": 0, "top_p": 0.9}
    expected = ours(torch_backend, PROMPTS, 4, **values)
    assert ours(onnx_backend, PROMPTS, 4, **values) == expected
    assert ours(onnx_backend, PROMPTS, 4, **values) == expected


# --- the memorised paragraph through the CLI ---------------------------------------------------


def memorised_prompt() -> tuple[str, str]:
    from gpt2cli.tokenizer import GPT2Tokenizer

    tokenizer = GPT2Tokenizer()
    prompt = tokenizer.decode(tokenizer.encode(MEMORISED_PARAGRAPH)[:MEMORISED_PROMPT_TOKENS])
    return prompt, MEMORISED_PARAGRAPH[len(prompt) :]


@pytest.mark.parametrize("which", ["torch", "onnx", "onnx-int8"])
def test_cli_reproduces_the_memorised_paragraph(which: str, request: pytest.FixtureRequest) -> None:
    fixture = {"torch": "memorised_model_dir", "onnx": "memorised_onnx_dir",
               "onnx-int8": "memorised_onnx_int8_dir"}[which]
    model = str(request.getfixturevalue(fixture))
    backend = "torch" if which == "torch" else "onnx"
    prompt, rest = memorised_prompt()
    args = ("generate", "-m", model, "--backend", backend, "--greedy", "--max-new-tokens", "80")
    result = run_cli(*args, prompt)
    assert result.returncode == 0, result.err
    assert result.out == MEMORISED_PARAGRAPH + "\n"
    # A stop string spanning tokens ("ships pass" is " ships" + " pass") cuts the text there.
    result = run_cli(
        *args, "--no-return-full-text", "--stop", "ships pass", "--stop", "never there",
        "--format", "jsonl", prompt,
    )
    (sequence,) = json.loads(result.out)["sequences"]
    assert sequence["generated_text"] == rest[: rest.index("ships pass")]
    assert sequence["finish_reason"] == "stop" and sequence["stop_string"] == "ships pass"


# --- the command ---------------------------------------------------------------------------------


def invoke(*args: str, stdin: str = "") -> tuple[int, str, str]:
    """`generate ARGS` in-process through cli.run; (exit code, stdout, stderr)."""
    result = run_in_process("generate", *args, input=stdin)
    return result.returncode, result.out, result.err


def test_text_output_and_separators(tiny_model_dir: Path) -> None:
    model = str(tiny_model_dir)
    code, single, _ = invoke("-m", model, "--greedy", "--max-new-tokens", "5", "Hello")
    assert code == 0 and single.startswith("Hello") and single.endswith("\n")
    assert single.count("\n") == single.rstrip("\n").count("\n") + 1
    code, out, _ = invoke("-m", model, "--greedy", "--max-new-tokens", "5", "Hello", "The")
    first, second, tail = out.split("\n---\n")
    assert first == single[:-1] and second.startswith("The") and tail == ""
    code, out, _ = invoke(
        "-m", model, "--greedy", "--max-new-tokens", "5", "--separator", "\\0",
        "--no-return-full-text", "Hello", "The",
    )
    generated = out.split("\0")
    assert len(generated) == 3 and generated[0] == single[len("Hello") : -1]


PROMPT_KEYS = ["index", "source", "prompt", "token_count", "truncated_tokens", "sequences"]
SEQUENCE_KEYS = ["generated_text", "ids", "token_count", "finish_reason", "stop_string"]


def test_json_and_jsonl_records(tiny_model_dir: Path) -> None:
    """One record per prompt, its sequences inside; json is one array, jsonl a line each."""
    model = str(tiny_model_dir)
    args = ("-m", model, "--seed", "7", "-n", "6", "--num-return-sequences", "2", "--do-sample")
    code, out, _ = invoke(*args, "--format", "json", "Hello", "Once upon")
    records = json.loads(out)
    assert code == 0 and [r["index"] for r in records] == [0, 1]
    first = records[0]
    assert list(first) == PROMPT_KEYS and first["source"] == "argument 1"
    assert first["prompt"] == "Hello" and first["token_count"] == 1
    assert first["truncated_tokens"] == 0 and len(first["sequences"]) == 2
    for sequence in first["sequences"]:
        assert list(sequence) == SEQUENCE_KEYS
        assert sequence["generated_text"].startswith("Hello")
        assert sequence["token_count"] == len(sequence["ids"]) == 6
        assert sequence["finish_reason"] == "length" and sequence["stop_string"] is None
    assert records[1]["token_count"] == 2
    code, out, _ = invoke(*args, "--format", "jsonl", "Hello", "Once upon")
    assert [json.loads(line) for line in out.splitlines()] == records
    for alias, fmt in (("--json", "json"), ("--jsonl", "jsonl")):  # hidden aliases of --format
        assert invoke(*args, alias, "Hello", "Once upon")[1] == invoke(
            *args, "--format", fmt, "Hello", "Once upon")[1]


def test_lines_batches_and_stdin(tiny_model_dir: Path) -> None:
    model = str(tiny_model_dir)
    args = ("-m", model, "--greedy", "--max-new-tokens", "4", "--format", "jsonl", "--lines")
    code, out, _ = invoke(*args, "--batch-size", "2", stdin="Hello\n\nThe\nOnce upon a time\n")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["prompt"] for r in records] == ["Hello", "The", "Once upon a time"]
    assert [r["source"] for r in records] == ["<stdin>:1", "<stdin>:3", "<stdin>:4"]
    code, out1, _ = invoke(*args, "--batch-size", "1", stdin="Hello\n\nThe\nOnce upon a time\n")
    assert [json.loads(line)["sequences"] for line in out1.splitlines()] == [
        r["sequences"] for r in records
    ]


def test_context_limit_and_left_truncation(tiny_model_dir: Path) -> None:
    model = str(tiny_model_dir)
    long_prompt = "word" + " word" * 1099
    code, _, message = invoke("-m", model, "--max-new-tokens", "3", long_prompt)
    assert code == 2
    assert "argument 1: the prompt is 1100 tokens and 3 new tokens were asked for" in message
    assert "--truncate left" in message
    code, out, _ = invoke(
        "-m", model, "--greedy", "--max-new-tokens", "3", "--truncate", "left", "--format",
        "json", long_prompt,
    )
    (record,) = json.loads(out)
    assert code == 0 and record["token_count"] == 1021 and record["truncated_tokens"] == 79
    assert record["sequences"][0]["token_count"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--greedy", "--num-return-sequences", "2"),
            "--num-return-sequences: must be 1 without sampling, got 2",
        ),
        (("--top-p", "2"), "--top-p: must be in (0, 1], got 2.0"),
        (("--temperature", "-1"), "--temperature: must be a strictly positive number"),
        (("--do-sample", "--temp", "0"), "--temperature: must be a strictly positive number"),
        (("-n", "0"), "--max-new-tokens: must be >= 1"),
        (("--max-length", "3"), "argument 1: the prompt is 4 tokens, which leaves nothing"),
        (("--stop", ""), "--stop: stop strings must not be empty"),
        (("--format", "json", "--separator", "x"), "--separator applies to --format text only"),
    ],
)
def test_bad_options_are_input_errors(tiny_model_dir: Path, args: tuple, message: str) -> None:
    code, _, said = invoke("-m", str(tiny_model_dir), *args, "Once upon a time")
    assert code == 2 and message in said


def test_errors_end_to_end_are_one_line(tiny_model_dir: Path) -> None:
    result = run_cli("generate", "-m", str(tiny_model_dir), "--top-k", "-1", "Hi")
    assert "--top-k: must be >= 0" in assert_one_line_error(result, 2)
    assert result.stdout == b""


def test_streams_to_a_terminal_exactly_what_it_prints_to_a_pipe(tiny_model_dir: Path) -> None:
    args = ["generate", "-m", str(tiny_model_dir), "--seed", "3", "--max-new-tokens", "40",
            "--top-k", "0", "Hello", "The"]
    piped = run_cli(*args)
    assert piped.returncode == 0, piped.err
    leader, follower = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gpt2cli", *args], stdout=follower,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    assert b"".join(chunks).replace(b"\r\n", b"\n") == piped.stdout
    assert np.all([len(c) > 0 for c in chunks])


# --- defaults that don't trip people -------------------------------------------------------------


def session_for(model_dir: Path):  # noqa: ANN201
    """A session on `model_dir` with no weights loaded (generation_params needs none)."""
    from gpt2cli.session import ModelOptions, open_model

    return open_model(ModelOptions(str(model_dir)), load=False)


def copy_model(source: Path, target: Path, config: dict | None = None,
               generation: dict | None = None) -> Path:
    """`source` copied to `target`, its config.json and generation_config.json edited."""
    import shutil

    shutil.copytree(source, target)
    for name, changes in (("config.json", config), ("generation_config.json", generation)):
        if changes is not None:
            settings = json.loads((target / name).read_text(encoding="utf-8"))
            for key, value in changes.items():
                if value is None:
                    settings.pop(key, None)
                else:
                    settings[key] = value
            (target / name).write_text(json.dumps(settings), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def bare_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_model_dir without any generation defaults (no task_specific_params)."""
    target = tmp_path_factory.mktemp("bare-gpt2") / "model"
    return copy_model(tiny_model_dir, target, config={"task_specific_params": None})


def test_a_model_without_defaults_gets_the_pipelines_length(bare_model_dir: Path) -> None:
    params = session_for(bare_model_dir).generation_params({})
    assert not params.do_sample  # greedy: transformers' own default
    assert params.max_new_tokens == PIPELINE_MAX_NEW_TOKENS and params.default_length
    # An ordinary 89-token prompt no longer fails with "--max-length 20".
    prompt = " ".join(["word"] * 89)
    code, out, err = invoke("-m", str(bare_model_dir), "--format", "json", prompt)
    assert code == 0, err
    (record,) = json.loads(out)
    assert record["token_count"] == 89
    (sequence,) = record["sequences"]
    assert sequence["token_count"] == PIPELINE_MAX_NEW_TOKENS or sequence["finish_reason"] == "stop"
    # An explicit max_length is still a total, and still refused when the prompt fills it.
    code, _, err = invoke("-m", str(bare_model_dir), "--max-length", "20", prompt)
    assert code == 2 and "leaves nothing to generate under --max-length 20" in err


def test_a_length_in_the_generation_config_is_honoured(
    bare_model_dir: Path, tmp_path: Path
) -> None:
    model = copy_model(bare_model_dir, tmp_path / "m", generation={"max_length": 12})
    session = session_for(model)
    assert session.config_sets_length()
    params = session.generation_params({})
    assert params.max_new_tokens is None and params.max_length == 12 and not params.default_length
    code, out, _ = invoke("-m", str(model), "--format", "json", "Hello world")
    assert code == 0 and json.loads(out)[0]["sequences"][0]["token_count"] == 10
    model = copy_model(bare_model_dir, tmp_path / "n", generation={"max_new_tokens": 7})
    assert session_for(model).generation_params({}).max_new_tokens == 7
    # An explicit --max-length beats the default of new tokens.
    params = session_for(bare_model_dir).generation_params({"max_length": 30})
    assert params.max_new_tokens is None and params.new_token_budget(10) == 20


def test_the_default_length_stops_at_the_end_of_the_context(bare_model_dir: Path) -> None:
    model = str(bare_model_dir)
    code, out, err = invoke("-m", model, "--format", "json", "word" + " word" * 999)
    assert code == 0, err
    (sequence,) = json.loads(out)[0]["sequences"]
    assert sequence["token_count"] == 24 or sequence["finish_reason"] == "stop"  # 1000 + 24
    too_long = "word" + " word" * 1023
    code, _, err = invoke("-m", model, too_long)
    assert code == 2 and "1024 tokens, which fills the model's context of 1024 tokens" in err
    code, out, err = invoke("-m", model, "-n", "2", "--truncate", "left", "--format", "json",
                            too_long)
    assert code == 0 and json.loads(out)[0]["truncated_tokens"] == 2
    # --truncate left makes room for the whole default budget instead (planning only here).
    from gpt2cli.decoding import Prompt, encode_prompt, plan_prompt
    from gpt2cli.tokenizer import GPT2Tokenizer

    params = session_for(bare_model_dir).generation_params({"truncate_left": True})
    prompt = Prompt(too_long)
    encoded = encode_prompt(GPT2Tokenizer(), prompt, params, 1024)
    (planned,) = plan_prompt(prompt, encoded, params, 1024, 0)
    assert planned.budget == PIPELINE_MAX_NEW_TOKENS
    assert planned.truncated_tokens == PIPELINE_MAX_NEW_TOKENS
    assert len(planned.prompt_ids) == 1024 - PIPELINE_MAX_NEW_TOKENS


def test_sampling_flags_turn_sampling_on(bare_model_dir: Path) -> None:
    """The README's example on a model without sampling defaults."""
    args = ("-m", str(bare_model_dir), "-n", "8", "--format", "json", "--seed", "5")
    code, out, err = invoke(*args, "--num-return-sequences", "3", "--top-p", "0.9",
                            "--temperature", "0.8", "Hello")
    assert code == 0, err
    texts = [s["generated_text"] for s in json.loads(out)[0]["sequences"]]
    assert len(set(texts)) == 3
    greedy = invoke(*args, "Hello")[1]
    for flag in (("--top-k", "0"), ("--temp", "1.0"), ("--top-p", "1.0")):
        code, out, err = invoke(*args, *flag, "Hello")
        assert code == 0 and err == "" and out != greedy, flag  # sampled, silently on purpose


def test_greedy_with_sampling_flags_warns(bare_model_dir: Path) -> None:
    args = ("-m", str(bare_model_dir), "-n", "5", "--greedy")
    _, plain, _ = invoke(*args, "Hello")
    code, out, err = invoke(*args, "--top-k", "5", "--temp", "0.3", "Hello")
    assert code == 0 and out == plain
    assert err.splitlines() == [
        "gpt2cli: warning: --temperature is ignored under greedy decoding (--greedy)",
        "gpt2cli: warning: --top-k is ignored under greedy decoding (--greedy)",
    ]


def test_temperature_zero_is_greedy(tiny_model_dir: Path) -> None:
    """As in llama.cpp (--temp 0) and the pipeline (temperature=0.0 sets do_sample false)."""
    args = ("-m", str(tiny_model_dir), "-n", "6")
    _, greedy, _ = invoke(*args, "--greedy", "Hello")
    code, out, err = invoke(*args, "--temp", "0", "Hello")
    assert code == 0 and out == greedy and err == ""
    code, _, err = invoke(*args, "--temp", "0", "--top-k", "3", "Hello")
    assert code == 0 and "--top-k is ignored under greedy decoding" in err


def test_llama_cpp_spellings(tiny_model_dir: Path) -> None:
    """-n/--n-predict is --max-new-tokens, --temp is --temperature, -p is a prompt."""
    model = str(tiny_model_dir)
    base = ("-m", model, "--seed", "2", "--format", "json")
    long_form = invoke(*base, "--max-new-tokens", "4", "--temperature", "0.7", "Hello", "The")[1]
    assert json.loads(long_form)[0]["sequences"][0]["token_count"] == 4
    for args in (
        ("-n", "4", "--temp", "0.7", "-p", "Hello", "-p", "The"),
        ("--n-predict", "4", "--temp=0.7", "Hello", "-p", "The"),
        ("--n-predict=4", "--temperature", "0.7", "Hello", "The"),
    ):
        assert invoke(*base, *args)[1] == long_form, args


def test_one_trailing_newline_of_piped_input_is_dropped(tiny_model_dir: Path) -> None:
    args = ("-m", str(tiny_model_dir), "--greedy", "-n", "3", "--format", "jsonl")
    _, from_argument, _ = invoke(*args, "Hello")
    assert invoke(*args, stdin="Hello\n")[1] == from_argument.replace("argument 1", "<stdin>")
    assert invoke(*args, stdin="Hello\r\n")[1] == from_argument.replace("argument 1", "<stdin>")
    assert json.loads(invoke(*args, stdin="Hello\n\n")[1])["prompt"] == "Hello\n"
    kept = json.loads(invoke(*args, "--keep-newline", stdin="Hello\n")[1])
    assert kept["prompt"] == "Hello\n"


def test_verbose_reports_timings_on_stderr_only(tiny_model_dir: Path) -> None:
    args = ("-m", str(tiny_model_dir), "--greedy", "-n", "5", "Hello world", "The")
    _, plain, _ = invoke(*args)
    code, out, err = invoke(*args, "--verbose")
    assert code == 0 and out == plain
    lines = err.splitlines()
    assert [line.split("=")[0].strip() for line in lines] == [
        "gpt2cli:        load time", "gpt2cli: prompt eval time", "gpt2cli:        eval time",
        "gpt2cli:       total time",
    ]
    assert "/      3 tokens (" in lines[1] and "/     10 tokens (" in lines[2]
    assert "tokens per second" in lines[2] and lines[3].endswith("/     13 tokens")
    result = run_in_process("--quiet", "generate", *args, "--verbose")
    assert result.out == plain and result.err == ""  # --quiet wins


class _Recorder:
    """Stands in for outputs.Progress: records what generate tells it."""

    made: list[_Recorder] = []

    def __init__(self, description: str, total: int | None = None, unit: str = "") -> None:
        self.args = (description, total, unit)
        self.completed: list[int] = []
        _Recorder.made.append(self)

    def update(self, *, completed: int) -> None:
        self.completed.append(completed)

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_progress_advances_per_finished_prompt(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpt2cli import outputs

    monkeypatch.setattr(outputs, "Progress", _Recorder)
    _Recorder.made = []
    args = ("-m", str(tiny_model_dir), "--greedy", "-n", "3", "-b", "1", "--format", "jsonl")
    assert invoke(*args, "Hello", "The", "Once")[0] == 0
    (bar,) = _Recorder.made
    assert bar.args == ("generating", 3, "prompts")
    assert bar.completed[-1] == 3 and bar.completed == sorted(bar.completed)
    assert 1 in bar.completed and 2 in bar.completed  # advanced as each prompt finished
    _Recorder.made = []
    assert invoke(*args, "--lines", stdin="a\nb\n")[0] == 0
    assert [b.args for b in _Recorder.made] == [("generating", None, "prompts")]
    _Recorder.made = []
    assert invoke(*args, "Hello")[0] == 0
    assert _Recorder.made == []  # one prompt: no bar
