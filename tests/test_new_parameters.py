"""min_p, typical_p, presence_penalty, frequency_penalty and logit_bias.

min-p and typical-p against transformers' MinPLogitsWarper and TypicalLogitsWarper on the same
logits (in generate()'s order: temperature, top-k, top-p, min-p, typical-p); the penalties and
the bias against their OpenAI definitions; then the parameters through the table, a request,
the scheduler and the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpt2cli.cli import cli_name
from gpt2cli.decoding import (
    BatchProcessors,
    GenerationParams,
    LogitBiasProcessor,
    cut_distribution,
    filtered_distribution,
    params_distribution,
)
from gpt2cli.errors import InputError, ModelError
from gpt2cli.generation_params import BY_NAME, parse_logit_bias
from gpt2cli.model_files import check_generation_settings
from gpt2cli.request_formats import parse_request
from tests.clirun import assert_one_line_error, run_cli, run_in_process
from tests.test_decoding import (
    TEXTS,
    VOCAB,
    BigramBackend,
    dense,
    params,
    random_logits,
    run_decoder,
)

torch = pytest.importorskip("torch")
logits_process = pytest.importorskip("transformers.generation.logits_process")


# --- min-p and typical-p against transformers ---------------------------------------------------


def transformers_distribution(
    logits: np.ndarray,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float | None = None,
    typical_p: float = 1.0,
    dtype: Any = None,
) -> np.ndarray:
    """Probabilities after transformers' warpers, built as generate() builds them.

    The temperature divides float32 logits as both do; the other warpers run in float64 unless
    `dtype` says otherwise (typical-p orders tokens by |surprise - entropy|, where float32
    rounding can swap two neighbours at the cut: float64 compares the algorithms, not the
    roundings).
    """
    dtype = dtype or torch.float64
    dummy_ids = torch.zeros((logits.shape[0], 1), dtype=torch.long)
    scores = torch.from_numpy(logits.copy())
    if temperature != 1.0:
        scores = logits_process.TemperatureLogitsWarper(temperature)(dummy_ids, scores)
    warpers: list[Any] = []
    if top_k:
        warpers.append(logits_process.TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(logits_process.TopPLogitsWarper(top_p))
    if min_p is not None:
        warpers.append(logits_process.MinPLogitsWarper(min_p))
    if typical_p < 1.0:
        warpers.append(logits_process.TypicalLogitsWarper(typical_p))
    warped = logits_process.LogitsProcessorList(warpers)(dummy_ids, scores.to(dtype))
    return torch.softmax(warped.double(), dim=-1).numpy()


def ours(logits: np.ndarray, **warpers: Any) -> np.ndarray:
    """Our distribution of each row, dense over the vocabulary."""
    p = params(do_sample=True, **{"top_k": 0, **warpers})
    out = []
    for row in logits:
        ids, probs = params_distribution(row.copy(), p)
        assert ids is None or np.all(np.diff(ids) > 0)
        assert abs(probs.sum() - 1.0) < 1e-9
        out.append(dense(ids, probs, row.shape[0]))
    return np.array(out)


def assert_same_distribution(got: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_array_equal(got > 0, expected > 0)  # the same tokens kept
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)


def logits_cases() -> list[tuple[str, np.ndarray]]:
    """Flat and peaked random logits, logits with many ties, and logits with -inf entries (as
    processors leave them)."""
    cases = [
        ("flat", random_logits(3, seed=21, scale=1.0)),
        ("peaked", random_logits(3, seed=22, scale=4.0)),
        ("ties", np.round(random_logits(3, seed=23, scale=2.0)).astype(np.float32)),
    ]
    masked = random_logits(3, seed=24, scale=3.0)
    rng = np.random.default_rng(24)
    masked[rng.random(masked.shape) < 0.3] = -np.inf
    masked[1, :] = -np.inf
    masked[1, [5, 900, 40000]] = [1.0, 2.0, 1.0]  # three tokens left, two tied
    cases.append(("-inf", masked))
    return cases


CASES = logits_cases()


@pytest.mark.parametrize(("name", "logits"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("min_p", [0.0, 1e-4, 0.05, 0.2, 0.5, 0.9, 1.0])
def test_min_p_matches_transformers(name: str, logits: np.ndarray, min_p: float) -> None:
    expected = transformers_distribution(logits, min_p=min_p)
    assert_same_distribution(ours(logits, min_p=min_p), expected)


@pytest.mark.parametrize(("name", "logits"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("typical_p", [1e-6, 0.2, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_typical_p_matches_transformers(name: str, logits: np.ndarray, typical_p: float) -> None:
    expected = transformers_distribution(logits, typical_p=typical_p)
    assert_same_distribution(ours(logits, typical_p=typical_p), expected)


def test_typical_p_against_transformers_in_float32() -> None:
    """On float32 logits transformers' typical-p may swap two near-tied neighbours at the cut;
    whatever differs carries next to no probability."""
    for _, logits in CASES:
        for typical_p in (0.2, 0.5, 0.9):
            expected = transformers_distribution(logits, typical_p=typical_p, dtype=torch.float32)
            got = ours(logits, typical_p=typical_p)
            assert np.abs(got - expected).sum() < 1e-3
            assert np.count_nonzero((got > 0) != (expected > 0)) <= 4


@pytest.mark.parametrize(
    "warpers",
    [
        {"temperature": 0.7, "min_p": 0.1},
        {"temperature": 1.6, "top_k": 40, "min_p": 0.3},
        {"top_p": 0.9, "min_p": 0.2},
        {"temperature": 0.8, "typical_p": 0.7},
        {"top_k": 200, "top_p": 0.95, "typical_p": 0.5},
        {"temperature": 1.3, "top_k": 100, "top_p": 0.9, "min_p": 0.05, "typical_p": 0.8},
        {"temperature": 0.5, "top_k": 3, "min_p": 1.0, "typical_p": 0.3},
    ],
    ids=lambda w: ",".join(f"{k}={v}" for k, v in w.items()),
)
def test_warpers_together_follow_transformers_order(warpers: dict[str, Any]) -> None:
    """min-p and typical-p come after temperature, top-k and top-p, in that order."""
    for name, logits in CASES:
        expected = transformers_distribution(logits, **warpers)
        got = ours(logits, **warpers)
        if name == "ties" and "top_p" in warpers:
            # Which of several tied tokens top-p drops at its cut is arbitrary (torch.sort is
            # not stable): the same probabilities must remain, not the same ids.
            got, expected = np.sort(got, axis=1), np.sort(expected, axis=1)
        assert_same_distribution(got, expected)


def test_min_p_at_its_edges() -> None:
    logits = random_logits(1, seed=31)[0]
    ids, probs = cut_distribution(None, filtered_distribution(logits.copy())[1], 0.0)
    assert ids.shape == (VOCAB,)  # min_p 0 keeps every token
    ids, probs = cut_distribution(None, filtered_distribution(logits.copy())[1], 1.0)
    assert ids.tolist() == [int(np.argmax(logits))] and probs.tolist() == [1.0]
    tied = np.zeros(10, dtype=np.float32)
    tied[[2, 7]] = 3.0
    ids, probs = cut_distribution(None, filtered_distribution(tied)[1], 1.0)
    assert ids.tolist() == [2, 7] and probs.tolist() == [0.5, 0.5]  # ties at the top stay


def test_defaults_leave_the_distribution_alone() -> None:
    logits = random_logits(1, seed=32)[0]
    before = filtered_distribution(logits.copy(), 0.9, 50, 0.95)
    after = params_distribution(logits.copy(), params(temperature=0.9, top_k=50, top_p=0.95))
    assert before[0].tolist() == after[0].tolist()
    assert before[1].tolist() == after[1].tolist()  # bit for bit: seeded runs are unchanged


# --- presence and frequency penalties, logit bias ---------------------------------------------


def openai_penalised(
    logits: np.ndarray, generated: list[list[int]], presence: float, frequency: float
) -> np.ndarray:
    """OpenAI's definition, token by token: mu[j] -= c[j] * alpha_frequency +
    (c[j] > 0) * alpha_presence, c counting the tokens generated so far."""
    out = logits.astype(np.float64)
    for row, tokens in enumerate(generated):
        for token in set(tokens):
            count = tokens.count(token)
            out[row, token] -= count * frequency + (count > 0) * presence
    return out.astype(np.float32)


@pytest.mark.parametrize(
    ("presence", "frequency"), [(0.5, 0.0), (0.0, 0.7), (1.5, -0.4), (-2.0, 2.0), (2.0, 0.25)]
)
def test_penalties_match_their_definition(presence: float, frequency: float) -> None:
    """Prompt tokens do not count, generated ones do, once per occurrence for the frequency."""
    prompts = [[5, 5, 9, 100], [7], [3, 3, 3]]
    generated = [[9, 9, 9, 42, 5], [7, 8, 7, 7, 3], [11, 12, 13, 11, 11]]
    p = params(presence_penalty=presence, frequency_penalty=frequency)
    processors = BatchProcessors(p, prompts, steps=8)
    logits = random_logits(3, seed=41)
    out = logits.copy()
    processors(out)
    np.testing.assert_array_equal(out, logits)  # nothing generated yet: nothing penalised
    for step in range(len(generated[0])):
        processors.append(np.array([row[step] for row in generated]))
        out = logits.copy()
        processors(out)
        expected = openai_penalised(logits, [row[: step + 1] for row in generated],
                                    presence, frequency)
        np.testing.assert_array_equal(out, expected)
    assert out[0, 9] == np.float32(logits[0, 9] - presence - 3 * frequency)
    assert out[0, 100] == logits[0, 100]  # in the prompt only


def test_penalties_follow_rows_that_join_leave_and_fork() -> None:
    p = params(presence_penalty=0.6, frequency_penalty=0.3, logit_bias=((4, 5.0), (6, -3.0)))
    batch = BatchProcessors(p, [[1, 2], [3]])
    names, history = ["a", "b"], {"a": [], "b": []}
    steps = [[4, 4], [4, 6], "add", [6, 4, 1], "fork", [1, 2, 4, 4], "drop", [4, 4, 4]]
    for action in steps:
        if action == "add":
            batch.add_rows([[9, 9]])
            names.append("c")
            history["c"] = []
        elif action == "fork":  # row 0 twice: the twin diverges from here on
            batch.keep_rows([0, 1, 2, 0])
            names.append("a'")
            history["a'"] = list(history["a"])
        elif action == "drop":
            batch.keep_rows(np.array([False, True, True, True]))
            names = names[1:]
        else:
            batch.append(np.array(action))
            for name, token in zip(names, action, strict=True):
                history[name].append(token)
            logits = random_logits(len(names), seed=len(history[names[0]]))
            out = logits.copy()
            batch(out)
            biased = logits.copy()
            biased[:, 4] += 5.0
            biased[:, 6] -= 3.0
            expected = openai_penalised(biased, [history[n] for n in names], 0.6, 0.3)
            np.testing.assert_array_equal(out, expected)


def test_logit_bias_is_added_first() -> None:
    """The bias comes before the repetition penalty (as transformers' sequence_bias) and before
    OpenAI's penalties (as vLLM's logit_bias processor)."""
    p = params(logit_bias=((3, -2.0),), repetition_penalty=2.0, presence_penalty=1.0)
    kinds = [type(proc).__name__ for proc in BatchProcessors(p, [[3]]).processors]
    assert kinds == [
        "LogitBiasProcessor", "RepetitionPenaltyProcessor", "PresenceFrequencyPenaltyProcessor"
    ]
    processors = BatchProcessors(p, [[3]])
    processors.append(np.array([3]))
    logits = np.full((1, 8), 1.0, dtype=np.float32)
    processors(logits)
    # (1 - 2) is negative, so the repetition penalty multiplies it: -1 * 2, then presence - 1.
    assert logits[0, 3] == -3.0 and logits[0, 0] == 1.0


def test_logit_bias_checks_the_vocabulary_at_run_time_too() -> None:
    processor = LogitBiasProcessor(((2, 1.0), (10, 1.0)))
    logits = np.zeros((2, 11), dtype=np.float32)
    processor(logits)
    assert logits[:, [2, 10]].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    with pytest.raises(InputError) as caught:
        processor(np.zeros((1, 10), dtype=np.float32))
    assert caught.value.param == "logit_bias"


def test_everything_off_by_default() -> None:
    p = GenerationParams.resolve({}, {})
    assert (p.min_p, p.typical_p, p.presence_penalty, p.frequency_penalty, p.logit_bias) == (
        None, 1.0, 0.0, 0.0, ()
    )
    assert not BatchProcessors(p, [[1, 2]]).active


# --- through the scheduler ---------------------------------------------------------------------


def greedy_walk(backend: BigramBackend, text: str, steps: int, adjust) -> list[int]:  # noqa: ANN001
    token, walk = backend.tokenizer.encode(text)[-1], []
    while len(walk) < steps:
        logits = backend.table[token].astype(np.float32)
        token = int(np.argmax(adjust(logits, walk)))
        walk.append(token)
        if token == 63:
            break
    return walk


def test_scheduler_applies_bias_and_penalties_greedily() -> None:
    backend = BigramBackend()
    p = GenerationParams(
        max_new_tokens=12, eos_token_ids=(63,), pad_token_id=63, presence_penalty=1.0,
        frequency_penalty=0.5, logit_bias=((17, 4.0), (63, -100.0)),
    )

    def adjust(logits: np.ndarray, walk: list[int]) -> np.ndarray:
        logits = logits.copy()
        logits[17] += 4.0
        logits[63] -= 100.0
        return openai_penalised(logits[None, :], [walk], 1.0, 0.5)[0]

    seqs = run_decoder(backend, TEXTS, p, batch=3)
    for text, seq in zip(TEXTS, seqs, strict=True):
        assert seq.token_ids == greedy_walk(backend, text, 12, adjust)
    unbiased = GenerationParams(max_new_tokens=12, eos_token_ids=(63,), pad_token_id=63)
    plain = run_decoder(backend, TEXTS, unbiased, batch=3)
    assert [s.token_ids for s in plain] != [s.token_ids for s in seqs]


def test_scheduler_samples_with_min_p_and_typical_p() -> None:
    backend = BigramBackend()
    base = {"max_new_tokens": 10, "eos_token_ids": (63,), "pad_token_id": 63, "top_k": 0}
    greedy = run_decoder(backend, TEXTS, GenerationParams(**base), batch=2)
    # min_p 1 keeps the likeliest token only: sampling is greedy decoding.
    top_only = GenerationParams(do_sample=True, min_p=1.0, **base)
    only_top = run_decoder(backend, TEXTS, top_only, batch=3)
    assert [s.token_ids for s in only_top] == [s.token_ids for s in greedy]
    # Every sampled token passes the min-p test of its step.
    p = GenerationParams(do_sample=True, min_p=0.4, num_return_sequences=3, **base)
    for seq in run_decoder(backend, TEXTS, p, batch=4):
        last = backend.tokenizer.encode(seq.prompt.text)[-1]
        for token in seq.token_ids:
            probs = np.exp(backend.table[last].astype(np.float64))
            assert probs[token] >= 0.4 * probs.max()
            last = token
    # A tiny typical mass keeps the token whose surprise is nearest the entropy only.
    p = GenerationParams(do_sample=True, typical_p=1e-9, **base)

    def nearest_typical(logits: np.ndarray, walk: list[int]) -> np.ndarray:  # noqa: ARG001
        probs = np.exp(logits.astype(np.float64) - logits.max())
        probs /= probs.sum()
        entropy = -(probs * np.log(probs)).sum()
        return -np.abs(-np.log(probs) - entropy)

    for text, seq in zip(TEXTS, run_decoder(backend, TEXTS, p, batch=5), strict=True):
        assert seq.token_ids == greedy_walk(backend, text, 10, nearest_typical)


# --- the table, requests and model files --------------------------------------------------------


def test_the_table_entries() -> None:
    assert BY_NAME["min_p"].implies_sampling and BY_NAME["typical_p"].implies_sampling
    assert not BY_NAME["presence_penalty"].implies_sampling
    assert not BY_NAME["logit_bias"].implies_sampling
    # transformers' GenerationConfig has min_p and typical_p; OpenAI's parameters are not in it.
    assert BY_NAME["min_p"].model_setting and BY_NAME["typical_p"].model_setting
    for name in ("presence_penalty", "frequency_penalty", "logit_bias"):
        assert not BY_NAME[name].model_setting


@pytest.mark.parametrize(
    ("value", "pairs"),
    [
        (["123=100"], ((123, 100.0),)),
        ([" 5 = -2.5", "0=0"], ((0, 0.0), (5, -2.5))),
        ({"50256": -100, "11": 1.5}, ((11, 1.5), (50256, -100.0))),
        ([(7, 3)], ((7, 3.0),)),
        ((), ()),
    ],
)
def test_logit_bias_forms(value: Any, pairs: tuple) -> None:
    assert parse_logit_bias(value) == pairs
    assert GenerationParams.resolve({}, {"logit_bias": value}).logit_bias == pairs


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"min_p": 1.5}, "--min-p: must be in [0, 1], got 1.5"),
        ({"min_p": -0.1}, "--min-p: must be in [0, 1], got -0.1"),
        ({"typical_p": 0.0}, "--typical-p: must be in (0, 1], got 0.0"),
        ({"typical_p": 1.01}, "--typical-p: must be in (0, 1], got 1.01"),
        ({"presence_penalty": 2.5}, "--presence-penalty: must be in [-2, 2], got 2.5"),
        ({"frequency_penalty": -2.01}, "--frequency-penalty: must be in [-2, 2], got -2.01"),
        ({"frequency_penalty": float("nan")}, "--frequency-penalty: must be in [-2, 2], got nan"),
        ({"logit_bias": ("7",)}, "--logit-bias: expected ID=BIAS (a token id and a number), "
                                 "got '7'"),
        ({"logit_bias": ("x=1",)}, "--logit-bias: token ids must be integers >= 0, got 'x'"),
        ({"logit_bias": ("-3=1",)}, "--logit-bias: token ids must be integers >= 0, got '-3'"),
        ({"logit_bias": ("3-=1",)}, "--logit-bias: token ids must be integers >= 0, got '3-'"),
        ({"logit_bias": ("1.5=1",)}, "--logit-bias: token ids must be integers >= 0, got '1.5'"),
        ({"logit_bias": {"1e3": 1}}, "--logit-bias: token ids must be integers >= 0, got '1e3'"),
        ({"logit_bias": ("7=much",)}, "--logit-bias: token 7: the bias must be a number, "
                                      "got 'much'"),
        ({"logit_bias": ("7=101",)}, "--logit-bias: token 7: the bias must be in [-100, 100], "
                                     "got 101"),
        ({"logit_bias": ("7=inf",)}, "--logit-bias: token 7: the bias must be in [-100, 100]"),
        ({"logit_bias": ("7=1", "7=2")}, "--logit-bias: token 7 is given twice"),
        ({"logit_bias": {"7": True}}, "--logit-bias: token 7: the bias must be a number, got True"),
        ({"logit_bias": {"7": "1"}}, "--logit-bias: token 7: the bias must be a number, got '1'"),
    ],
)
def test_bad_values_name_the_parameter(override: dict, message: str) -> None:
    with pytest.raises(InputError) as caught:
        GenerationParams.resolve({}, override)
    (name,) = override
    assert caught.value.param == name
    assert "--" not in caught.value.render()
    assert caught.value.render(cli_name).startswith(message)


def test_logit_bias_ids_must_be_in_the_vocabulary() -> None:
    ok = GenerationParams.resolve({}, {"logit_bias": ("50256=1",)}, vocab_size=VOCAB)
    assert ok.logit_bias == ((50256, 1.0),)
    with pytest.raises(InputError) as caught:
        GenerationParams.resolve({}, {"logit_bias": ("50257=1",)}, vocab_size=VOCAB)
    assert caught.value.param == "logit_bias"
    assert caught.value.render(cli_name) == (
        "--logit-bias: token id 50257 is not in the model's vocabulary (ids 0 to 50256)"
    )


def test_a_request_carries_the_new_parameters() -> None:
    body = {
        "inputs": {"input_string": ["Hello"]},
        "parameters": {"min_p": 0.1, "typical_p": 0.9, "presence_penalty": 0.5,
                       "frequency_penalty": -0.25, "logit_bias": {"50256": -100, "11": 2},
                       "do_sample": True},
    }
    request = parse_request(json.dumps(body), "req.json")
    p = GenerationParams.resolve({}, request.parameters, vocab_size=VOCAB)
    assert (p.min_p, p.typical_p, p.presence_penalty, p.frequency_penalty) == (0.1, 0.9, 0.5, -0.25)
    assert p.logit_bias == ((11, 2.0), (50256, -100.0))
    body["parameters"]["logit_bias"] = [[11, 2]]
    with pytest.raises(InputError, match=r"^req\.json: parameters\.logit_bias: expected an object"):
        parse_request(json.dumps(body), "req.json")


def test_model_generation_configs_may_set_min_p_and_typical_p() -> None:
    settings = {"min_p": 0.05, "typical_p": 0.9, "presence_penalty": 5.0}
    checked = check_generation_settings("gc.json", settings, VOCAB)
    assert checked["min_p"] == 0.05 and checked["typical_p"] == 0.9
    p = GenerationParams.resolve(checked, {})
    assert (p.min_p, p.typical_p, p.presence_penalty) == (0.05, 0.9, 0.0)  # not a model setting
    with pytest.raises(ModelError, match=r"^gc\.json: min_p: must be in \[0, 1\], got 2"):
        check_generation_settings("gc.json", {"min_p": 2}, VOCAB)


# --- the CLI -----------------------------------------------------------------------------------


def generated_ids(out: str) -> list[list[int]]:
    records = [json.loads(line) for line in out.splitlines()]
    return [seq["ids"] for r in records for seq in r["sequences"]]


def test_cli_logit_bias_forces_a_token_under_greedy(tiny_model_dir: Path) -> None:
    args = ("generate", "-m", str(tiny_model_dir), "--greedy", "--max-new-tokens", "6")
    result = run_cli(*args, "--logit-bias", "123=100", "--format", "jsonl", "Hello")
    assert result.returncode == 0, result.err
    assert generated_ids(result.out) == [[123] * 6]
    result = run_cli(*args, "--logit-bias", "11=100", "--no-return-full-text", "Hello")
    assert result.returncode == 0, result.err
    assert result.out == ",,,,,,\n"


def test_cli_penalties_and_warpers(tiny_model_dir: Path) -> None:
    model = str(tiny_model_dir)
    base = ("generate", "-m", model, "--max-new-tokens", "12", "--format", "jsonl", "Hello")
    forced = run_in_process(*base, "--greedy", "--logit-bias", "11=8")
    (with_bias,) = generated_ids(forced.out)
    assert with_bias.count(11) > 3  # a mild bias repeats the token ...
    penalised = run_in_process(*base, "--greedy", "--logit-bias", "11=8",
                               "--frequency-penalty", "2", "--presence-penalty", "2")
    (fewer,) = generated_ids(penalised.out)
    assert fewer.count(11) < with_bias.count(11)  # ... and the penalties push back
    seeded = [*base, "--do-sample", "--seed", "4", "--top-k", "0"]
    (top_only,) = generated_ids(run_in_process(*seeded, "--min-p", "1").out)
    (greedy,) = generated_ids(run_in_process(*base, "--greedy").out)
    assert top_only == greedy
    sampled = run_in_process(*seeded, "--typical-p", "0.5", "--min-p", "0.01")
    assert sampled.returncode == 0, sampled.err
    assert sampled.out == run_in_process(*seeded, "--typical-p", "0.5", "--min-p", "0.01").out


def test_cli_request_with_the_new_parameters(tiny_model_dir: Path, tmp_path: Path) -> None:
    request = tmp_path / "req.json"
    request.write_text(json.dumps({
        "input_data": ["Hello"],
        "params": {"do_sample": False, "max_new_tokens": 4, "return_full_text": False,
                   "logit_bias": {"11": 100}, "presence_penalty": 0.1,
                   "frequency_penalty": 0.1, "min_p": 0.2, "typical_p": 0.9},
    }))
    result = run_in_process("generate", "-m", str(tiny_model_dir), "--request", str(request))
    assert result.returncode == 0, result.err
    assert json.loads(result.out) == [",,,,"]
    body = {"input_data": ["Hello"], "params": {"logit_bias": {"99999": 1}}}
    request.write_text(json.dumps(body))
    result = run_in_process("generate", "-m", str(tiny_model_dir), "--request", str(request))
    line = assert_one_line_error(result, 2)
    assert line.endswith(
        f"{request}: params.logit_bias: token id 99999 is not in the model's vocabulary "
        "(ids 0 to 50256)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--min-p", "2"), "--min-p: must be in [0, 1], got 2.0"),
        (("--typical-p", "0"), "--typical-p: must be in (0, 1], got 0.0"),
        (("--presence-penalty", "3"), "--presence-penalty: must be in [-2, 2], got 3.0"),
        (("--frequency-penalty", "-2.5"), "--frequency-penalty: must be in [-2, 2], got -2.5"),
        (("--logit-bias", "123"), "--logit-bias: expected ID=BIAS (a token id and a number), "
                                  "got '123'"),
        (("--logit-bias", "123=200"), "--logit-bias: token 123: the bias must be in [-100, 100], "
                                      "got 200"),
        (("--logit-bias", "50257=1"), "--logit-bias: token id 50257 is not in the model's "
                                      "vocabulary (ids 0 to 50256)"),
    ],
)
def test_cli_bad_values_are_one_line(tiny_model_dir: Path, args: tuple, message: str) -> None:
    result = run_in_process("generate", "-m", str(tiny_model_dir), *args, "Hello")
    assert assert_one_line_error(result, 2) == f"gpt2cli: error: {message}"
    assert result.stdout == b""
