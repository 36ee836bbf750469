"""The continuous-batching scheduler: rows that join and leave between steps decode exactly as
they do alone, on both backends; seeded sampling as before the scheduler; cancellation of one
row; rows submitted from other threads; the row and token budgets."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpt2cli.decoding import GeneratedSequence, GenerationParams, Prompt, plan_sequences
from gpt2cli.loader import load_backend
from gpt2cli.scheduler import (
    FINISH_CANCELLED,
    PREFILL_SLACK,
    RowRequest,
    Scheduler,
    generate,
)
from tests.models import MEMORISED_PARAGRAPH

PROMPTS = [
    "Hello, I'm a language model,",
    "The",
    "Once upon a time, far far away, there lived a",
    "Long time ago",
]
# Sampled with the fixed-batch loop that the scheduler replaced (gpt2cli before issue 11) on
# tiny_model_dir, PROMPTS, batch size 3: the same seed must give the same tokens.
RECORDED = {
    "topk": (
        {"do_sample": True, "top_k": 20, "max_new_tokens": 12, "num_return_sequences": 2,
         "seed": 1234},
        [[47848, 21177, 44737, 13919, 13547, 4732, 9375, 14103, 41921, 16129, 18876, 32446],
         [22238, 46436, 31625, 13813, 40544, 44518, 33242, 14103, 47489, 47489, 2546, 47214],
         [10328, 12580, 4752, 32141, 36314, 37153, 28292, 5205, 23930, 2340, 13547, 13547],
         [10328, 44560, 34197, 13145, 2693, 20790, 24695, 24695, 3951, 30538, 23111, 2340],
         [28312, 28312, 47947, 40454, 16865, 3065, 1999, 47086, 1999, 47863, 13974, 31554],
         [17615, 28435, 13317, 4644, 49319, 15579, 292, 12377, 21146, 46715, 22093, 43950],
         [33937, 34365, 11483, 31149, 31149, 3356, 45064, 45064, 20569, 20569, 20942, 20942],
         [23451, 10844, 25018, 17259, 9113, 9113, 7119, 8668, 21010, 26394, 27452, 48549]],
    ),
    "top_p, penalties, min_new_tokens": (
        {"do_sample": True, "top_p": 0.9, "temperature": 0.8, "repetition_penalty": 1.3,
         "no_repeat_ngram_size": 2, "max_new_tokens": 10, "seed": 7, "min_new_tokens": 3},
        [[32383, 47517, 42225, 10302, 9474, 43364, 23, 44328, 42809, 19808],
         [38315, 6855, 8328, 8328, 24641, 25927, 49312, 12188, 16869, 22055],
         [12864, 19988, 43621, 37407, 12532, 17405, 5583, 22194, 5129, 43033],
         [48743, 46745, 11096, 34278, 24146, 37933, 48394, 27492, 45835, 47430]],
    ),
}


@pytest.fixture(scope="module", params=["torch", "onnx"])
def tiny(request, tiny_model_dir: Path, tiny_onnx_dir: Path):  # noqa: ANN001, ANN201
    directory = tiny_model_dir if request.param == "torch" else tiny_onnx_dir
    return load_backend(str(directory), backend=request.param)


@pytest.fixture(scope="module", params=["torch", "onnx"])
def memorised(request, memorised_model_dir: Path, memorised_onnx_dir: Path):  # noqa: ANN001, ANN201
    directory = memorised_model_dir if request.param == "torch" else memorised_onnx_dir
    return load_backend(str(directory), backend=request.param)


def params_for(backend, **values: Any) -> GenerationParams:  # noqa: ANN001
    return GenerationParams.resolve(backend.info.generation_defaults, values)


def planned(backend, rows: list[tuple[list[int], GenerationParams]], first: int = 0) -> list:  # noqa: ANN001
    """One sequence per (prompt ids, params) row, numbered in order from `first`."""
    out: list[GeneratedSequence] = []
    for index, (ids, params) in enumerate(rows, first):
        prompt = Prompt(f"row {index}", f"row {index}")
        out += plan_sequences([prompt], [ids], params, backend.info.n_positions, index)
    return out


def run(backend, rows, max_rows: int, seed: int = 0, first: int = 0, **budget: Any) -> list:  # noqa: ANN001
    scheduler = Scheduler(backend, max_rows=max_rows, **budget)
    sequences = planned(backend, rows, first)
    for seq, (_, params) in zip(sequences, rows, strict=True):
        scheduler.submit(RowRequest(seq, params, seed))
    scheduler.run_until_done()
    return sequences


def alone(backend, rows, seed: int = 0) -> list[list[int]]:  # noqa: ANN001
    """Each row on its own (numbered as in the batch: its random stream is the same)."""
    return [run(backend, [row], 1, seed, index)[0].token_ids for index, row in enumerate(rows)]


def mixed_rows(backend, texts: list[str], budgets: list[int], **values: Any) -> list:  # noqa: ANN001
    ids = backend.tokenizer.encode_batch(texts)
    return [
        (i, params_for(backend, max_new_tokens=b, **values))
        for i, b in zip(ids, budgets, strict=True)
    ]


# --- greedy: continuous batching equals batch 1 ----------------------------------------------


def test_memorised_rows_joining_at_different_steps_decode_as_alone(memorised) -> None:  # noqa: ANN001
    ids = memorised.tokenizer.encode(MEMORISED_PARAGRAPH)
    # prompts of 1 to 30 tokens with budgets of 3 to 40: rows retire and new ones join all along
    cuts = [4, 1, 30, 9, 2, 17, 12, 6, 25]
    budgets = [40, 7, 3, 25, 12, 5, 33, 18, 9]
    rows = [(ids[:cut], params_for(memorised, do_sample=False, max_new_tokens=budget))
            for cut, budget in zip(cuts, budgets, strict=True)]
    expected = alone(memorised, rows)
    for cut, tokens in zip(cuts, expected, strict=True):  # the model does recite its paragraph
        assert tokens[:3] == (ids + [50256])[cut : cut + 3] or cut < 4
    for max_rows in (2, 3, 8):
        assert [s.token_ids for s in run(memorised, rows, max_rows)] == expected


def test_tiny_greedy_mixed_lengths_and_budgets_as_alone(tiny) -> None:  # noqa: ANN001
    texts = PROMPTS * 2 + ["A", "x " * 120]
    budgets = [20, 3, 11, 30, 1, 17, 8, 2, 25, 6]
    rows = mixed_rows(tiny, texts, budgets, do_sample=False)
    expected = alone(tiny, rows)
    assert [len(t) for t in expected] == budgets  # the tiny model never ends early
    for max_rows in (2, 4):
        assert [s.token_ids for s in run(tiny, rows, max_rows)] == expected


def test_stop_strings_and_processors_per_row(memorised) -> None:  # noqa: ANN001
    ids = memorised.tokenizer.encode(MEMORISED_PARAGRAPH)
    rows = [
        (ids[:4], params_for(memorised, do_sample=False, max_new_tokens=40, stop=(".",))),
        (ids[:2], params_for(memorised, do_sample=False, max_new_tokens=30,
                             repetition_penalty=1.5, no_repeat_ngram_size=3)),
        (ids[:20], params_for(memorised, do_sample=False, max_new_tokens=30, stop=(" ships",))),
        (ids[:7], params_for(memorised, do_sample=False, max_new_tokens=9, min_new_tokens=9)),
    ]
    expected = run(memorised, rows[:1], 1) + run(memorised, rows[1:2], 1)
    expected += run(memorised, rows[2:3], 1) + run(memorised, rows[3:], 1)
    got = run(memorised, rows, 2)
    assert [s.token_ids for s in got] == [s.token_ids for s in expected]
    assert [s.text for s in got] == [s.text for s in expected]
    assert got[0].finish_reason == "stop" and got[0].stop_string == "."
    assert got[0].text == " the spiral stairs every evening at dusk"
    assert got[2].stop_string == " ships" and got[2].text.endswith(" watched the")


def test_equals_the_fixed_batch_loop_it_replaced(memorised) -> None:  # noqa: ANN001
    from bench.fixed_batch import generate_fixed

    texts = [MEMORISED_PARAGRAPH[:n] for n in (20, 3, 60, 41, 9)]
    p = params_for(memorised, do_sample=False, max_new_tokens=24)
    old = [s.token_ids for s in generate_fixed(memorised, texts, p, batch_size=2)]
    assert [s.token_ids for s in generate(memorised, texts, p, batch_size=3)] == old


# --- sampling --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_seeded_sampling_as_before_the_scheduler(tiny, case: str) -> None:  # noqa: ANN001
    values, expected = RECORDED[case]
    p = params_for(tiny, **values)
    for batch_size in (1, 3, 8):
        assert [s.token_ids for s in generate(tiny, PROMPTS, p, batch_size)] == expected


def test_sampling_with_mixed_budgets_does_not_depend_on_neighbours(tiny) -> None:  # noqa: ANN001
    rows = mixed_rows(tiny, PROMPTS + ["Z"], [9, 2, 14, 5, 7], do_sample=True, top_k=40)
    expected = alone(tiny, rows, seed=99)
    assert [s.token_ids for s in run(tiny, rows, 2, seed=99)] == expected
    assert [s.token_ids for s in run(tiny, rows, 2, seed=98)] != expected


# --- cancellation, threads, budgets ----------------------------------------------------------


def test_cancelling_one_row_leaves_the_others_unchanged(memorised) -> None:  # noqa: ANN001
    ids = memorised.tokenizer.encode(MEMORISED_PARAGRAPH)
    rows = [(ids[:cut], params_for(memorised, do_sample=False, max_new_tokens=20))
            for cut in (3, 8, 5, 12)]
    expected = alone(memorised, rows)
    scheduler = Scheduler(memorised, max_rows=3)
    sequences = planned(memorised, rows)
    handles = [
        scheduler.submit(RowRequest(s, p)) for s, (_, p) in zip(sequences, rows, strict=True)
    ]
    for _ in range(5):
        scheduler.step()
    handles[1].cancel()  # running
    handles[3].cancel()  # still waiting
    scheduler.run_until_done()
    assert all(h.finished for h in handles)
    assert [s.finish_reason for s in sequences] == ["length", FINISH_CANCELLED, "length",
                                                   FINISH_CANCELLED]
    assert sequences[1].token_ids == expected[1][:6]  # the prefill's token, then one a step
    assert sequences[3].token_ids == []
    assert [sequences[0].token_ids, sequences[2].token_ids] == [expected[0], expected[2]]


def test_rows_submitted_from_other_threads(memorised) -> None:  # noqa: ANN001
    """One thread owns the scheduler (serve); others submit, stream events and cancel."""
    ids = memorised.tokenizer.encode(MEMORISED_PARAGRAPH)
    rows = [(ids[:cut], params_for(memorised, do_sample=False, max_new_tokens=15, stop=("keeper",)))
            for cut in (1, 4, 9, 14, 20, 6)]
    expected = run(memorised, rows, 1)
    scheduler = Scheduler(memorised, max_rows=3)
    stop = threading.Event()
    owner = threading.Thread(target=scheduler.serve, args=(stop,), daemon=True)
    owner.start()
    results: dict[int, tuple[list[int], str, str | None]] = {}

    def client(index: int) -> None:
        (seq,) = planned(memorised, [rows[index]])
        handle = scheduler.submit(RowRequest(seq, rows[index][1], events=True))
        tokens, text, reason = [], "", None
        for event in handle.events(timeout=60):
            tokens.append(event.token)
            text += event.text
            reason = event.finish_reason
        assert handle.wait(0) and handle.sequence is seq
        results[index] = (tokens, text, reason)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(len(rows))]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    stop.set()
    owner.join(10)
    assert not owner.is_alive()
    for index, seq in enumerate(expected):
        assert results[index] == (seq.token_ids, seq.text, seq.finish_reason)


def test_a_row_cancelled_from_another_thread_while_streaming(memorised) -> None:  # noqa: ANN001
    ids = memorised.tokenizer.encode(MEMORISED_PARAGRAPH)
    p = params_for(memorised, do_sample=False, max_new_tokens=40)
    scheduler = Scheduler(memorised, max_rows=2)
    stop = threading.Event()
    owner = threading.Thread(target=scheduler.serve, args=(stop,), daemon=True)
    owner.start()
    (keep, cut) = planned(memorised, [(ids[:3], p), (ids[:5], p)])
    kept = scheduler.submit(RowRequest(keep, p))
    handle = scheduler.submit(RowRequest(cut, p, events=True))
    events = []
    for event in handle.events(timeout=60):
        events.append(event)
        if len(events) == 3:
            handle.cancel()
    assert kept.wait(60)
    stop.set()
    owner.join(10)
    assert events[-1].finish_reason == FINISH_CANCELLED and events[-1].token is None
    assert 3 <= len(cut.token_ids) < 40
    assert keep.token_ids == alone(memorised, [(ids[:3], p)])[0]


def test_budgets_bound_rows_and_tokens_in_flight(tiny) -> None:  # noqa: ANN001
    rows = mixed_rows(tiny, PROMPTS * 3, [5, 9, 3, 7] * 3, do_sample=False)
    expected = alone(tiny, rows)
    widths: list[int] = []
    forward = tiny.forward

    def counting(input_ids: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        if input_ids.shape[1] == 1:
            widths.append(input_ids.shape[0])
        return forward(input_ids, *args, **kwargs)

    tiny.forward = counting
    try:
        assert [s.token_ids for s in run(tiny, rows, 4)] == expected
        assert max(widths) == 4
        # a finished row's slot is refilled at once: steps = the busiest slot's tokens, not the
        # sum over fixed batches of their longest rows
        assert len(widths) < sum(max(b for b in [5, 9, 3, 7]) for _ in range(3))
        widths.clear()
        need = [len(ids) + p.max_new_tokens for ids, p in rows]
        limit = max(need) * 2
        assert [s.token_ids for s in run(tiny, rows, 8, max_tokens=limit)] == expected
        assert max(widths) <= 2 < 8
    finally:
        del tiny.forward


# --- in-place refills: a joining row takes an ended row's slot without copying the others ------


class CountingBackend:
    """The backend, counting whole-cache joins and in-place row writes."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.name, self.info, self.tokenizer = backend.name, backend.info, backend.tokenizer
        self.joins = self.writes = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.backend.forward(*args, **kwargs)

    def join_rows(self, *args: Any) -> Any:
        self.joins += 1
        return self.backend.join_rows(*args)

    def write_rows(self, *args: Any) -> Any:
        self.writes += 1
        return self.backend.write_rows(*args)

    def release(self, cache: Any) -> None:
        self.backend.release(cache)


def test_rows_refilled_in_place_decode_as_alone(memorised) -> None:  # noqa: ANN001
    ids = memorised.tokenizer.encode(MEMORISED_PARAGRAPH)
    # a long first row keeps the cache long; short rows then refill the slots that end
    cuts = [40, 3, 5, 2, 8, 1, 6, 4, 7, 2, 9, 3]
    budgets = [45, 4, 6, 3, 9, 5, 2, 7, 4, 6, 3, 5]
    rows = [(ids[:cut], params_for(memorised, do_sample=False, max_new_tokens=budget))
            for cut, budget in zip(cuts, budgets, strict=True)]
    expected = alone(memorised, rows)
    counting = CountingBackend(memorised)
    assert [s.token_ids for s in run(counting, rows, 3)] == expected
    assert counting.writes >= 5  # most joins were refills in place
    assert counting.joins < counting.writes


def test_write_rows_equals_a_join(tiny) -> None:  # noqa: ANN001
    """A slot written in place holds what a join of the same rows would hold."""
    texts = ["Hello there, how are you today?", "The", "Once upon a time"]
    ids = tiny.tokenizer.encode_batch(texts)
    width = max(map(len, ids))

    def prefill(rows: list[list[int]], length: int) -> Any:
        batch = np.zeros((len(rows), length), dtype=np.int64)
        mask = np.zeros_like(batch)
        for i, row in enumerate(rows):
            batch[i, length - len(row) :] = row
            mask[i, length - len(row) :] = 1
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        return tiny.forward(batch, mask, positions, None, logits="none").cache

    def as_arrays(cache: Any) -> list[list[np.ndarray]]:
        """Per key/value tensor, each row's positions in use."""
        if tiny.name == "torch":
            return [list(t.numpy()) for layer in cache.layers for t in (layer.keys, layer.values)]
        # an ONNX cache appended to in place has room beyond them, and may hold rows
        # left-aligned (a join's) or right-aligned (a prompt's)
        return [
            [v.numpy()[row, :, slice(*cache.span(row, cache.length))] for row in range(3)]
            for v in cache.values
        ]

    batch = prefill(ids, width)
    short = prefill([ids[1]], len(ids[1]))
    expected = tiny.join_rows(
        [(prefill(ids, width), np.array([0])), (short, np.array([0])),
         (prefill(ids, width), np.array([2]))],
        width,
    )
    for target in (batch, expected):  # into a prompt's cache, and into a joined one
        written = tiny.write_rows(target, np.array([1]), short, np.array([0]))
        for got, want in zip(as_arrays(written), as_arrays(expected), strict=True):
            for got_row, want_row in zip(got, want, strict=True):
                np.testing.assert_array_equal(got_row, want_row)
        cleared = tiny.write_rows(written, np.array([0]), None, np.array([0]))
        assert all(not a[0].any() for a in as_arrays(cleared))


def test_joining_rows_prefill_in_groups_of_similar_length(memorised) -> None:  # noqa: ANN001
    """Rows that join together are prefilled in groups of similar length (no row padded by more
    than PREFILL_SLACK positions), whole prompts; they decode as alone."""
    ids = memorised.tokenizer.encode(MEMORISED_PARAGRAPH)
    cuts = [2, 40, 5, 38, 1, 20, 39, 6]
    rows = [(ids[:cut], params_for(memorised, do_sample=False, max_new_tokens=4)) for cut in cuts]
    expected = alone(memorised, rows)
    prefills: list[list[int]] = []  # each prefill's rows' real tokens
    forward = memorised.forward

    def counting(input_ids: np.ndarray, mask: np.ndarray, positions: Any, cache: Any,
                 **kwargs: Any) -> Any:
        if cache is None:  # a prefill
            assert kwargs["logits"] == "last"  # the first tokens come from it
            prefills.append(mask.sum(axis=1).tolist())
        return forward(input_ids, mask, positions, cache, **kwargs)

    memorised.forward = counting
    try:
        assert [s.token_ids for s in run(memorised, rows, 8)] == expected
    finally:
        del memorised.forward
    assert sorted(n for group in prefills for n in group) == sorted(cuts)
    assert all(max(group) - min(group) <= PREFILL_SLACK for group in prefills)
    # longest first: 40, 39, 38 (20 is too short for them); 20, 6, 5; 2, 1
    assert sorted(map(sorted, prefills)) == [[1, 2], [5, 6, 20], [38, 39, 40]]


def test_first_tokens_come_from_the_prefill(memorised) -> None:  # noqa: ANN001
    """A row's first token is chosen from its prefill's logits: rows of one new token run no
    decode step at all, rows of more run one step fewer than tokens, and both give what the
    row gives alone."""
    ids = memorised.tokenizer.encode(MEMORISED_PARAGRAPH)
    forward = memorised.forward
    steps: list[int] = []  # rows of each decode step (a forward on a cache)

    def counting(input_ids: np.ndarray, mask: np.ndarray, positions: Any, cache: Any,
                 **kwargs: Any) -> Any:
        if cache is not None:
            steps.append(input_ids.shape[0])
        return forward(input_ids, mask, positions, cache, **kwargs)

    for budget in (1, 4):
        rows = [(ids[:cut], params_for(memorised, do_sample=False, max_new_tokens=budget))
                for cut in (3, 9, 4)]
        expected = alone(memorised, rows)
        steps.clear()
        memorised.forward = counting
        try:
            got = [s.token_ids for s in run(memorised, rows, 3)]
        finally:
            del memorised.forward
        assert got == expected
        assert steps == [3] * (budget - 1)


def test_first_tokens_are_passed_on_before_the_step_ends(memorised) -> None:  # noqa: ANN001
    """on_events runs after each prefill group, when that group's rows already hold their
    first token's event and later groups' rows do not yet."""
    ids = memorised.tokenizer.encode(MEMORISED_PARAGRAPH)
    params = params_for(memorised, do_sample=False, max_new_tokens=3)
    cuts = (40, 39, 3, 2)  # two prefill groups: 40 and 39, then 3 and 2
    seen: list[list[int]] = []
    handles: list[Any] = []

    def on_events() -> None:
        got = []
        for index, handle in enumerate(handles):
            try:
                event = handle._events.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty: nothing yet
                continue
            assert event.token == handle.sequence.token_ids[0]
            got.append(index)
        seen.append(got)

    scheduler = Scheduler(memorised, max_rows=4, on_events=on_events)
    sequences = planned(memorised, [(ids[:cut], params) for cut in cuts])
    handles += [scheduler.submit(RowRequest(s, params, events=True)) for s in sequences]
    scheduler.step()
    assert seen == [[0, 1], [2, 3]]
    assert all(len(s.token_ids) == 2 for s in sequences)  # and the step's own token


def test_released_cache_memory_backs_the_next_join(tiny_onnx_dir: Path) -> None:
    """The ONNX backend refills a released cache's memory instead of asking for fresh pages:
    the next join writes into it, zero padding and all, and holds what a fresh join holds."""
    backend = load_backend(str(tiny_onnx_dir), backend="onnx")
    fresh = load_backend(str(tiny_onnx_dir), backend="onnx")
    ids = backend.tokenizer.encode_batch(["Hello there, how are you today?", "The", "Once"])

    def joined(on: Any, length: int) -> Any:
        parts = []
        for row in ids:
            step = on.forward(np.array([row]), np.ones((1, len(row)), dtype=np.int64),
                              np.arange(len(row))[None, :], None, logits="none")
            parts.append((step.cache, np.array([0])))
        return on.join_rows(parts, length)

    first = joined(backend, 12)
    memory = [b.base if b.base is not None else b for b in first.buffers]
    for array in first.buffers:  # what a released cache leaves must not leak into the next
        array[...] = np.nan
    backend.release(first)
    assert first.buffers is None and backend.pool.spare == len(memory)
    second = joined(backend, 10)  # smaller: fits in the released arrays
    assert all(any(np.shares_memory(b, m) for m in memory) for b in second.buffers)
    expected = joined(fresh, 10)
    np.testing.assert_array_equal(second.lengths, expected.lengths)
    for got, want in zip(second.values, expected.values, strict=True):
        for row in range(len(ids)):
            in_use = slice(*second.span(row, 10))  # what the attention reads
            np.testing.assert_array_equal(got.numpy()[row, :, in_use], want.numpy()[row, :, in_use])
    assert backend.pool.spare == 0


def test_buffer_pool_keeps_the_largest_and_fits_the_smallest() -> None:
    from gpt2cli.backends.onnx import BufferPool

    pool = BufferPool(limit=2)
    arrays = [np.empty(n, dtype=np.float32) for n in (10, 40, 20)]
    pool.give([a.reshape(-1)[: a.size // 2].reshape(1, -1) for a in arrays])  # views: their bases
    assert pool.spare == 2  # 40 and 20 kept
    taken = pool.take((3, 5), np.float32)
    assert taken.shape == (3, 5) and np.shares_memory(taken, arrays[2])
    assert pool.take((2, 2), np.float16).dtype == np.float16  # no float16 spare: a new one
    assert pool.take((50,), np.float32).base is None  # none big enough: a new one
    assert pool.take((4,), np.float32).base is None  # 40 is more than twice as big: a new one
    assert np.shares_memory(pool.take((20,), np.float32), arrays[1])
    assert pool.spare == 0


def test_exports_without_row_lengths_keep_rows_right_aligned(
    memorised_onnx_dir: Path, tmp_path: Path
) -> None:
    """Exports made before the graph read each row up to its own length (no ROW_LENGTHS_KEY)
    keep right-aligned caches, and decode as before: as each row alone; exports with it hold
    joined rows left-aligned, and decode the same tokens."""
    import shutil

    import onnx

    from gpt2cli.backends.onnx_format import ROW_LENGTHS_KEY

    older = tmp_path / "older"
    shutil.copytree(memorised_onnx_dir, older)
    model = onnx.load(str(older / "model.onnx"), load_external_data=False)
    kept = [p for p in model.metadata_props if p.key != ROW_LENGTHS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(older / "model.onnx"))
    ids = load_backend(str(memorised_onnx_dir), backend="onnx").tokenizer.encode(
        MEMORISED_PARAGRAPH
    )
    for directory, left in ((older, False), (memorised_onnx_dir, True)):
        backend = load_backend(str(directory), backend="onnx")
        assert backend.left_aligned is left
        rows = [(ids[:cut], params_for(backend, do_sample=False, max_new_tokens=6))
                for cut in (30, 4, 17, 9)]
        scheduler = Scheduler(backend, max_rows=4)
        sequences = planned(backend, rows)
        for seq, (_, params) in zip(sequences, rows, strict=True):
            scheduler.submit(RowRequest(seq, params))
        for _ in range(3):
            scheduler.step()
        assert scheduler._cache.left is left
        scheduler.run_until_done()
        assert [s.token_ids for s in sequences] == alone(backend, rows)
