"""`embed`: hidden states against transformers' GPT2Model, pooling by hand, and the outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpt2cli.cli import cli_name
from gpt2cli.embedding import (
    EmbedOptions,
    embed_encoded,
    embed_texts,
    encode_texts,
    l2_normalize,
    pool,
)
from gpt2cli.errors import InputError
from tests.clirun import assert_one_line_error, run_in_process

TEXTS = [
    "Hello, I'm a language model,",
    "Short.",
    "The quick brown fox jumps over the lazy dog, and then it jumps back again.",
]


@pytest.fixture(scope="module")
def hf_hidden_states(tiny_model_dir):  # noqa: ANN001, ANN201
    """Each text's hidden_states tuple from transformers' GPT2Model, run on its own."""
    import torch
    from transformers import GPT2Model

    from gpt2cli.tokenizer import GPT2Tokenizer

    model = GPT2Model.from_pretrained(tiny_model_dir).eval()
    tokenizer = GPT2Tokenizer()
    states = []
    with torch.no_grad():
        for text in TEXTS:
            out = model(torch.tensor([tokenizer.encode(text)]), output_hidden_states=True)
            assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
            states.append([h[0].numpy() for h in out.hidden_states])
    return states


# ---------------------------------------------------------------------------------------------
# Pooling by hand


def test_pooling_by_hand() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 5, 4)).astype(np.float32)
    lengths = [5, 2, 3]
    mask = np.array([[1] * n + [0] * (5 - n) for n in lengths])
    mean = pool(hidden, mask, "mean")
    for row, n in enumerate(lengths):
        expected = sum(hidden[row, t] for t in range(n)) / n
        np.testing.assert_allclose(mean[row], expected, rtol=1e-6)
        np.testing.assert_array_equal(pool(hidden, mask, "last")[row], hidden[row, n - 1])
        np.testing.assert_array_equal(pool(hidden, mask, "first")[row], hidden[row, 0])
        np.testing.assert_array_equal(pool(hidden, mask, "none")[row], hidden[row, :n])


def test_l2_normalize() -> None:
    vectors = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(l2_normalize(vectors), [[0.6, 0.8], [0.0, 0.0]])


# ---------------------------------------------------------------------------------------------
# Against transformers' GPT2Model


def test_torch_embed_equals_gpt2model(torch_backend, hf_hidden_states) -> None:  # noqa: ANN001
    tokens = embed_texts(torch_backend, TEXTS, EmbedOptions(pooling="none", batch_size=8))
    for result, states in zip(tokens, hf_hidden_states, strict=True):
        assert result.vector.shape == states[-1].shape
        np.testing.assert_allclose(result.vector, states[-1], rtol=1e-5, atol=1e-5)
    (alone,) = embed_texts(torch_backend, TEXTS[:1], EmbedOptions(pooling="none"))
    np.testing.assert_array_equal(alone.vector, hf_hidden_states[0][-1])  # one text: no padding


@pytest.mark.parametrize("layer", [0, 1, -2])
def test_layer_is_transformers_hidden_states_index(torch_backend, hf_hidden_states, layer) -> None:  # noqa: ANN001
    results = embed_texts(torch_backend, TEXTS, EmbedOptions(layer=layer, pooling="mean"))
    for result, states in zip(results, hf_hidden_states, strict=True):
        np.testing.assert_allclose(result.vector, states[layer].mean(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "last", "first"])
def test_pooling_equals_hand_computation_on_gpt2model(
    torch_backend, hf_hidden_states, pooling
) -> None:  # noqa: ANN001
    results = embed_texts(torch_backend, TEXTS, EmbedOptions(pooling=pooling, normalize=True))
    for result, states in zip(results, hf_hidden_states, strict=True):
        last = states[-1]
        expected = {"mean": last.mean(axis=0), "last": last[-1], "first": last[0]}[pooling]
        expected = expected / np.linalg.norm(expected)
        np.testing.assert_allclose(result.vector, expected, rtol=1e-5, atol=1e-5)
        assert np.linalg.norm(result.vector) == pytest.approx(1.0, abs=1e-5)


def test_layer_out_of_range_is_an_input_error(torch_backend) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="out of range"):
        embed_texts(torch_backend, TEXTS, EmbedOptions(layer=3))
    with pytest.raises(InputError, match="out of range"):
        embed_texts(torch_backend, TEXTS, EmbedOptions(layer=-4))


def test_too_long_is_an_error_unless_truncated(torch_backend) -> None:  # noqa: ANN001
    long_text = "word" + " word" * 1099
    with pytest.raises(InputError) as refused:
        embed_texts(torch_backend, [long_text], EmbedOptions())
    assert refused.value.render(cli_name).endswith(
        "(pass --truncate right to keep the first tokens, or --truncate left to keep the last)"
    )
    (result,) = embed_texts(torch_backend, [long_text], EmbedOptions(truncate="right"))
    assert result.token_count == 1024 and result.text_tokens == 1100
    assert result.truncated_tokens == 76


def test_truncate_right_keeps_the_head_and_left_the_tail(torch_backend) -> None:  # noqa: ANN001
    tokenizer = torch_backend.tokenizer
    words = " ".join(f"w{i}" for i in range(1500))  # ids differ along the text
    ids = tokenizer.encode(words)
    texts, sources = [words], ["t"]
    (right,) = encode_texts(torch_backend, texts, sources, "right")
    (left,) = encode_texts(torch_backend, texts, sources, "left")
    assert right.ids == ids[:1024] and left.ids == ids[-1024:]
    assert right.text_tokens == left.text_tokens == len(ids)  # exact, not where encoding stopped
    head = embed_texts(torch_backend, [tokenizer.decode(ids[:1024])], EmbedOptions())
    tail = embed_texts(torch_backend, [tokenizer.decode(ids[-1024:])], EmbedOptions())
    (got_right,) = embed_encoded(torch_backend, [right], EmbedOptions())
    (got_left,) = embed_encoded(torch_backend, [left], EmbedOptions())
    np.testing.assert_array_equal(got_right.vector, head[0].vector)
    np.testing.assert_array_equal(got_left.vector, tail[0].vector)
    assert got_left.truncated_tokens == len(ids) - 1024
    with pytest.raises(InputError) as wrong:
        encode_texts(torch_backend, texts, sources, "middle")
    assert wrong.value.param == "truncate"
    assert wrong.value.render(cli_name).startswith("--truncate: expected one of none, left, right")


# ---------------------------------------------------------------------------------------------
# The onnx backend


def test_onnx_embed_agrees_with_torch(onnx_backend, torch_backend) -> None:  # noqa: ANN001
    for options in (EmbedOptions(pooling="none"), EmbedOptions(layer=1, pooling="mean")):
        expected = embed_texts(torch_backend, TEXTS, options)
        actual = embed_texts(onnx_backend, TEXTS, options)
        for a, e in zip(actual, expected, strict=True):
            np.testing.assert_allclose(a.vector, e.vector, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# The command


def test_cli_jsonl_in_input_order(tiny_model_dir, tmp_path, torch_backend) -> None:  # noqa: ANN001
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    result = run_in_process("embed", "-m", str(tiny_model_dir), "-f", str(source), "--lines",
                     "--batch-size", "2")  # fmt: skip
    assert result.returncode == 0, result.err
    records = [json.loads(line) for line in result.out.splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["source"] for r in records] == [f"{source}:{n}" for n in (1, 2, 3)]
    expected = embed_texts(torch_backend, TEXTS, EmbedOptions())
    for record, want in zip(records, expected, strict=True):
        assert record["token_count"] == want.token_count and record["truncated_tokens"] == 0
        np.testing.assert_allclose(record["embedding"], want.vector, rtol=1e-5, atol=1e-6)


def test_cli_npy_loads_and_refuses_to_overwrite(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    target = tmp_path / "vectors.npy"
    args = ["embed", "-m", str(tiny_model_dir), "--format", "npy", "-o", str(target), *TEXTS]
    assert run_in_process(*args).returncode == 0
    array = np.load(target)
    assert array.shape == (3, 64) and array.dtype == np.float32
    again = run_in_process(*args, "--normalize")
    assert "already exists" in assert_one_line_error(again, 2)
    np.testing.assert_array_equal(np.load(target), array)  # untouched
    assert run_in_process(*args, "--normalize", "--force").returncode == 0
    np.testing.assert_allclose(np.linalg.norm(np.load(target), axis=1), 1.0, rtol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_json_none_pooling_and_truncation(tiny_model_dir) -> None:  # noqa: ANN001
    long_text = "word" + " word" * 1099
    refused = run_in_process("embed", "-m", str(tiny_model_dir), "Fine.", long_text)
    assert "argument 2: 1100 tokens" in assert_one_line_error(refused, 2)
    assert "--truncate right" in refused.err
    assert refused.out == ""  # nothing written before the error

    result = run_in_process("embed", "-m", str(tiny_model_dir), "--format", "json", "--pooling",
                            "none", "--truncate", "right", "Fine.", long_text)  # fmt: skip
    assert result.returncode == 0, result.err
    first, second = json.loads(result.out)
    assert first["truncated_tokens"] == 0 and second["truncated_tokens"] == 76
    assert second["token_count"] == 1024
    assert np.array(second["embedding"]).shape == (1024, 64)
    assert np.array(first["embedding"]).shape == (2, 64)
    assert "1 of 2 texts" in result.err and "their first 1024 tokens" in result.err
    assert set(first) == {"index", "source", "token_count", "truncated_tokens", "embedding"}


def test_cli_truncate_left_right_none(tiny_model_dir) -> None:  # noqa: ANN001
    long_text = "start" + " word" * 1100 + " end"
    args = ("embed", "-m", str(tiny_model_dir), "--pooling", "none", "--jsonl")
    left = json.loads(run_in_process(*args, "--truncate", "left", long_text).out)
    right = json.loads(run_in_process(*args, "--truncate", "RIGHT", long_text).out)
    last = json.loads(run_in_process(*args, " word" * 1023 + " end").out)
    first = json.loads(run_in_process(*args, "start" + " word" * 1023).out)
    assert left["token_count"] == right["token_count"] == 1024
    assert left["truncated_tokens"] == right["truncated_tokens"] == 1102 - 1024
    np.testing.assert_allclose(left["embedding"], last["embedding"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(right["embedding"], first["embedding"], rtol=1e-5, atol=1e-6)
    none = run_in_process(*args, "--truncate", "none", long_text)
    assert "1102 tokens, more than the model's context" in assert_one_line_error(none, 2)
    bad = run_in_process(*args, "--truncate", long_text)  # the old plain flag: needs a value now
    assert "--truncate" in assert_one_line_error(bad, 2)


def test_cli_formats_prompt_and_newline(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    base = ("embed", "-m", str(tiny_model_dir))
    lines = run_in_process(*base, "Hello", "-p", "world").out.splitlines()
    jsonl = [json.loads(line) for line in lines]
    assert [r["source"] for r in jsonl] == ["argument 1", "argument 2"]
    default = run_in_process(*base, "Hello").out
    assert run_in_process(*base, "--jsonl", "Hello").out == default
    as_array = json.loads(run_in_process(*base, "--json", "Hello").out)
    assert as_array == json.loads(run_in_process(*base, "--format", "json", "Hello").out)
    assert isinstance(as_array, list) and len(as_array) == 1
    text = run_in_process(*base, "--format", "text", "Hello", "world").out.splitlines()
    assert len(text) == 2
    np.testing.assert_allclose([float(v) for v in text[0].split()], jsonl[0]["embedding"],
                               rtol=1e-6)  # fmt: skip
    per_token = run_in_process(*base, "--format", "text", "--pooling", "none", "Hello world", "Hi")
    assert [len(line.split()) for line in per_token.out.split("\n")] == [64, 64, 0, 64, 0, 0]
    # A piped text loses the line break echo adds, unless --keep-newline.
    piped = json.loads(run_in_process(*base, "-f", "-", input="Hello\n").out)
    kept = json.loads(run_in_process(*base, "--keep-newline", "-f", "-", input="Hello\n").out)
    np.testing.assert_allclose(piped["embedding"], jsonl[0]["embedding"], rtol=1e-5, atol=1e-6)
    assert piped["token_count"] == 1
    assert kept["token_count"] == 2
    both = run_in_process(*base, "--json", "--jsonl", "x")
    assert "json and jsonl" in assert_one_line_error(both, 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "7"], "out of range"),
        (["--pooling", "max"], "max"),
        (["--format", "npy", "--pooling", "none", "one", "two words"], "equal token counts"),
    ],
)
def test_cli_usage_errors(tiny_model_dir, tmp_path, args, message) -> None:  # noqa: ANN001
    result = run_in_process("embed", "-m", str(tiny_model_dir), "-o", str(tmp_path / "x.npy"),
                            *args, "a")
    assert message in assert_one_line_error(result, 2)
    assert not (tmp_path / "x.npy").exists()


def test_onnx_embedding_never_imports_torch(tiny_onnx_dir) -> None:  # noqa: ANN001
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from gpt2cli.cli import run\n"
        f"code = run(['embed', '-m', {str(tiny_onnx_dir)!r}, '--layer', '1', 'No torch here.'])\n"
        "assert code == 0, code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["embedding"]) == 64
