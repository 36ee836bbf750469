"""decoding.py against transformers' logits processors and warpers, on random logits.

No model is needed: the processors, warpers, sampling, stop strings and incremental text are
checked on their own; the decode loop runs on a small numpy bigram model whose logits depend
only on each row's last token, so batch composition cannot change what a row sees.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2cli.backends.base import ForwardResult, ModelInfo
from gpt2cli.cli import cli_name
from gpt2cli.decoding import (
    BatchProcessors,
    GeneratedSequence,
    GenerationParams,
    NGramIndex,
    Prompt,
    filtered_distribution,
    plan_sequences,
    sample_token,
    top_k_ids,
)
from gpt2cli.errors import InputError, ModelError
from gpt2cli.scheduler import RowRequest, Scheduler

torch = pytest.importorskip("torch")
logits_process = pytest.importorskip("transformers.generation.logits_process")

VOCAB = 50257
EOS = 50256


def random_logits(rows: int, seed: int, scale: float = 3.0, vocab: int = VOCAB) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, vocab)) * scale).astype(np.float32)


def transformers_processed(
    processors: list, input_ids: np.ndarray, logits: np.ndarray
) -> np.ndarray:
    chain = logits_process.LogitsProcessorList(processors)
    return chain(torch.from_numpy(input_ids), torch.from_numpy(logits.copy())).numpy()


def params(**values: Any) -> GenerationParams:
    return GenerationParams(eos_token_ids=(EOS,), pad_token_id=EOS, **values)


def ours_processed(p: GenerationParams, input_ids: np.ndarray, logits: np.ndarray, prompt: int):
    """Our processors after the first `prompt` tokens of each row, then the rest appended."""
    processors = BatchProcessors(p, [row[:prompt].tolist() for row in input_ids], steps=64)
    for column in range(prompt, input_ids.shape[1]):
        processors.append(input_ids[:, column])
    out = logits.copy()
    processors(out)
    return out


# --- processors --------------------------------------------------------------------------------


@pytest.mark.parametrize("penalty", [0.5, 1.2, 2.0])
def test_repetition_penalty_matches_transformers(penalty: float) -> None:
    rng = np.random.default_rng(1)
    input_ids = rng.integers(0, 300, size=(4, 40))  # small id range: plenty of repeats
    logits = random_logits(4, seed=2)
    logits[:, :300] = rng.standard_normal((4, 300)) * 4  # both signs among penalised tokens
    expected = transformers_processed(
        [logits_process.RepetitionPenaltyLogitsProcessor(penalty)], input_ids, logits
    )
    got = ours_processed(params(repetition_penalty=penalty), input_ids, logits, prompt=25)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_repetition_penalty_ignores_left_padding() -> None:
    """A padded row is penalised exactly like the same row alone."""
    p = params(repetition_penalty=1.5)
    logits = random_logits(2, seed=3)
    processors = BatchProcessors(p, [[5, 6, 7], [8]], steps=4)
    out = logits.copy()
    processors(out)
    alone = BatchProcessors(p, [[8]], steps=4)
    out_alone = logits[1:].copy()
    alone(out_alone)
    np.testing.assert_array_equal(out[1], out_alone[0])


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_transformers(size: int) -> None:
    rng = np.random.default_rng(size)
    input_ids = rng.integers(0, 6, size=(5, 30))  # a 6-token alphabet repeats n-grams often
    logits = random_logits(5, seed=size + 10)
    expected = transformers_processed(
        [logits_process.NoRepeatNGramLogitsProcessor(size)], input_ids, logits
    )
    got = ours_processed(params(no_repeat_ngram_size=size), input_ids, logits, prompt=12)
    np.testing.assert_array_equal(got, expected)
    assert np.isinf(got).any()


def test_ngram_index_short_sequences() -> None:
    assert NGramIndex(3, [1]).banned() == []
    assert NGramIndex(3, [1, 2, 9, 1]).banned() == []
    assert NGramIndex(3, [1, 2, 9, 1, 2]).banned() == [9]


@pytest.mark.parametrize(
    ("min_length", "min_new", "prompt", "total"),
    [(20, None, 10, 15), (20, None, 10, 20), (0, 5, 10, 13), (0, 5, 10, 15), (30, 2, 10, 12)],
)
def test_min_length_and_min_new_tokens_match_transformers(
    min_length: int, min_new: int | None, prompt: int, total: int
) -> None:
    rng = np.random.default_rng(total)
    input_ids = rng.integers(0, 50000, size=(3, total))
    logits = random_logits(3, seed=total)
    reference = []
    if min_length:
        reference.append(logits_process.MinLengthLogitsProcessor(min_length, EOS))
    if min_new:
        reference.append(logits_process.MinNewTokensLengthLogitsProcessor(prompt, min_new, EOS))
    expected = transformers_processed(reference, input_ids, logits)
    p = params(min_length=min_length, min_new_tokens=min_new)
    got = ours_processed(p, input_ids, logits, prompt=prompt)
    np.testing.assert_array_equal(got, expected)


def test_all_processors_together_match_transformers() -> None:
    rng = np.random.default_rng(7)
    input_ids = rng.integers(0, 50, size=(3, 24))
    input_ids[:, 5] = EOS
    logits = random_logits(3, seed=8)
    reference = [
        logits_process.RepetitionPenaltyLogitsProcessor(1.3),
        logits_process.NoRepeatNGramLogitsProcessor(2),
        logits_process.MinLengthLogitsProcessor(40, EOS),
    ]
    expected = transformers_processed(reference, input_ids, logits)
    p = params(repetition_penalty=1.3, no_repeat_ngram_size=2, min_length=40)
    got = ours_processed(p, input_ids, logits, prompt=20)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_rows_joining_and_leaving_match_rows_alone() -> None:
    """add_rows/keep_rows between steps (continuous batching): every row is processed exactly
    as it would be alone, whatever joins, leaves or is forked around it."""
    p = params(repetition_penalty=1.4, no_repeat_ngram_size=2, min_length=9, min_new_tokens=3)
    rng = np.random.default_rng(11)
    prompts = {name: rng.integers(0, 12, size=size).tolist()
               for name, size in (("a", 3), ("b", 7), ("c", 1), ("d", 12), ("e", 4))}
    alone = {name: BatchProcessors(p, [prompt]) for name, prompt in prompts.items()}
    batch = BatchProcessors(p, [prompts["a"], prompts["b"]])
    names = ["a", "b"]
    history: dict[str, list[int]] = {name: [] for name in prompts}  # tokens appended so far
    schedule = {2: ("add", ["c", "d"]), 3: ("keep", [0, 2, 3]), 5: ("add", ["e"]),
                6: ("keep", np.array([False, True, True, True])), 7: ("fork", 0)}
    for step in range(10):
        action = schedule.get(step)
        if action and action[0] == "add":
            batch.add_rows([prompts[n] for n in action[1]])
            names += action[1]
        elif action and action[0] == "keep":
            batch.keep_rows(action[1])
            kept = np.flatnonzero(action[1]) if isinstance(action[1], np.ndarray) else action[1]
            names = [names[i] for i in kept]
        elif action:  # fork row 0 into a twin that then diverges
            batch.keep_rows([*range(len(names)), action[1]])
            twin = names[action[1]] + "'"
            alone[twin] = BatchProcessors(p, [])
            alone[twin].add_rows([prompts[names[action[1]]]])
            for token in history[names[action[1]]]:
                alone[twin].append(np.array([token]))
            history[twin] = list(history[names[action[1]]])
            names.append(twin)
        logits = random_logits(len(names), seed=step)
        logits[:, EOS] = 5.0
        out = logits.copy()
        batch(out)
        tokens = rng.integers(0, 12, size=len(names))
        for row, name in enumerate(names):
            single = logits[row : row + 1].copy()
            alone[name](single)
            np.testing.assert_array_equal(out[row], single[0], err_msg=f"{name} at {step}")
            alone[name].append(tokens[row : row + 1])
            history[name].append(int(tokens[row]))
        batch.append(tokens)


def test_processors_follow_transformers_order() -> None:
    p = params(repetition_penalty=1.2, no_repeat_ngram_size=2, min_length=5, min_new_tokens=2)
    kinds = [type(proc).__name__ for proc in BatchProcessors(p, [[1, 2]]).processors]
    assert kinds == [
        "RepetitionPenaltyProcessor",
        "NoRepeatNGramProcessor",
        "MinLengthProcessor",
        "MinNewTokensProcessor",
    ]
    assert not BatchProcessors(params(), [[1, 2]]).active


# --- warpers -----------------------------------------------------------------------------------


def transformers_distribution(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float
) -> np.ndarray:
    """Probabilities after transformers' warpers, in generate()'s order."""
    warpers = []
    if temperature != 1.0:
        warpers.append(logits_process.TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(logits_process.TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(logits_process.TopPLogitsWarper(top_p))
    dummy_ids = np.zeros((logits.shape[0], 1), dtype=np.int64)
    warped = transformers_processed(warpers, dummy_ids, logits)
    return torch.softmax(torch.from_numpy(warped).double(), dim=-1).numpy()


def dense(ids: np.ndarray | None, probs: np.ndarray, vocab: int = VOCAB) -> np.ndarray:
    out = np.zeros(vocab)
    out[slice(None) if ids is None else ids] = probs
    return out


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.7])
@pytest.mark.parametrize("top_k", [0, 1, 7, 50, 640])
@pytest.mark.parametrize("top_p", [1.0, 0.92, 0.5, 0.0])
def test_warpers_match_transformers(temperature: float, top_k: int, top_p: float) -> None:
    seed = int(temperature * 10) * 1000 + top_k * 10 + int(top_p * 100)
    for scale in (1.0, 4.0):  # a flat and a peaked distribution
        logits = random_logits(2, seed=seed, scale=scale)
        expected = transformers_distribution(logits, temperature, top_k, top_p)
        for row in range(2):
            ids, probs = filtered_distribution(logits[row].copy(), temperature, top_k, top_p)
            got = dense(ids, probs)
            np.testing.assert_array_equal(got > 0, expected[row] > 0)
            np.testing.assert_allclose(got, expected[row], rtol=1e-5, atol=1e-9)
            if ids is not None:
                assert np.all(np.diff(ids) > 0)


def test_top_k_keeps_ties_like_transformers() -> None:
    logits = np.round(random_logits(1, seed=5, scale=2.0)).astype(np.float32)  # many ties
    for k in (1, 3, 10, 200):
        expected = transformers_distribution(logits, 1.0, k, 1.0)[0]
        ids, probs = filtered_distribution(logits[0].copy(), top_k=k)
        np.testing.assert_array_equal(dense(ids, probs) > 0, expected > 0)
        assert ids is not None and len(ids) >= k


@pytest.mark.parametrize("k", [1, 2, 50, 3000, VOCAB - 1, VOCAB])
def test_top_k_ids_exact_when_the_sample_misleads(k: int) -> None:
    """The strided sample sees only every 16th score; put the large ones elsewhere."""
    scores = random_logits(1, seed=9)[0]
    scores[1::16] += 20.0
    expected = np.flatnonzero(scores >= np.sort(scores)[-k])
    got = top_k_ids(scores, k)
    if k == VOCAB:
        assert got is None
    else:
        np.testing.assert_array_equal(got, expected)


def test_sample_token_follows_the_distribution() -> None:
    ids = np.array([3, 10, 11, 400])
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(0)
    draws = [sample_token(ids, probs, rng.random()) for _ in range(20000)]
    counts = np.array([draws.count(i) for i in ids]) / len(draws)
    np.testing.assert_allclose(counts, probs, atol=0.015)
    assert sample_token(None, np.array([0.5, 0.5]), 0.75) == 1
    assert sample_token(ids, probs, 0.0) == 3
    assert sample_token(ids, probs, 1.0 - 1e-12) == 400


# --- parameters --------------------------------------------------------------------------------

GPT2_DEFAULTS = {"bos_token_id": EOS, "eos_token_id": EOS, "do_sample": True, "max_length": 50}


def test_resolve_follows_model_defaults_then_overrides() -> None:
    p = GenerationParams.resolve(GPT2_DEFAULTS, {})
    assert (p.do_sample, p.top_k, p.top_p, p.temperature, p.max_length) == (True, 50, 1.0, 1.0, 50)
    assert p.max_new_tokens is None and p.eos_token_ids == (EOS,) and p.pad_token_id == EOS
    assert p.new_token_budget(8) == 42
    p = GenerationParams.resolve(GPT2_DEFAULTS, {"max_new_tokens": 5, "do_sample": False})
    assert p.new_token_budget(8) == 5 and not p.do_sample
    p = GenerationParams.resolve({"max_new_tokens": 30}, {"max_length": 12})
    assert p.new_token_budget(2) == 10
    assert GenerationParams.resolve({}, {}).do_sample is False  # transformers' own defaults


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"temperature": -1.0}, "--temperature: must be a strictly positive number, got -1.0"),
        ({"top_p": 1.5}, "--top-p: must be in (0, 1]"),
        ({"top_k": -1}, "--top-k: must be >= 0"),
        ({"max_new_tokens": 0}, "--max-new-tokens: must be >= 1"),
        ({"repetition_penalty": 0.0}, "--repetition-penalty"),
        ({"stop": ("",)}, "--stop: stop strings must not be empty"),
        (
            {"do_sample": False, "num_return_sequences": 2},
            "--num-return-sequences: must be 1 without sampling, got 2 (sample with --do-sample",
        ),
        ({"bogus": 1}, "--bogus: unknown generation parameter"),
    ],
)
def test_resolve_rejects_bad_values(override: dict, message: str) -> None:
    with pytest.raises(InputError) as caught:
        GenerationParams.resolve(GPT2_DEFAULTS, override)
    assert message in caught.value.render(cli_name)
    assert caught.value.param == sorted(override)[-1]


def test_errors_name_parameters_by_their_engine_names() -> None:
    """Errors carry the parameter; rendering names it (no flag is spelled by the engine)."""
    with pytest.raises(InputError) as caught:
        GenerationParams.resolve({}, {"do_sample": True, "temperature": 0.0})
    error = caught.value
    assert error.param == "temperature"
    assert error.reason == "must be a strictly positive number, got 0.0"
    assert error.render(cli_name).endswith("(for greedy decoding use --greedy)")
    assert "--" not in error.render()


def test_model_values_are_the_models_fault() -> None:
    with pytest.raises(ModelError, match=r"^gc\.json: num_return_sequences: must be at most 128, "
                       r"got 1000 \(a fault in the model's files\)$"):
        GenerationParams.resolve(
            {"num_return_sequences": 1000, "do_sample": True}, {}, model_source="gc.json"
        )
    # The same value given by the user is the user's error.
    with pytest.raises(InputError, match="num_return_sequences: must be at most 128"):
        GenerationParams.resolve({"do_sample": True}, {"num_return_sequences": 1000})


def test_resolve_names_fields_the_callers_way() -> None:
    with pytest.raises(InputError, match=r"^parameters\.top_k: "):
        GenerationParams.resolve({}, {"top_k": -3}, name=lambda k: f"parameters.{k}")


def test_plan_checks_the_context() -> None:
    p = params(max_new_tokens=10)
    prompt = Prompt("x", "argument 1")
    with pytest.raises(InputError, match="argument 1: the prompt is 1020 tokens and 10 new tokens"):
        plan_sequences([prompt], [list(range(1020))], p, context=1024)
    left = GenerationParams(max_new_tokens=10, truncate_left=True)
    (seq,) = plan_sequences([prompt], [list(range(1020))], left, context=1024)
    assert seq.prompt_ids == list(range(6, 1020)) and seq.truncated_tokens == 6
    with pytest.raises(InputError, match="fewer than 1024 new tokens"):
        plan_sequences([prompt], [[1]], GenerationParams(max_new_tokens=1024), context=1024)
    with pytest.raises(InputError, match="--max-length 2000 is over the model's context"):
        plan_sequences(
            [prompt], [[1]], GenerationParams(max_length=2000), context=1024, name=cli_name
        )
    with pytest.raises(InputError, match="leaves nothing to generate under --max-length 50"):
        plan_sequences(
            [prompt], [list(range(60))], GenerationParams(max_length=50), context=1024,
            name=cli_name,
        )
    sampled = params(do_sample=True, num_return_sequences=3, max_length=9)
    many = plan_sequences([prompt, prompt], [[1], [2, 3]], sampled, context=1024, first_index=4)
    assert [(s.prompt_index, s.sequence_index, s.budget) for s in many] == [
        (4, 0, 8), (4, 1, 8), (4, 2, 8), (5, 0, 7), (5, 1, 7), (5, 2, 7)
    ]


# --- stop strings and incremental text ---------------------------------------------------------


def sequence(budget: int = 100) -> GeneratedSequence:
    return GeneratedSequence(0, 0, Prompt("p"), [1], 0, budget)


def feed(pieces: list[bytes], stops: tuple[bytes, ...], budget: int | None = None):
    """Add `pieces` as tokens (the last one ends the sequence by length); streamed text too."""
    seq = sequence(budget or len(pieces))
    streamed = []
    for i, piece in enumerate(pieces):
        seq.add(i, piece, stops)
        streamed.append(seq.take_text(stops))
        if seq.finished:
            break
    streamed.append(seq.take_text(stops))
    return seq, "".join(streamed), streamed


def test_stop_string_across_token_boundaries() -> None:
    seq, streamed, _ = feed([b"Hello", b" wor", b"ld", b"! More", b" text"], (b"world!",))
    assert seq.finish_reason == "stop" and seq.stop_string == "world!"
    assert seq.text == "Hello " == streamed
    assert seq.token_ids == [0, 1, 2, 3]


def test_earliest_stop_string_wins() -> None:
    seq, _, _ = feed([b"a b c d"], (b"c", b"b c"))
    assert seq.text == "a " and seq.stop_string == "b c"


def test_stop_string_in_first_token_and_length_finish() -> None:
    seq, _, _ = feed([b"\n\nabc"], (b"\n",))
    assert seq.text == "" and seq.finish_reason == "stop"
    seq, _, _ = feed([b"ab", b"cd"], (b"zz",), budget=2)
    assert seq.text == "abcd" and seq.finish_reason == "length"


def test_end_of_sequence_token_is_not_text() -> None:
    seq = sequence()
    seq.add(11, b"Hi", ())
    seq.add(EOS, None, ())
    assert seq.text == "Hi" and seq.finish_reason == "stop" and seq.token_ids == [11, EOS]
    assert seq.stop_string is None


def test_streaming_holds_back_a_possible_stop_string() -> None:
    _, streamed, chunks = feed([b"one ", b"END", b"IN", b"G two"], (b"ENDING!",))
    assert chunks[:3] == ["one ", "", ""]  # "END", "ENDIN" may still become "ENDING!"
    assert streamed == "one ENDING two"


def test_streaming_never_splits_a_character() -> None:
    snowman = "☃".encode()  # three bytes
    _, streamed, chunks = feed([b"a", snowman[:1], snowman[1:2], snowman[2:], b"b"], ())
    assert chunks == ["a", "", "", "☃", "b", ""]
    assert streamed == "a☃b"


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet="ab☃é \n", min_size=0, max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=12),
    stops=st.lists(st.text(alphabet="ab☃ \n", min_size=1, max_size=4), max_size=2),
)
def test_streamed_text_equals_the_final_text(text: str, cuts: list[int], stops: list[str]) -> None:
    """Any split of the bytes into tokens streams exactly the final text, cut at the first stop."""
    data = text.encode()
    bounds = sorted({c for c in cuts if 0 < c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True) if b > a]
    stop_bytes = tuple(s.encode() for s in stops)
    seq, streamed, _ = feed(pieces, stop_bytes)
    cut = min((i for i in (data.find(s) for s in stop_bytes) if i >= 0), default=len(data))
    assert seq.text == data[:cut].decode("utf-8", errors="replace")
    assert streamed == seq.text


# --- the decode loop on a numpy bigram model ---------------------------------------------------


class BigramTokenizer:
    vocab_size = 64
    eos_token_id = 63

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 32 for c in text]

    def encode_batch(self, texts, threads=None):  # noqa: ANN001, ARG002
        return [self.encode(t) for t in texts]

    def token_bytes(self, token_id: int) -> bytes:
        return chr(token_id + 32).encode()


class BigramBackend:
    """Logits depend only on each row's last real token; checks masks and positions as it goes."""

    name = "bigram"

    def __init__(self) -> None:
        self.tokenizer = BigramTokenizer()
        self.info = ModelInfo(".", "bigram", 64, 1024, 1, 1, 8, 63, 63, {})
        self.table = random_logits(64, seed=11, scale=2.0, vocab=64)
        self.calls: list[tuple[int, int]] = []  # decode steps' input shapes
        self.prefills: list[tuple[int, int]] = []  # prefills' (cache-less passes) input shapes

    def forward(self, input_ids, attention_mask, position_ids, cache=None, *, logits="last",
                hidden_layer=None) -> ForwardResult:  # noqa: ANN001, ARG002
        past = 0 if cache is None else cache
        assert attention_mask.shape == (input_ids.shape[0], past + input_ids.shape[1])
        expected = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0)[:, -input_ids.shape[1]:]
        np.testing.assert_array_equal(position_ids, expected)
        (self.prefills if cache is None else self.calls).append(input_ids.shape)
        return ForwardResult(self.table[input_ids[:, -1]].copy(), None, past + input_ids.shape[1])

    def select_rows(self, cache, rows):  # noqa: ANN001, ANN201, ARG002
        return cache  # the cache is its length

    def join_rows(self, parts, length):  # noqa: ANN001, ANN201, ARG002
        return length

    def write_rows(self, cache, slots, source, rows):  # noqa: ANN001, ANN201, ARG002
        return cache

    def release(self, cache) -> None:  # noqa: ANN001
        pass


def run_decoder(backend, texts: list[str], p: GenerationParams, batch: int, seed: int = 5):
    """The scheduler with at most `batch` rows in flight."""
    scheduler = Scheduler(backend, max_rows=batch)
    prompts = [Prompt(t) for t in texts]
    seqs = plan_sequences(prompts, backend.tokenizer.encode_batch(texts), p, 1024)
    for seq in seqs:
        scheduler.submit(RowRequest(seq, p, seed))
    scheduler.run_until_done()
    return seqs


TEXTS = ["HELLO", "A", "THE QUICK BROWN FOX", "ZZ", "ONCE UPON"]


def test_sampling_does_not_depend_on_batch_composition() -> None:
    backend = BigramBackend()
    p = GenerationParams(do_sample=True, top_k=20, max_new_tokens=12, num_return_sequences=2,
                         eos_token_ids=(63,), pad_token_id=63)
    alone = run_decoder(backend, TEXTS, p, batch=1)
    together = run_decoder(backend, TEXTS, p, batch=5)
    pairs = run_decoder(backend, TEXTS, p, batch=2)
    assert [s.token_ids for s in alone] == [s.token_ids for s in together]
    assert [s.token_ids for s in alone] == [s.token_ids for s in pairs]
    assert len({tuple(s.token_ids) for s in alone}) > 5  # the two samples per prompt differ
    again = run_decoder(backend, TEXTS, p, batch=5)
    assert [s.token_ids for s in again] == [s.token_ids for s in together]
    other_seed = run_decoder(backend, TEXTS, p, batch=5, seed=6)
    assert [s.token_ids for s in other_seed] != [s.token_ids for s in together]


def test_greedy_loop_matches_a_hand_rolled_bigram_walk() -> None:
    backend = BigramBackend()
    p = GenerationParams(max_new_tokens=9, eos_token_ids=(63,), pad_token_id=63)
    seqs = run_decoder(backend, TEXTS, p, batch=5)
    for text, seq in zip(TEXTS, seqs, strict=True):
        token, walk = backend.tokenizer.encode(text)[-1], []
        while len(walk) < 9:
            token = int(backend.table[token].argmax())
            walk.append(token)
            if token == 63:
                break
        assert seq.token_ids == walk
        assert seq.finish_reason == ("stop" if walk[-1] == 63 else "length")
    # whole prompts prefilled in groups of similar length (19, 9 and 5 tokens, then 2 and 1:
    # none padded by more than PREFILL_SLACK), each row's first token chosen from that pass;
    # then one call per step over the rows still running (finished rows leave the batch)
    assert backend.prefills == [(3, 19), (2, 2)]
    running = [sum(len(s.token_ids) > step + 1 for s in seqs) for step in range(len(backend.calls))]
    assert backend.calls == [(rows, 1) for rows in running]
    assert len(backend.calls) == max(len(s.token_ids) for s in seqs) - 1
