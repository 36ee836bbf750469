"""`embed`: hidden states against transformers' GPT2Model, pooling by hand, and the outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpt2cli.cli import cli_name
from gpt2cli.embedding import EmbedOptions, embed_texts, l2_normalize, pool
from gpt2cli.errors import InputError
from tests.clirun import assert_one_line_error, run_cli

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
    assert refused.value.render(cli_name).endswith("(pass --truncate to keep the first tokens)")
    (result,) = embed_texts(torch_backend, [long_text], EmbedOptions(truncate=True))
    assert result.truncated and result.tokens == 1024 and result.text_tokens == 1100


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
    result = run_cli("embed", "-m", str(tiny_model_dir), "-f", str(source), "--lines",
                     "--batch-size", "2")  # fmt: skip
    assert result.returncode == 0, result.err
    records = [json.loads(line) for line in result.out.splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["source"] for r in records] == [f"{source}:{n}" for n in (1, 2, 3)]
    expected = embed_texts(torch_backend, TEXTS, EmbedOptions())
    for record, want in zip(records, expected, strict=True):
        assert record["tokens"] == want.tokens and record["truncated"] is False
        np.testing.assert_allclose(record["embedding"], want.vector, rtol=1e-5, atol=1e-6)


def test_cli_npy_loads_and_refuses_to_overwrite(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    target = tmp_path / "vectors.npy"
    args = ["embed", "-m", str(tiny_model_dir), "--format", "npy", "-o", str(target), *TEXTS]
    assert run_cli(*args).returncode == 0
    array = np.load(target)
    assert array.shape == (3, 64) and array.dtype == np.float32
    again = run_cli(*args, "--normalize")
    assert "already exists" in assert_one_line_error(again, 2)
    np.testing.assert_array_equal(np.load(target), array)  # untouched
    assert run_cli(*args, "--normalize", "--force").returncode == 0
    np.testing.assert_allclose(np.linalg.norm(np.load(target), axis=1), 1.0, rtol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_json_none_pooling_and_truncation(tiny_model_dir) -> None:  # noqa: ANN001
    long_text = "word" + " word" * 1099
    refused = run_cli("embed", "-m", str(tiny_model_dir), "Fine.", long_text)
    assert "argument 2: 1100 tokens" in assert_one_line_error(refused, 2)
    assert refused.out == ""  # nothing written before the error

    result = run_cli("embed", "-m", str(tiny_model_dir), "--format", "json", "--pooling", "none",
                     "--truncate", "Fine.", long_text)  # fmt: skip
    assert result.returncode == 0, result.err
    first, second = json.loads(result.out)
    assert first["truncated"] is False and second["truncated"] is True
    assert second["tokens"] == 1024
    assert np.array(second["embedding"]).shape == (1024, 64)
    assert np.array(first["embedding"]).shape == (2, 64)
    assert "1 of 2 texts" in result.err and "truncated" in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "7"], "out of range"),
        (["--pooling", "max"], "max"),
        (["--format", "npy", "--pooling", "none", "one", "two words"], "equal token counts"),
    ],
)
def test_cli_usage_errors(tiny_model_dir, tmp_path, args, message) -> None:  # noqa: ANN001
    result = run_cli("embed", "-m", str(tiny_model_dir), "-o", str(tmp_path / "x.npy"), *args, "a")
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
