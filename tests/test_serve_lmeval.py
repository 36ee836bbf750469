"""lm-evaluation-harness against a real `gpt2cli serve`: its `local-completions` model scores
loglikelihood requests over /v1/completions (token-id prompts, `echo`, `logprobs` 1, one generated
token that it drops), and every (logprob, is_greedy) equals `gpt2cli score --pairs` on the same
pairs. lm-eval's own code builds the requests and reads the answers; nothing is mocked.

Skipped when lm_eval (`pip install "lm_eval[api]"`) is not installed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clirun import run_cli
from tests.models import MEMORISED_PARAGRAPH
from tests.serverrun import RunningServer, running_server

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed")
pytest.importorskip("aiohttp", reason="lm_eval[api] is not installed")

CUT = MEMORISED_PARAGRAPH.index(" He polished")
END = MEMORISED_PARAGRAPH.index(" Nobody")
# (context, continuation): greedy and not, an empty context (scored after <|endoftext|>), a
# context's trailing space moved to the continuation, a split inside a word, non-ASCII text.
PAIRS = [
    (MEMORISED_PARAGRAPH[:CUT], MEMORISED_PARAGRAPH[CUT:END]),
    (MEMORISED_PARAGRAPH[:CUT], " He sang a song about the sea."),
    ("", MEMORISED_PARAGRAPH[:40]),
    ("The lighthouse keeper ", "climbed the spiral stairs"),
    ("The lighthouse keep", "er climbed"),
    ("Le café est", " très chaud — 熱い ☕"),
    (MEMORISED_PARAGRAPH, " The"),
]


@pytest.fixture(scope="module")
def server(memorised_model_dir: Path) -> Iterator[RunningServer]:
    """`gpt2cli serve` on the memorised model (torch), on a free loopback port."""
    with running_server(memorised_model_dir, "--backend", "torch", "--slots", "4") as running:
        yield running


@pytest.fixture(scope="module")
def cli_scores(memorised_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """`gpt2cli score --pairs` on PAIRS: one record per pair."""
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text(
        "".join(json.dumps({"context": c, "continuation": x}) + "\n" for c, x in PAIRS),
        encoding="utf-8",
    )
    result = run_cli(
        "score", "-m", str(memorised_model_dir), "--backend", "torch", "--pairs",
        "-f", str(path), "--format", "jsonl",
    )  # fmt: skip
    assert result.returncode == 0, result.err
    records = [json.loads(line) for line in result.out.splitlines()]
    assert len(records) == len(PAIRS) + 1  # and the total
    return records[:-1]


def _local_completions(server: RunningServer, model_dir: Path, **options: object) -> object:
    """lm-eval's `local-completions` model on the server, with the model directory's own
    tokenizer files (no Hub)."""
    from lm_eval.api.registry import get_model

    return get_model("local-completions")(
        base_url=f"{server.url}/v1/completions", model="gpt2",
        tokenizer_backend="huggingface", tokenizer=str(model_dir),
        max_length=1024, max_retries=1, timeout=120, **options,
    )  # fmt: skip


def _instances(pairs: list[tuple[str, str]]) -> list[object]:
    from lm_eval.api.instance import Instance

    return [
        Instance("loglikelihood", {}, (context, continuation), index)
        for index, (context, continuation) in enumerate(pairs)
    ]


@pytest.mark.parametrize(
    "options",
    [{}, {"batch_size": 3}, {"num_concurrent": 3}],
    ids=["one-by-one", "batched-prompts", "concurrent"],
)
def test_lm_eval_loglikelihood_equals_score_pairs(
    server: RunningServer, memorised_model_dir: Path, cli_scores: list[dict],
    options: dict[str, int],
) -> None:  # fmt: skip
    lm = _local_completions(server, memorised_model_dir, **options)
    results = lm.loglikelihood(_instances(PAIRS), disable_tqdm=True)
    assert len(results) == len(PAIRS)
    for (context, continuation), (logprob, is_greedy), record in zip(
        PAIRS, results, cli_scores, strict=True
    ):
        where = f"{context[-20:]!r} + {continuation!r}"
        assert logprob == pytest.approx(record["logprob"], abs=1e-5), where
        assert is_greedy is record["is_greedy"], where
    # the memorised continuation is greedy, the made-up one is not: the check can tell
    assert [greedy for _, greedy in results[:2]] == [True, False]
    import httpx

    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
