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


def test_model_defaults_are_the_pipelines(torch_backend) -> None:  # noqa: ANN001
    params = GenerationParams.resolve(torch_backend.info.generation_defaults, {})
    assert params.do_sample and params.top_k == 50 and params.max_length == 50


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
    record = json.loads(result.out)
    assert record["generated_text"] == rest[: rest.index("ships pass")]
    assert record["finish_reason"] == "stop" and record["stop_string"] == "ships pass"


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


def test_json_and_jsonl_records(tiny_model_dir: Path) -> None:
    model = str(tiny_model_dir)
    args = ("-m", model, "--seed", "7", "--max-new-tokens", "6", "-n", "2", "--do-sample")
    code, out, _ = invoke(*args, "--format", "json", "Hello", "Once upon")
    records = json.loads(out)
    assert code == 0 and len(records) == 4
    assert [(r["index"], r["sequence"]) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    first = records[0]
    assert first["prompt"] == "Hello" and first["generated_text"].startswith("Hello")
    assert first["prompt_tokens"] == 1 and first["generated_tokens"] == len(first["token_ids"])
    assert first["finish_reason"] in ("length", "stop") and first["truncated_tokens"] == 0
    code, out, _ = invoke(*args, "--format", "jsonl", "Hello", "Once upon")
    assert [json.loads(line) for line in out.splitlines()] == records


def test_lines_batches_and_stdin(tiny_model_dir: Path) -> None:
    model = str(tiny_model_dir)
    args = ("-m", model, "--greedy", "--max-new-tokens", "4", "--format", "jsonl", "--lines")
    code, out, _ = invoke(*args, "--batch-size", "2", stdin="Hello\n\nThe\nOnce upon a time\n")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["prompt"] for r in records] == ["Hello", "The", "Once upon a time"]
    assert [r["source"] for r in records] == ["<stdin>:1", "<stdin>:3", "<stdin>:4"]
    code, out1, _ = invoke(*args, "--batch-size", "1", stdin="Hello\n\nThe\nOnce upon a time\n")
    assert [json.loads(line)["token_ids"] for line in out1.splitlines()] == [
        r["token_ids"] for r in records
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
    assert code == 0 and record["prompt_tokens"] == 1021 and record["truncated_tokens"] == 79
    assert record["generated_tokens"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--greedy", "-n", "2"), "--num-return-sequences: must be 1 without sampling, got 2"),
        (("--top-p", "2"), "--top-p: must be in (0, 1], got 2.0"),
        (("--temperature", "0"), "--temperature: must be a strictly positive number"),
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
