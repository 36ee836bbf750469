"""Backends against transformers as the oracle, and against each other."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def torch_backend(tiny_model_dir):  # noqa: ANN001, ANN201
    return load_backend(str(tiny_model_dir), backend="torch")


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):  # noqa: ANN001, ANN201
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval()


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


def test_torch_select_cache_drops_rows(torch_backend) -> None:  # noqa: ANN001
    ids, mask = padded_batch(torch_backend.tokenizer, PROMPTS)
    result = torch_backend.forward(ids, mask, position_ids_from_mask(mask, ids.shape[1]))
    cache = torch_backend.select_cache(result.cache, np.array([1]))
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
