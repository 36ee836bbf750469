"""Extreme sampling values: no NaN, no numpy warnings, and the limits the maths says.

Temperatures and repetition penalties near 0 or huge overflow float32. Where transformers' float32
arithmetic stays finite, ours matches it; beyond, the distribution is the limit: one-hot on the
argmax (sampling is then greedy decoding) or flat.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from gpt2cli.decoding import (
    BatchProcessors,
    GenerationParams,
    apply_repetition_penalty,
    filtered_distribution,
    sample_token,
    softmax64,
)

VOCAB = 50257
EOS = 50256


@pytest.fixture(autouse=True)
def warnings_are_errors() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def random_logits(rows: int, seed: int, scale: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, VOCAB)) * scale).astype(np.float32)


def dense(ids: np.ndarray | None, probs: np.ndarray) -> np.ndarray:
    out = np.zeros(VOCAB)
    out[slice(None) if ids is None else ids] = probs
    return out


@pytest.mark.parametrize("temperature", [1e-30, 1e-38, 1e-45, 1e-50, 5e-324])
@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (50, 0.9)])
def test_tiny_temperature_is_greedy(temperature: float, top_k: int, top_p: float) -> None:
    logits = random_logits(3, seed=1, scale=30.0)  # large logits: float32 overflows sooner
    for row in logits:
        ids, probs = filtered_distribution(row.copy(), temperature, top_k, top_p)
        got = dense(ids, probs)
        assert np.isfinite(got).all()
        assert got[int(row.argmax())] == 1.0
        for uniform in (0.0, 0.5, 1 - 1e-12):
            assert sample_token(ids, probs, uniform) == int(row.argmax())


@pytest.mark.parametrize("temperature", [1e30, 1e39, 1e300, float("inf")])
def test_huge_temperature_is_flat(temperature: float) -> None:
    logits = random_logits(1, seed=2)[0]
    logits[7] = -np.inf  # a suppressed token stays suppressed
    ids, probs = filtered_distribution(logits.copy(), temperature)
    got = dense(ids, probs)
    assert got[7] == 0.0
    np.testing.assert_allclose(np.delete(got, 7), 1 / (VOCAB - 1), rtol=1e-6)


def test_float32_range_matches_transformers() -> None:
    torch = pytest.importorskip("torch")
    logits_process = pytest.importorskip("transformers.generation.logits_process")
    logits = random_logits(2, seed=3)
    dummy = torch.zeros((2, 1), dtype=torch.long)
    for temperature in (1e-30, 1e-3, 1e3, 1e30):
        warped = logits_process.TemperatureLogitsWarper(temperature)(
            dummy, torch.from_numpy(logits.copy())
        )
        expected = torch.softmax(warped.double(), dim=-1).numpy()
        for row in range(2):
            ids, probs = filtered_distribution(logits[row].copy(), temperature)
            np.testing.assert_allclose(dense(ids, probs), expected[row], rtol=1e-5, atol=1e-12)


def _penalised(logits: np.ndarray, history: np.ndarray, penalty: float) -> np.ndarray:
    out = logits.copy()
    apply_repetition_penalty(out, history, penalty)
    return out


@pytest.mark.parametrize("penalty", [1e-30, 1e3, 1e30])
def test_penalty_in_float32_range_matches_transformers(penalty: float) -> None:
    torch = pytest.importorskip("torch")
    logits_process = pytest.importorskip("transformers.generation.logits_process")
    rng = np.random.default_rng(4)
    history = rng.integers(0, 300, size=(3, 30))
    logits = random_logits(3, seed=5)
    expected = logits_process.RepetitionPenaltyLogitsProcessor(penalty)(
        torch.from_numpy(history), torch.from_numpy(logits.copy())
    ).numpy()
    np.testing.assert_allclose(_penalised(logits, history, penalty), expected, rtol=1e-6)


@pytest.mark.parametrize("penalty", [1e-39, 1e-45, 1e-50, 5e-324])
def test_tiny_penalty_picks_the_likeliest_seen_token(penalty: float) -> None:
    rng = np.random.default_rng(6)
    history = rng.integers(0, 300, size=(3, 30))
    logits = random_logits(3, seed=7)
    logits[:, :300] = np.abs(logits[:, :300]) + 1  # seen tokens with positive logits
    out = _penalised(logits, history, penalty)
    assert not np.isnan(out).any() and not np.isposinf(out).any()
    for row in range(3):
        best = history[row][np.argmax(logits[row, history[row]])]
        assert int(out[row].argmax()) == best
        one_hot = np.arange(VOCAB) == best
        np.testing.assert_array_equal(dense(None, softmax64(out[row])) > 0, one_hot)


@pytest.mark.parametrize("penalty", [1e39, 1e300, float("inf")])
def test_huge_penalty_suppresses_seen_tokens(penalty: float) -> None:
    history = np.array([[1, 2, 3, 3]])
    logits = np.zeros((1, 10), dtype=np.float32)
    logits[0, :4] = [5.0, 4.0, -2.0, 0.0]
    out = _penalised(logits, history, penalty)
    assert not np.isnan(out).any()
    assert out[0, 0] == 5.0 and out[0, 2] == -np.inf
    assert 0 <= out[0, 1] < 1e-30 and out[0, 3] == 0.0


def test_every_token_suppressed_is_not_nan() -> None:
    probs = softmax64(np.full(5, -np.inf, dtype=np.float32))
    np.testing.assert_allclose(probs, 0.2)


def test_processors_with_tiny_penalty_then_sampling() -> None:
    params = GenerationParams(
        repetition_penalty=1e-45, do_sample=True, temperature=1e-50, eos_token_ids=(EOS,)
    )
    prompts = [[10, 20, 30], [40, 40]]
    processors = BatchProcessors(params, prompts, steps=4)
    logits = random_logits(2, seed=8)
    logits[0, [10, 20, 30]] = [1.0, 3.0, 2.0]
    logits[1, 40] = 0.5
    processors(logits)
    for row, expected in ((0, 20), (1, 40)):
        ids, probs = filtered_distribution(logits[row].copy(), 1e-50, 50, 1.0)
        assert sample_token(ids, probs, 0.3) == expected


def test_cli_tiny_temperature_samples_the_greedy_text(tiny_onnx_dir) -> None:  # noqa: ANN001
    from tests.clirun import run_cli

    common = ("generate", "-m", str(tiny_onnx_dir), "--max-new-tokens", "8", "Hello world")
    greedy = run_cli(*common, "--greedy")
    assert greedy.returncode == 0, greedy.err
    for temperature in ("1e-50", "5e-324"):
        sampled = run_cli(*common, "--do-sample", "--seed", "3", "--temperature", temperature)
        assert (sampled.returncode, sampled.stderr) == (0, b"")
        assert sampled.stdout == greedy.stdout
