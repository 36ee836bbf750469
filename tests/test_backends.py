"""Backends against transformers as the oracle, and against each other."""

from __future__ import annotations

import os

import numpy as np
import pytest

from gpt2cli.backends.base import position_ids_from_mask
from gpt2cli.errors import InputError
from gpt2cli.loader import load_backend
from tests.models import MEMORISED_PARAGRAPH, MEMORISED_PROMPT_TOKENS, greedy_continue

PROMPTS = ["Hello, I'm a language model,", "The quick brown fox jumps over the lazy dog again"]


def padded_batch(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """Left-padded ids and attention mask."""
    encoded = [tokenizer.encode(t) for t in texts]
    width = max(map(len, encoded))
    ids = np.full((len(encoded), width), 50256, dtype=np.int64)
    mask = np.zeros((len(encoded), width), dtype=np.int64)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = tokens
        mask[row, width - len(tokens) :] = 1
    return ids, mask



def hf_forward(model, ids: np.ndarray, mask: np.ndarray, **kwargs):  # noqa: ANN001, ANN201
    import torch

    with torch.inference_mode():
        return model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(position_ids_from_mask(mask, ids.shape[1])),
            **kwargs,
        )


def test_torch_logits_equal_transformers_exactly(torch_backend, hf_model) -> None:  # noqa: ANN001
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    positions = position_ids_from_mask(mask, ids.shape[1])
    result = torch_backend.forward(ids, mask, positions, logits="all")
    expected = hf_forward(hf_model, ids, mask).logits.numpy()
    assert result.logits.dtype == np.float32
    assert result.logits.shape == (2, ids.shape[1], 50257)
    assert np.array_equal(result.logits, expected)


def test_torch_scoring_pass_is_transformers_within_rounding(torch_backend, hf_model) -> None:  # noqa: ANN001
    """use_cache=False takes backends.torch.plain_forward (one-kernel GELU, no cache):
    transformers' logits within float32 rounding, left-padded rows included, and no cache."""
    texts = [*PROMPTS, "A"]  # the last row is mostly padding
    ids, mask = padded_batch(torch_backend.tokenizer, texts)
    positions = position_ids_from_mask(mask, ids.shape[1])
    result = torch_backend.forward(ids, mask, positions, logits=5, use_cache=False)
    expected = hf_forward(hf_model, ids, mask).logits.numpy()[:, -5:]
    assert result.cache is None
    assert result.logits.shape == (3, 5, 50257)
    real = mask[:, -5:].astype(bool)
    np.testing.assert_allclose(result.logits[real], expected[real], rtol=0, atol=2e-5)
    assert np.isfinite(result.logits).all()  # padded positions too
    longest = slice(1, 2)  # no padding: causal attention without a mask tensor
    assert mask[longest].all()
    unpadded = torch_backend.forward(ids[longest], mask[longest], positions[longest],
                                     logits=ids.shape[1], use_cache=False)  # fmt: skip
    whole = hf_forward(hf_model, ids[longest], mask[longest]).logits.numpy()
    np.testing.assert_allclose(unpadded.logits, whole, rtol=0, atol=2e-5)


def test_torch_scoring_logits_are_per_thread_scratch(torch_backend) -> None:  # noqa: ANN001
    """Scoring passes reuse one logits array per thread (base.Backend.forward's contract):
    the next pass on a thread overwrites it, while passes on other threads never touch it."""
    from concurrent.futures import ThreadPoolExecutor

    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    positions = position_ids_from_mask(mask, ids.shape[1])

    def score(row: int) -> np.ndarray:
        one = slice(row, row + 1)
        first = torch_backend.forward(ids[one], mask[one], positions[one], logits=4,
                                      use_cache=False)  # fmt: skip
        kept = first.logits.copy()
        for _ in range(3):
            assert np.array_equal(first.logits, kept)  # another thread's pass left it alone
            again = torch_backend.forward(ids[one], mask[one], positions[one], logits=4,
                                          use_cache=False)  # fmt: skip
            assert np.shares_memory(again.logits, first.logits)  # the thread's scratch
        return kept

    alone = [score(0), score(1)]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(score, [0, 1]))
    for expected, got in zip(alone, together, strict=True):
        assert np.array_equal(expected, got)


def test_torch_scoring_pass_keeps_transformers_for_other_activations(tmp_path) -> None:  # noqa: ANN001
    """A checkpoint whose config names another activation is not what plain_forward computes:
    its scoring passes stay on transformers' forward, exactly."""
    from gpt2cli.backends.torch import is_plain_gpt2
    from tests.models import build_random_model

    model_dir = build_random_model(tmp_path / "relu", activation_function="relu")
    backend = load_backend(str(model_dir), "torch")
    assert not is_plain_gpt2(backend.model.config)
    ids, mask = padded_batch(backend.tokenizer, PROMPTS)
    positions = position_ids_from_mask(mask, ids.shape[1])
    scored = backend.forward(ids, mask, positions, logits=3, use_cache=False)
    full = backend.forward(ids, mask, positions, logits="all")
    assert np.array_equal(scored.logits, full.logits[:, -3:])


def test_torch_last_logits_are_the_final_position(torch_backend) -> None:  # noqa: ANN001
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    positions = position_ids_from_mask(mask, ids.shape[1])
    full = torch_backend.forward(ids, mask, positions, logits="all")
    last = torch_backend.forward(ids, mask, positions, logits="last")
    none = torch_backend.forward(ids, mask, positions, logits="none")
    assert last.logits.shape == (2, 50257)
    np.testing.assert_allclose(last.logits, full.logits[:, -1], rtol=0, atol=1e-5)
    assert none.logits is None and none.hidden is None


@pytest.mark.parametrize("layer", [0, 1, 2, -1, -3])
def test_torch_hidden_layers_index_like_transformers(torch_backend, hf_model, layer) -> None:  # noqa: ANN001
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    positions = position_ids_from_mask(mask, ids.shape[1])
    result = torch_backend.forward(ids, mask, positions, logits="none", hidden_layer=layer)
    expected = hf_forward(hf_model, ids, mask, output_hidden_states=True).hidden_states[layer]
    assert np.array_equal(result.hidden, expected.numpy())


def test_last_hidden_state_is_gpt2model_output(torch_backend, tiny_model_dir) -> None:  # noqa: ANN001
    from transformers import GPT2Model

    base = GPT2Model.from_pretrained(tiny_model_dir).eval()
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    positions = position_ids_from_mask(mask, ids.shape[1])
    result = torch_backend.forward(ids, mask, positions, logits="none", hidden_layer=-1)
    import torch

    with torch.inference_mode():
        expected = base(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
        ).last_hidden_state
    assert np.array_equal(result.hidden, expected.numpy())


def test_hidden_layer_out_of_range_is_an_input_error(torch_backend) -> None:  # noqa: ANN001
    ids = np.array([[15496, 11]], dtype=np.int64)
    with pytest.raises(InputError, match="out of range"):
        torch_backend.forward(ids, np.ones_like(ids), np.array([[0, 1]]), hidden_layer=3)


def decode_with_cache(backend, ids: np.ndarray, mask: np.ndarray, steps: int):  # noqa: ANN001, ANN201
    """Prefill, then `steps` greedy steps one token at a time; logits of every call."""
    result = backend.forward(ids, mask, position_ids_from_mask(mask, ids.shape[1]), logits="last")
    all_logits = [result.logits]
    for _ in range(steps):
        token = np.argmax(result.logits, axis=-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        result = backend.forward(
            token, mask, position_ids_from_mask(mask, 1), result.cache, logits="last"
        )
        all_logits.append(result.logits)
    return np.stack(all_logits, axis=1), mask


def test_torch_cached_decoding_equals_full_forward(torch_backend, hf_model) -> None:  # noqa: ANN001
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    stepped, full_mask = decode_with_cache(torch_backend, ids, mask, steps=8)
    tokens = np.argmax(stepped, axis=-1)[:, :-1]
    full_ids = np.concatenate([ids, tokens], axis=1)
    expected = hf_forward(hf_model, full_ids, full_mask).logits.numpy()
    np.testing.assert_allclose(stepped, expected[:, ids.shape[1] - 1 :], rtol=0, atol=1e-4)


def test_torch_select_rows_drops_rows(torch_backend) -> None:  # noqa: ANN001
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    result = torch_backend.forward(ids, mask, position_ids_from_mask(mask, ids.shape[1]))
    cache = torch_backend.select_rows(result.cache, np.array([1]))
    token = np.array([[262]], dtype=np.int64)
    step_mask = np.concatenate([mask[1:], [[1]]], axis=1)
    kept = torch_backend.forward(token, step_mask, position_ids_from_mask(step_mask, 1), cache)
    alone_ids = np.concatenate([ids[1:], token], axis=1)
    alone_positions = position_ids_from_mask(step_mask, alone_ids.shape[1])
    alone = torch_backend.forward(alone_ids, step_mask, alone_positions)
    np.testing.assert_allclose(kept.logits, alone.logits, rtol=0, atol=1e-4)


def test_torch_bfloat16_is_close_to_float32(tiny_model_dir, torch_backend) -> None:  # noqa: ANN001
    bf16 = load_backend(str(tiny_model_dir), backend="torch", dtype="bfloat16")
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    positions = position_ids_from_mask(mask, ids.shape[1])
    low = bf16.forward(ids, mask, positions, logits="last").logits
    high = torch_backend.forward(ids, mask, positions, logits="last").logits
    assert low.dtype == np.float32
    np.testing.assert_allclose(low, high, rtol=0, atol=0.05)


def test_memorised_paragraph_greedy_on_torch(memorised_model_dir) -> None:  # noqa: ANN001
    backend = load_backend(str(memorised_model_dir), backend="torch")
    ids = backend.tokenizer.encode(MEMORISED_PARAGRAPH)
    produced = greedy_continue(backend, ids[:MEMORISED_PROMPT_TOKENS], len(ids))
    assert produced == ids[MEMORISED_PROMPT_TOKENS:] + [50256]


def test_auto_picks_onnx_for_an_export(tiny_onnx_dir) -> None:  # noqa: ANN001
    backend = load_backend(str(tiny_onnx_dir))
    assert backend.name == "onnx"
    assert backend.info.generation_defaults["max_length"] == 50
    assert backend.tokenizer.encode("Hello, I'm a language model,")[:3] == [15496, 11, 314]


@pytest.mark.parametrize("mode", ["all", "last"])
def test_onnx_logits_agree_with_torch(torch_backend, onnx_backend, mode) -> None:  # noqa: ANN001
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    positions = position_ids_from_mask(mask, ids.shape[1])
    expected = torch_backend.forward(ids, mask, positions, logits=mode).logits
    got = onnx_backend.forward(ids, mask, positions, logits=mode).logits
    assert got.dtype == np.float32 and got.shape == expected.shape
    if mode == "all":  # left padding's outputs are undefined (each attention kernel differs)
        got, expected = got[mask.astype(bool)], expected[mask.astype(bool)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_onnx_cached_decoding_agrees_with_torch_for_20_steps(torch_backend, onnx_backend) -> None:  # noqa: ANN001
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    expected, _ = decode_with_cache(torch_backend, ids, mask, steps=20)
    got, _ = decode_with_cache(onnx_backend, ids, mask, steps=20)
    assert got.shape == (2, 21, 50257)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("layer", [0, 1, 2, -1, -2])
def test_onnx_hidden_layers_agree_with_torch(torch_backend, onnx_backend, layer) -> None:  # noqa: ANN001
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    positions = position_ids_from_mask(mask, ids.shape[1])
    expected = torch_backend.forward(ids, mask, positions, logits="none", hidden_layer=layer)
    got = onnx_backend.forward(ids, mask, positions, logits="none", hidden_layer=layer)
    assert got.logits is None and got.hidden.shape == (2, ids.shape[1], 64)
    valid = mask.astype(bool)  # left padding's states are undefined (each kernel differs)
    np.testing.assert_allclose(got.hidden[valid], expected.hidden[valid], rtol=0, atol=1e-4)


def test_onnx_hidden_layer_out_of_range(onnx_backend) -> None:  # noqa: ANN001
    ids = np.array([[15496, 11]], dtype=np.int64)
    with pytest.raises(InputError, match="out of range"):
        onnx_backend.forward(ids, np.ones_like(ids), np.array([[0, 1]]), hidden_layer=-4)


def test_onnx_select_rows_drops_rows(onnx_backend) -> None:  # noqa: ANN001
    ids, mask = padded_batch(onnx_backend.tokenizer, PROMPTS)
    result = onnx_backend.forward(ids, mask, position_ids_from_mask(mask, ids.shape[1]))
    cache = onnx_backend.select_rows(result.cache, np.array([1, 1]))
    token = np.array([[262], [262]], dtype=np.int64)
    step_mask = np.concatenate([mask[[1, 1]], [[1], [1]]], axis=1)
    kept = onnx_backend.forward(token, step_mask, position_ids_from_mask(step_mask, 1), cache)
    alone_ids = np.concatenate([ids[1:], token[:1]], axis=1)
    alone_positions = position_ids_from_mask(step_mask[:1], alone_ids.shape[1])
    alone = onnx_backend.forward(alone_ids, step_mask[:1], alone_positions)
    np.testing.assert_allclose(kept.logits, np.repeat(alone.logits, 2, axis=0), atol=1e-4)


def test_onnx_dtype_and_device_errors(tiny_onnx_dir) -> None:  # noqa: ANN001
    from gpt2cli.errors import CliError

    with pytest.raises(CliError, match="export's own precision"):
        load_backend(str(tiny_onnx_dir), dtype="bfloat16")
    with pytest.raises(CliError, match="export's own precision"):
        load_backend(str(tiny_onnx_dir), dtype="float16")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(CliError, match="no CUDA support"):
            load_backend(str(tiny_onnx_dir), device="cuda")


def test_onnx_threads_option(tiny_onnx_dir) -> None:  # noqa: ANN001
    backend = load_backend(str(tiny_onnx_dir), threads=1)
    session_options = backend.session.get_session_options()
    assert session_options.intra_op_num_threads == 1
    spinning = session_options.get_session_config_entry("session.intra_op.allow_spinning")
    assert spinning == ("1" if os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE" else "0")


def test_int8_export_stays_close_on_random_weights(torch_backend, tiny_onnx_int8_dir) -> None:  # noqa: ANN001
    int8 = load_backend(str(tiny_onnx_int8_dir))
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    positions = position_ids_from_mask(mask, ids.shape[1])
    expected = torch_backend.forward(ids, mask, positions, logits="all").logits
    got = int8.forward(ids, mask, positions, logits="all").logits
    assert 0 < np.abs(got - expected).max() < 0.5 * np.abs(expected).max()


@pytest.mark.parametrize(
    "model_fixture", ["memorised_model_dir", "memorised_onnx_dir", "memorised_onnx_int8_dir"]
)
def test_memorised_paragraph_greedy_on_every_backend(model_fixture, request) -> None:  # noqa: ANN001
    directory = request.getfixturevalue(model_fixture)
    backend = load_backend(str(directory))
    assert backend.name == ("torch" if model_fixture == "memorised_model_dir" else "onnx")
    ids = backend.tokenizer.encode(MEMORISED_PARAGRAPH)
    produced = greedy_continue(backend, ids[:MEMORISED_PROMPT_TOKENS], len(ids))
    assert backend.tokenizer.decode(ids[:MEMORISED_PROMPT_TOKENS] + produced) == (
        MEMORISED_PARAGRAPH + "<|endoftext|>"
    )


NO_TORCH_SCRIPT = """
import sys
sys.modules["torch"] = None  # any `import torch` now fails, as if torch were not installed
sys.modules["transformers"] = None
import json
import numpy as np
from gpt2cli.backends.base import position_ids_from_mask
from gpt2cli.loader import load_backend
from tests.models import greedy_continue

backend = load_backend(sys.argv[1])
ids = np.array([backend.tokenizer.encode("Hello, I'm a language model,")], dtype=np.int64)
mask = np.ones_like(ids)
result = backend.forward(ids, mask, position_ids_from_mask(mask, ids.shape[1]), hidden_layer=-1)
print(json.dumps({
    "backend": backend.name,
    "greedy": greedy_continue(backend, ids[0].tolist(), 10),
    "logits": result.logits[0, :5].tolist(),
    "heavy": sorted(m for m in ("torch", "transformers", "optimum", "onnx")
                    if sys.modules.get(m) is not None),
}))
"""


def test_onnx_backend_runs_without_torch(tiny_onnx_dir, onnx_backend) -> None:  # noqa: ANN001
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, str(tiny_onnx_dir)],
        capture_output=True, text=True, cwd=root, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["backend"] == "onnx"
    assert report["heavy"] == []
    ids = onnx_backend.tokenizer.encode("Hello, I'm a language model,")
    assert report["greedy"] == greedy_continue(onnx_backend, ids, 10)
    mask = np.ones((1, len(ids)), dtype=np.int64)
    expected = onnx_backend.forward(np.array([ids]), mask, position_ids_from_mask(mask, len(ids)))
    np.testing.assert_allclose(report["logits"], expected.logits[0, :5], rtol=0, atol=1e-6)


def test_int8_rows_do_not_depend_on_their_batch(tiny_onnx_int8_dir) -> None:  # noqa: ANN001
    """The fused int8 export quantizes activations per row and block (MatMulNBits, accuracy
    level 4), so a row's logits are the same alone and among others (dynamic quantization
    scaled over the whole batch)."""
    backend = load_backend(str(tiny_onnx_int8_dir))
    ids, mask = padded_batch(backend.tokenizer, PROMPTS)
    batched = backend.forward(ids, mask, position_ids_from_mask(mask, ids.shape[1])).logits
    for row in range(len(PROMPTS)):
        alone_ids = ids[row : row + 1, mask[row].argmax() :]
        alone_mask = np.ones_like(alone_ids)
        alone = backend.forward(
            alone_ids, alone_mask, position_ids_from_mask(alone_mask, alone_ids.shape[1])
        ).logits
        np.testing.assert_allclose(alone[0], batched[row], rtol=0, atol=1e-5)
