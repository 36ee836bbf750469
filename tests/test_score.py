"""`score`: the strided window, bits per byte, and likelihoods with transformers as the oracle."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from gpt2cli.cli import cli_name
from gpt2cli.errors import InputError
from gpt2cli.loader import load_backend
from gpt2cli.scoring import (
    LN2,
    ScoreOptions,
    Stats,
    Window,
    bits_per_byte,
    check_window,
    encode_pair,
    rank_bucket,
    score_pairs,
    score_rows,
    score_texts,
    window_plan,
)
from tests.clirun import assert_one_line_error, run_in_process
from tests.models import MEMORISED_PARAGRAPH

WIKITEXT = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wikitext-2-raw-test.txt"
)
EOT = 50256


# ---------------------------------------------------------------------------------------------
# The window plan, written against the Hugging Face guide's loop


def guide_windows(seq_len: int, max_length: int, stride: int) -> list[tuple[int, int, set[int]]]:
    """(begin, end, scored positions) of each pass of the HF perplexity guide's loop.

    The guide masks all but the last trg_len labels of each window with -100; the model then
    drops the first label by its internal shift, so position `begin` is never a target.
    """
    passes = []
    prev_end = 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        labels = list(range(begin, end))[-trg_len:] if trg_len else []
        passes.append((begin, end, {p for p in labels if p > begin}))
        prev_end = end
        if end == seq_len:
            break
    return passes


@pytest.mark.parametrize(
    ("n", "ctx", "stride"),
    [(1, 4, 2), (2, 4, 2), (5, 4, 2), (10, 4, 1), (10, 4, 4), (10, 4, 3), (1024, 1024, 512),
     (1025, 1024, 512), (3000, 1024, 512), (3001, 100, 37), (100, 7, 7), (64, 2, 1)],
)  # fmt: skip
def test_window_plan_matches_the_guide(n: int, ctx: int, stride: int) -> None:
    plan = window_plan(n, ctx, stride)
    expected = [(b, e, s) for b, e, s in guide_windows(n, ctx, stride) if s]
    assert [(w.begin, w.end) for w in plan] == [(b, e) for b, e, _ in expected]
    for window, (_, _, scored) in zip(plan, expected, strict=True):
        assert set(range(window.first, window.end)) == scored
        assert window.end - window.begin <= ctx
    scored_all = [p for w in plan for p in range(w.first, w.end)]
    assert len(scored_all) == len(set(scored_all))  # no token is scored twice
    if stride < ctx:
        assert scored_all == list(range(1, n))  # every token but the first, in order
        for w in plan[1:]:
            assert w.first - w.begin >= ctx - stride  # the guaranteed context


def test_window_plan_examples() -> None:
    assert window_plan(10, 4, 2) == [Window(0, 4, 1), Window(2, 6, 4), Window(4, 8, 6),
                                     Window(6, 10, 8)]  # fmt: skip
    # Disjoint windows: each window's first token has no context and is skipped, as in the guide.
    assert window_plan(9, 4, 4) == [Window(0, 4, 1), Window(4, 8, 5)]
    assert [w.n_scored for w in window_plan(1025, 1024, 512)] == [1023, 1]


@pytest.mark.parametrize(("ctx", "stride"), [(1, 1), (0, 1), (8, 9), (8, 0)])
def test_bad_windows_are_input_errors(ctx: int, stride: int) -> None:
    with pytest.raises(InputError):
        check_window(ctx, stride)


def test_ctx_longer_than_the_model_is_an_input_error() -> None:
    with pytest.raises(InputError, match="longer than the model's context"):
        check_window(2048, 512, n_positions=1024)


def test_window_errors_name_parameters_for_each_front_end() -> None:
    with pytest.raises(InputError) as refused:
        check_window(16, 32)
    assert refused.value.param == "stride"
    said = "must be between 1 and 16, got 32 (it cannot exceed {})"
    assert refused.value.render(cli_name) == "--stride: " + said.format("--ctx")
    assert refused.value.render(lambda p: f"params.{p}") == "params.stride: " + said.format(
        "params.ctx"
    )
    with pytest.raises(InputError) as refused:
        check_window(1, 1)
    assert refused.value.render(cli_name) == "--ctx: must be at least 2, got 1"


def test_a_refused_pair_is_named_and_keeps_its_parameters(torch_backend) -> None:  # noqa: ANN001
    options = ScoreOptions(ctx=4, stride=4)
    with pytest.raises(InputError) as refused:
        score_pairs(torch_backend, [("a", " b")] * 2 + [("a", " b b b b b b")], options)
    assert refused.value.render(cli_name) == (
        "pair 2: the continuation is 6 tokens, more than a window of 4 (raise --ctx)"
    )
    with pytest.raises(InputError) as refused:
        score_pairs(torch_backend, [("a", " b"), ("hel", "lo")], options, sources=["x:1", "x:2"])
    assert refused.value.render(cli_name).startswith("x:2: the continuation merges into")


# ---------------------------------------------------------------------------------------------
# Statistics: lm-eval's bits per byte, perplexity, bits per token and per character


def test_bits_per_byte_is_lm_evals_formula() -> None:
    # lm-evaluation-harness: bits_per_byte = -sum(loglikelihoods) / sum(bytes) / ln 2
    logliks = [-12.5, -3.25, -40.0]
    n_bytes = [17, 3, 50]
    expected = -sum(logliks) / sum(n_bytes) / math.log(2)
    assert bits_per_byte(-sum(logliks), sum(n_bytes)) == pytest.approx(expected, rel=1e-15)


def test_stats_definitions() -> None:
    stats = Stats(tokens=4, bytes=10, chars=8, nll=6.0)
    assert stats.perplexity == pytest.approx(math.exp(1.5))
    assert stats.as_dict()["token_count"] == 4 and "tokens" not in stats.as_dict()
    assert stats.bits_per_token == pytest.approx(1.5 / LN2)
    assert stats.bits_per_byte == pytest.approx(0.6 / LN2)
    assert stats.bits_per_char == pytest.approx(0.75 / LN2)
    total = Stats()
    total.add(stats)
    total.add(Stats(tokens=1, bytes=1, chars=1, nll=1.0))
    assert (total.tokens, total.bytes, total.chars, total.nll) == (5, 11, 9, 7.0)
    assert Stats().perplexity is None and Stats().as_dict()["bits_per_byte"] is None


def test_score_rows_equals_log_softmax_rank_and_entropy() -> None:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((300, 997)) * 4).astype(np.float32)
    targets = rng.integers(0, 997, 300)
    targets[:5] = logits[:5].argmax(axis=1)
    scores = score_rows(logits, targets, details=True, greedy=True)
    x = logits.astype(np.float64)
    log_softmax = x - x.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    expected = log_softmax[np.arange(300), targets]
    np.testing.assert_allclose(scores.logprobs, expected, rtol=1e-6, atol=1e-6)
    true = logits[np.arange(300), targets]
    np.testing.assert_array_equal(scores.ranks, (logits > true[:, None]).sum(1) + 1)
    assert (scores.ranks[:5] == 1).all() and scores.greedy[:5].all()
    np.testing.assert_array_equal(scores.greedy, logits.argmax(1) == targets)
    entropy = -(np.exp(log_softmax) * log_softmax).sum(1)
    np.testing.assert_allclose(scores.entropies, entropy, rtol=1e-5)


def test_rank_buckets() -> None:
    assert [rank_bucket(r) for r in (1, 10, 11, 100, 101, 1000, 1001, 50257)] == [
        0, 0, 1, 1, 2, 2, 3, 3
    ]  # fmt: skip


class _CharTokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def test_encode_pair_moves_trailing_spaces_like_lm_eval() -> None:
    tokenizer = _CharTokenizer()
    assert encode_pair(tokenizer, "ab  ", "c", EOT) == ([97, 98], [32, 32, 99])
    assert encode_pair(tokenizer, "", "xy", EOT) == ([EOT], [120, 121])
    assert encode_pair(tokenizer, "   ", "x", EOT) == ([EOT], [32, 32, 32, 120])


# ---------------------------------------------------------------------------------------------
# Against transformers: the guide's strided recipe, written out


def hf_strided_nll(model, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:  # noqa: ANN001
    """The HF perplexity guide's loop over `ids`: total NLL (nats) and tokens it scored.

    Written as in the guide, except that each window's mean loss is weighted by the number of
    labels that survive the model's shift (the guide's `num_valid_tokens - batch_size` is one
    short for every window after the first, whose first label is not dropped).
    """
    import torch

    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
        counted = int((target_ids[:, 1:] != -100).sum())
        if counted:
            nll_sum += outputs.loss.double().item() * counted
            n_tokens += counted
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


def evaluation_text() -> str:
    """The start of WikiText-2's test split when the shared file is here, else made-up prose."""
    if WIKITEXT.is_file():
        text = WIKITEXT.read_text(encoding="utf-8")[:12000]
        return text[: text.rindex("\n") + 1]
    rng = random.Random(0)
    words = "the of and a in to was he is for it with as his on at by an that from".split()
    words += "river station album season church battle song league village ship".split()
    return " ".join(rng.choice(words) for _ in range(2500)) + "."



@pytest.mark.parametrize(
    ("ctx", "stride", "prefix"),
    [(1024, 512, False), (1024, 512, True), (256, 100, False), (128, 128, False)],
)
def test_perplexity_equals_the_guides_recipe(torch_backend, hf_model, ctx, stride, prefix) -> None:  # noqa: ANN001
    text = evaluation_text()
    ids = torch_backend.tokenizer.encode(text)
    assert len(ids) > 2000
    options = ScoreOptions(ctx=ctx, stride=stride, prefix_eos=prefix)
    (result,) = score_texts(torch_backend, [text], options)
    nll, n_tokens = hf_strided_nll(hf_model, ([EOT] if prefix else []) + ids, ctx, stride)
    assert result.stats.tokens == n_tokens
    assert result.stats.nll == pytest.approx(nll, rel=1e-5)
    assert result.stats.perplexity == pytest.approx(math.exp(nll / n_tokens), rel=1e-5)
    if prefix:
        assert n_tokens == len(ids)
        assert result.stats.bytes == len(text.encode("utf-8"))
        assert result.stats.chars == len(text)


@pytest.mark.parametrize("backend_name", ["torch", "onnx"])
def test_backends_project_only_the_last_positions(
    backend_name, tiny_model_dir, tiny_onnx_dir
) -> None:  # noqa: ANN001
    directory = tiny_model_dir if backend_name == "torch" else tiny_onnx_dir
    backend = load_backend(str(directory), backend=backend_name)
    ids = np.array([backend.tokenizer.encode("Only the tail of this window is projected.")] * 2)
    mask = np.ones_like(ids)
    mask[1, -3:] = 0  # right padding
    positions = np.repeat(np.arange(ids.shape[1])[None], 2, axis=0)
    every = backend.forward(ids, mask, positions, logits="all").logits
    tail = backend.forward(ids, mask, positions, logits=5).logits
    assert tail.shape == (2, 5, 50257)
    np.testing.assert_allclose(tail, every[:, -5:], rtol=1e-5, atol=1e-5)


def test_every_text_in_a_batch_scores_as_if_alone(torch_backend) -> None:  # noqa: ANN001
    texts = ["A short one.", "Another text, a little longer than the first one.", "x" * 300]
    options = ScoreOptions(ctx=64, stride=16)
    together = score_texts(torch_backend, texts, options)
    for text, result in zip(texts, together, strict=True):
        (alone,) = score_texts(torch_backend, [text], options)
        assert result.stats.nll == pytest.approx(alone.stats.nll, rel=1e-5)
        assert result.stats.tokens == alone.stats.tokens == len(result.ids)


def test_per_token_scores_equal_transformers_log_softmax(torch_backend, hf_model) -> None:  # noqa: ANN001
    import torch

    text = "Hello, I'm a language model, and these are my per-token scores."
    options = ScoreOptions(ctx=1024, stride=512, details=True)
    (result,) = score_texts(torch_backend, [text], options)
    ids = [EOT, *torch_backend.tokenizer.encode(text)]
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0, :-1].double()
    log_probs = torch.log_softmax(logits, -1)
    targets = torch.tensor(ids[1:])
    expected = log_probs[torch.arange(len(targets)), targets].numpy()
    np.testing.assert_allclose(result.tokens.logprobs, expected, rtol=1e-5, atol=1e-5)
    expected_rank = (logits > logits[torch.arange(len(targets)), targets][:, None]).sum(1) + 1
    np.testing.assert_array_equal(result.tokens.ranks, expected_rank.numpy())
    entropy = -(log_probs.exp() * log_probs).sum(-1).numpy()
    np.testing.assert_allclose(result.tokens.entropies, entropy, rtol=1e-4)
    np.testing.assert_array_equal(result.tokens.ids, ids[1:])
    np.testing.assert_array_equal(result.tokens.positions, np.arange(len(ids) - 1))


def test_conditional_logprob_equals_transformers(torch_backend, hf_model) -> None:  # noqa: ANN001
    import torch

    context, continuation = "The capital of France is", " Paris, of course."
    options = ScoreOptions(ctx=1024, stride=512, greedy=True)
    (result,) = score_pairs(torch_backend, [(context, continuation)], options)
    tokenizer = torch_backend.tokenizer
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    with torch.no_grad():
        logits = hf_model(torch.tensor([whole])).logits[0].double()
    log_probs = torch.log_softmax(logits, -1)
    n = len(context_ids)
    expected = sum(float(log_probs[i - 1, whole[i]]) for i in range(n, len(whole)))
    assert result.logprob == pytest.approx(expected, rel=1e-5)
    greedy = all(int(logits[i - 1].argmax()) == whole[i] for i in range(n, len(whole)))
    assert result.is_greedy is greedy
    assert result.context_tokens == n and result.text_tokens == len(whole) - n


def test_long_context_is_cut_on_the_left_and_said(torch_backend) -> None:  # noqa: ANN001
    options = ScoreOptions(ctx=16, stride=8, greedy=True)
    (result,) = score_pairs(torch_backend, [("word " * 40, "end")], options)
    assert result.context_truncated
    (short,) = score_pairs(torch_backend, [("word " * 3, "end")], options)
    assert not short.context_truncated
    with pytest.raises(InputError, match="continuation"):
        score_pairs(torch_backend, [("a", " b" * 40)], options)


# ---------------------------------------------------------------------------------------------
# The memorised paragraph


@pytest.fixture(scope="module")
def memorised_backend(memorised_model_dir):  # noqa: ANN001, ANN201
    return load_backend(str(memorised_model_dir), backend="torch")


def shuffled_paragraph() -> str:
    words = MEMORISED_PARAGRAPH.split(" ")
    random.Random(0).shuffle(words)
    return " ".join(words)


def test_memorised_paragraph_scores_near_perplexity_one(memorised_backend) -> None:  # noqa: ANN001
    # The model learnt the paragraph from position 0, without <|endoftext|> before it.
    options = ScoreOptions(ctx=1024, stride=512, prefix_eos=False)
    own, shuffled = score_texts(
        memorised_backend, [MEMORISED_PARAGRAPH, shuffled_paragraph()], options
    )
    assert own.stats.perplexity < 1.1
    assert shuffled.stats.perplexity > 20 * own.stats.perplexity
    assert own.stats.bits_per_byte < 0.05 < shuffled.stats.bits_per_byte


def test_memorised_continuation_is_greedy(memorised_backend) -> None:  # noqa: ANN001
    cut = MEMORISED_PARAGRAPH.index(" He polished")
    context, continuation = MEMORISED_PARAGRAPH[:cut], MEMORISED_PARAGRAPH[cut:]
    options = ScoreOptions(ctx=1024, stride=512, greedy=True)
    right, wrong = score_pairs(
        memorised_backend,
        [(context, continuation), (context, " He painted the boat red.")],
        options,
    )
    assert right.is_greedy and not wrong.is_greedy
    assert right.logprob > -1.0 > wrong.logprob


# ---------------------------------------------------------------------------------------------
# The onnx backend


def test_onnx_scores_agree_with_torch(onnx_backend, torch_backend) -> None:  # noqa: ANN001
    texts = ["A first text to score on both backends.", evaluation_text()[:3000]]
    options = ScoreOptions(ctx=256, stride=100, details=True)
    for on_onnx, on_torch in zip(
        score_texts(onnx_backend, texts, options),
        score_texts(torch_backend, texts, options),
        strict=True,
    ):
        assert on_onnx.stats.tokens == on_torch.stats.tokens
        assert on_onnx.stats.perplexity == pytest.approx(on_torch.stats.perplexity, rel=1e-4)
        np.testing.assert_allclose(on_onnx.tokens.logprobs, on_torch.tokens.logprobs, atol=1e-4)
    pair = [("The capital of France is", " Paris.")]
    (onnx_pair,) = score_pairs(onnx_backend, pair, ScoreOptions(ctx=1024, stride=512, greedy=True))
    (torch_pair,) = score_pairs(
        torch_backend, pair, ScoreOptions(ctx=1024, stride=512, greedy=True)
    )
    assert onnx_pair.logprob == pytest.approx(torch_pair.logprob, abs=1e-4)


def test_memorised_paragraph_on_onnx(memorised_onnx_dir) -> None:  # noqa: ANN001
    result = run_in_process("score", "-m", str(memorised_onnx_dir), "--no-prefix", "--jsonl",
                     MEMORISED_PARAGRAPH, shuffled_paragraph())  # fmt: skip
    assert result.returncode == 0, result.err
    own, shuffled, _ = (json.loads(line) for line in result.out.splitlines())
    assert own["backend"] == "onnx"
    assert own["perplexity"] < 1.1 and shuffled["perplexity"] > 20


# ---------------------------------------------------------------------------------------------
# The command


def test_cli_json_is_an_array_of_records_and_a_total(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    texts = tmp_path / "texts.txt"
    texts.write_text("First line of text.\n\nSecond line, a bit longer.\n", encoding="utf-8")
    result = run_in_process("score", "-m", str(tiny_model_dir), "-f", str(texts), "--lines",
                     "--format", "json", "--ctx", "8", "--stride", "3")  # fmt: skip
    assert result.returncode == 0, result.err
    first, second, total = json.loads(result.out)
    for record in (first, second, total):
        assert (record["ctx"], record["stride"], record["first_token"]) == (
            8, 3, "after <|endoftext|>"
        )
        assert "tokens" not in record
    assert [first["source"], second["source"]] == [f"{texts}:1", f"{texts}:3"]
    assert [first["index"], second["index"], total["index"]] == [0, 1, None]
    assert first["bytes"] == len(b"First line of text.")
    assert first["token_count"] == first["text_tokens"]
    assert total["source"] == "total" and total["texts"] == 2
    assert total["token_count"] == first["token_count"] + second["token_count"]
    assert total["nll"] == pytest.approx(first["nll"] + second["nll"])
    assert total["perplexity"] == pytest.approx(math.exp(total["nll"] / total["token_count"]))
    assert total["bits_per_byte"] == pytest.approx(total["nll"] / total["bytes"] / math.log(2))

    # One text: still an array, of one record and no total.
    (only,) = json.loads(run_in_process("score", "-m", str(tiny_model_dir), "--json", "One.").out)
    assert only["index"] == 0 and only["source"] == "argument 1"
    jsonl = run_in_process("score", "-m", str(tiny_model_dir), "--format", "jsonl", "One.", "Two.")
    assert [json.loads(line)["source"] for line in jsonl.out.splitlines()] == [
        "argument 1", "argument 2", "total"
    ]  # fmt: skip


def test_cli_text_has_one_shape_for_one_text_and_many(tiny_model_dir) -> None:  # noqa: ANN001
    one = run_in_process("score", "-m", str(tiny_model_dir), "One text to score.")
    assert one.returncode == 0 and one.err == "", one.err
    (line,) = one.out.splitlines()
    perplexity, stderr, count, bpb, source = line.split("\t")
    assert float(perplexity) > 1 and stderr.startswith("±") and float(stderr[1:]) > 0
    assert int(count) == len(load_tokenizer_ids("One text to score.")) and float(bpb) > 0
    assert source == "argument 1"
    many = run_in_process("score", "-m", str(tiny_model_dir), "-p", "One text to score.", "-p",
                          "More")
    assert many.returncode == 0 and many.err == "", many.err
    rows = [row.split("\t") for row in many.out.splitlines()]
    assert [row[-1] for row in rows] == ["argument 1", "argument 2", "total"]
    assert all(len(row) == 5 for row in rows)
    assert rows[0][:4] == line.split("\t")[:4]  # the same figures as alone
    assert int(rows[2][2]) == int(rows[0][2]) + int(rows[1][2])


def test_perplexity_stderr_is_llama_perplexitys(torch_backend) -> None:  # noqa: ANN001
    text = evaluation_text()[:2000]
    options = ScoreOptions(ctx=128, stride=64, details=True)
    (result,) = score_texts(torch_backend, [text], options)
    nll = -result.tokens.logprobs
    n = len(nll)
    # perplexity.cpp: nll2/count - (nll/count)^2, sqrt(that / (count - 1)), times the perplexity
    mean = nll.sum() / n
    expected = math.exp(mean) * math.sqrt(((nll**2).sum() / n - mean * mean) / (n - 1))
    assert result.stats.perplexity_stderr == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(math.exp(mean) * nll.std(ddof=1) / math.sqrt(n), rel=1e-9)
    total = Stats()
    for part in score_texts(torch_backend, [text[:900], text[900:]], options):
        total.add(part.stats)
    assert total.nll2 > 0 and total.perplexity_stderr > 0
    assert Stats(tokens=1, nll=2.0, nll2=4.0).perplexity_stderr is None


def test_limit_caps_the_tokens_scored(torch_backend, tiny_model_dir) -> None:  # noqa: ANN001
    texts = ["one two three four five six seven eight", "nine ten eleven", "x"]
    full = score_texts(torch_backend, texts, ScoreOptions(ctx=1024, stride=512, details=True))
    limited = score_texts(torch_backend, texts, ScoreOptions(ctx=1024, stride=512, limit=10))
    assert [r.stats.tokens for r in full] == [8, 3, 1]
    assert [r.stats.tokens for r in limited] == [8, 2]
    assert limited[1].limited and not limited[0].limited
    assert limited[1].text_tokens == 3
    np.testing.assert_allclose(limited[1].tokens.logprobs, full[1].tokens.logprobs[:2])
    pairs = [("a", " b c"), ("a", " d e f"), ("a", " g")]
    scored = score_pairs(torch_backend, pairs, ScoreOptions(ctx=64, stride=64, limit=4))
    assert [len(r.ids) for r in scored] == [2]  # a pair is scored whole or not at all

    result = run_in_process("score", "-m", str(tiny_model_dir), "--limit", "10", *texts)
    assert result.returncode == 0, result.err
    rows = [row.split("\t") for row in result.out.splitlines()]
    assert [(row[2], row[-1]) for row in rows] == [
        ("8", "argument 1"), ("2", "argument 2"), ("10", "total")
    ]  # fmt: skip


def test_kl_of_a_model_against_itself_is_zero(tiny_model_dir) -> None:  # noqa: ANN001
    result = run_in_process("score", "-m", str(tiny_model_dir), "--kl-base", str(tiny_model_dir),
                     "--json", "A text to compare.", "And a second one.")  # fmt: skip
    assert result.returncode == 0, result.err
    *texts, total = json.loads(result.out)
    for record in (*texts, total):
        assert record["kl_divergence"] == pytest.approx(0, abs=1e-9)
        assert record["kl_divergence_max"] == pytest.approx(0, abs=1e-9)
        assert record["top1_agreement"] == 1.0
        assert record["base_perplexity"] == pytest.approx(record["perplexity"], rel=1e-6)
    assert total["kl_base"] == str(tiny_model_dir)
    text = run_in_process("score", "-m", str(tiny_model_dir), "--kl-base", str(tiny_model_dir),
                          "A b")
    perplexity, _, _, _, kl, kl_stderr, same_top, source = text.out.rstrip("\n").split("\t")
    assert float(kl) == 0 and same_top == "100.00%" and source == "argument 1"


def test_kl_of_int8_against_fp32_is_small_and_positive(tiny_onnx_int8_dir, tiny_model_dir) -> None:  # noqa: ANN001
    result = run_in_process("score", "-m", str(tiny_onnx_int8_dir), "--kl-base",
                            str(tiny_model_dir), "--ctx", "64", "--format", "jsonl",
                            evaluation_text()[:1500])  # fmt: skip
    assert result.returncode == 0, result.err
    (record,) = (json.loads(line) for line in result.out.splitlines())
    assert (record["backend"], record["kl_base_backend"]) == ("onnx", "torch")
    assert 0 < record["kl_divergence"] < 0.05
    assert record["kl_divergence"] <= record["kl_divergence_max"]
    assert 0 <= record["kl_divergence_median"] <= record["kl_divergence_p99"]
    assert record["kl_divergence_stderr"] > 0
    assert 0.8 <= record["top1_agreement"] <= 1


def test_kl_rows_match_the_definition() -> None:
    from gpt2cli.scoring import kl_divergence_rows

    rng = np.random.default_rng(1)
    base = (rng.standard_normal((200, 300)) * 3).astype(np.float32)
    model = base + rng.standard_normal((200, 300)).astype(np.float32) * 0.3
    targets = rng.integers(0, 300, 200)
    kl, same, base_logprobs = kl_divergence_rows(base, model, targets)

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    lb, lm = log_softmax(base), log_softmax(model)
    np.testing.assert_allclose(kl, (np.exp(lb) * (lb - lm)).sum(1), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(same, base.argmax(1) == model.argmax(1))
    np.testing.assert_allclose(base_logprobs, lb[np.arange(200), targets], atol=1e-5)
    assert (kl > 0).all()


def test_kl_base_with_another_vocabulary_is_refused(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["vocab_size"] = 50300
    (other / "config.json").write_text(json.dumps(config))
    result = run_in_process("score", "-m", str(tiny_model_dir), "--kl-base", str(other), "x")
    assert "--kl-base:" in assert_one_line_error(result, 2)


def test_cli_per_token_tsv_and_jsonl(tiny_model_dir) -> None:  # noqa: ANN001
    text = "Tab\there, and a newline\nthere."
    tsv = run_in_process("score", "-m", str(tiny_model_dir), "--per-token", text)
    assert tsv.returncode == 0, tsv.err
    rows = [line.split("\t") for line in tsv.out.splitlines()]
    assert rows[0] == ["index", "position", "id", "piece", "logprob", "rank", "entropy"]
    assert all(len(row) == 7 for row in rows)
    assert len(rows) - 1 == len(load_tokenizer_ids(text))
    assert "ctx 1024, stride 512" in tsv.err  # the summary goes to stderr

    for fmt in ("jsonl", "json"):
        out = run_in_process("score", "-m", str(tiny_model_dir), "--per-token", "--format", fmt,
                             text)
        assert out.returncode == 0, out.err
        (record,) = [json.loads(line) for line in out.out.splitlines()] if fmt == "jsonl" else (
            json.loads(out.out)
        )
        assert record["ids"] == load_tokenizer_ids(text)
        assert "".join(record["pieces"]) == text
        assert record["token_count"] == len(record["logprobs"]) == len(record["ranks"])
        for logprob, rank, entropy, row in zip(
            record["logprobs"], record["ranks"], record["entropies"], rows[1:], strict=True
        ):
            assert logprob == pytest.approx(float(row[4]), abs=1e-6)
            assert rank == int(row[5]) >= 1
            assert logprob <= 0 <= entropy


def load_tokenizer_ids(text: str) -> list[int]:
    from gpt2cli.tokenizer import GPT2Tokenizer

    return GPT2Tokenizer().encode(text)


def test_cli_pairs_and_context(memorised_model_dir, tmp_path) -> None:  # noqa: ANN001
    cut = MEMORISED_PARAGRAPH.index(" He polished")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps(
            {"context": MEMORISED_PARAGRAPH[:cut], "continuation": MEMORISED_PARAGRAPH[cut:]}
        )
        + "\n"
        + json.dumps({"context": MEMORISED_PARAGRAPH[:cut], "continuation": " He sang."})
        + "\n",
        encoding="utf-8",
    )
    result = run_in_process(
        "score", "-m", str(memorised_model_dir), "--pairs", "-f", str(pairs), "--jsonl"
    )
    assert result.returncode == 0, result.err
    right, wrong, total = (json.loads(line) for line in result.out.splitlines())
    assert right["is_greedy"] is True and wrong["is_greedy"] is False
    assert right["logprob"] > wrong["logprob"]
    assert right["ctx"] == 1024 and "stride" not in right
    # lm-eval's acc and LAMBADA perplexity (exp of minus the mean log-likelihood per pair)
    assert total["acc"] == 0.5 and total["acc_stderr"] == pytest.approx(0.5)
    assert total["logprob"] == pytest.approx(right["logprob"] + wrong["logprob"])
    assert total["pair_perplexity"] == pytest.approx(
        math.exp(-(right["logprob"] + wrong["logprob"]) / 2)
    )

    text = run_in_process("score", "-m", str(memorised_model_dir), "--pairs", "-f", str(pairs))
    rows = [row.split("\t") for row in text.out.splitlines()]
    assert [row[5] for row in rows] == ["1", "0", "0.5000"]  # ACC
    assert float(rows[2][6]) == pytest.approx(total["pair_perplexity"], rel=1e-4)
    assert rows[2][-1] == "total" and all(len(row) == 8 for row in rows)

    single = run_in_process("score", "-m", str(memorised_model_dir), "--context",
                     MEMORISED_PARAGRAPH[:cut], MEMORISED_PARAGRAPH[cut:])  # fmt: skip
    assert single.returncode == 0, single.err
    (line,) = single.out.splitlines()
    cells = line.split("\t")
    assert cells[5] == "1"
    assert float(cells[4]) == pytest.approx(right["logprob"], abs=1e-4)


def test_cli_show_marks_rank_buckets_without_colour(memorised_model_dir) -> None:  # noqa: ANN001
    result = run_in_process("score", "-m", str(memorised_model_dir), "--no-prefix", "--show",
                     MEMORISED_PARAGRAPH)  # fmt: skip
    assert result.returncode == 0, result.err
    assert "\x1b[" not in result.out  # not a terminal: no colour
    text, _, legend = result.out.partition("\n\n")
    assert text.startswith("The lighthouse{") or text.startswith("The lighthouse")
    assert text.replace("{1}", "").replace("{2}", "").replace("{3}", "").replace("{4}", "") == (
        MEMORISED_PARAGRAPH
    )
    assert "{1} top 10" in legend and "perplexity" in legend and "stride 512" in legend


def test_show_colours_by_bucket(torch_backend) -> None:  # noqa: ANN001
    import io

    from gpt2cli.commands.score import _BUCKET_STYLES, _Header, _Report, _ShowWriter

    options = ScoreOptions(ctx=1024, stride=512, details=True)
    results = score_texts(torch_backend, ["Colour me by rank, please."], options)
    out = io.StringIO()
    header = _Header(torch_backend, options, "float32", False)
    writer = _ShowWriter(out, _Report(header, torch_backend.tokenizer), color=True)
    writer.write(results, ["argument 1"])
    writer.close()
    drawn = out.getvalue()
    ranks = results[0].tokens.ranks
    for bucket in {rank_bucket(int(r)) for r in ranks}:
        assert f"\x1b[{_BUCKET_STYLES[bucket]}m" in drawn
    assert "top 1000" in drawn and "beyond" in drawn


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stride", "9", "--ctx", "8"], "--stride"),
        (["--ctx", "4096"], "longer than the model's context"),
        (["--json", "--jsonl"], "choose one"),
        (["--show", "--format", "jsonl"], "--show draws text"),
        (["--limit", "0"], "--limit"),
        (["--show", "--per-token"], "exclusive"),
        (["--pairs", "--context", "x"], "exclusive"),
    ],
)
def test_cli_usage_errors(tiny_model_dir, args, message) -> None:  # noqa: ANN001
    result = run_in_process("score", "-m", str(tiny_model_dir), *args, "some text")
    assert message in assert_one_line_error(result, 2)


def test_cli_bad_pairs_line(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"context": "a", "continuation": "b"}\nnot json\n', encoding="utf-8")
    result = run_in_process("score", "-m", str(tiny_model_dir), "--pairs", "-f", str(pairs))
    assert f"{pairs}:2: not JSON" in assert_one_line_error(result, 2)


def test_onnx_scoring_never_imports_torch(tiny_onnx_dir) -> None:  # noqa: ANN001
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from gpt2cli.cli import run\n"
        f"code = run(['score', '-m', {str(tiny_onnx_dir)!r}, '--per-token', 'No torch here.'])\n"
        "assert code == 0, code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("index\tposition\tid")


# ---------------------------------------------------------------------------------------------
# export-onnx's validation states the export's KL divergence from PyTorch


def test_export_validation_reports_kl_and_top1(tiny_model_dir, tiny_onnx_int8_dir, tiny_onnx_dir,
                                               capsys) -> None:  # noqa: ANN001
    from gpt2cli.exporting import validate

    exact = validate(tiny_model_dir, tiny_onnx_dir)
    assert exact["kl_divergence"] == pytest.approx(0, abs=1e-6)
    assert exact["top1_agreement"] == 1.0
    quantized = validate(tiny_model_dir, tiny_onnx_int8_dir, exact=False)
    assert 0 < quantized["kl_divergence"] <= quantized["kl_divergence_max"] < 0.05
    assert "KL divergence" in capsys.readouterr().err
