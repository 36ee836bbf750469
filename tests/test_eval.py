"""`gpt2cli eval`: lm-evaluation-harness is the oracle for lambada_openai and wikitext2 (its own
`hf` model and task configurations, run in-process on local files), its detokenizer for ours,
and plain transformers computations, written out here, for the tasks lm-eval does not ship
(ptb, 1bw, enwik8, text8, CBT)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.clirun import run_cli, run_in_process

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "eval"
SHARED_WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw-test.txt"
CTX = 32  # small windows, so the test documents span several
REL = 1e-6


def data(task: str, name: str | None = None) -> str:
    return f"{task}={DATA / (name or task + ('.jsonl' if task.startswith('lambada') else '.txt'))}"


def records(*args: str) -> list[dict[str, Any]]:
    result = run_in_process("eval", *args, "--format", "json")
    assert result.returncode == 0, result.err
    return json.loads(result.out)


# ---------------------------------------------------------------------------------------------
# The detokenizer and the data layouts


@pytest.mark.skipif(not SHARED_WIKITEXT.exists(), reason="../shared/data is absent")
def test_detokenizer_equals_lm_evals_on_the_shared_wikitext2_file() -> None:
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    from gpt2cli.evaluation.data import wikitext_articles
    from gpt2cli.evaluation.detokenize import wikitext

    raw = SHARED_WIKITEXT.read_bytes().decode("utf-8")
    assert wikitext(raw) == wikitext_detokenizer({"page": raw})
    pages = wikitext_articles(raw)
    assert len(pages) == 62  # the test split's articles
    for page in pages:
        assert wikitext(page) == wikitext_detokenizer({"page": page})


def test_detokenizer_rules_on_the_test_data() -> None:
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    from gpt2cli.evaluation.detokenize import wikitext

    samples = [
        (DATA / "wikitext2.txt").read_text(encoding="utf-8"),
        "a ( b ) c /' 5/ the players ' club 40 ° C \" q \" ' z ' { x } [ 4 ] N ",
        "= = = = Deep = = = =\n x , y ; z : w ! v ? u .",
    ]
    for sample in samples:
        assert wikitext(sample) == wikitext_detokenizer({"page": sample})
    assert wikitext("1 @,@ 000 and 3 @.@ 5 well @-@ known") == "1,000 and 3.5 well-known"


def test_text_jsonl_and_parquet_layouts_read_the_same_documents(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gpt2cli.evaluation.data import read_local

    pages = read_local(str(DATA / "wikitext2.txt"), "wikitext", "page")
    assert pages == read_local(str(DATA / "wikitext2.jsonl"), "wikitext", "page")
    assert len(pages) == 3 and all(p.startswith(" = ") for p in pages)
    assert "\r" not in "".join(pages)
    parquet = tmp_path / "wiki.parquet"
    pq.write_table(pa.table({"page": pages}), parquet)
    assert read_local(str(parquet), "wikitext", "page") == pages
    lines = read_local(str(DATA / "lambada_openai.txt"), "lines", "text")
    assert lines == read_local(str(DATA / "lambada_openai.jsonl"), "lines", "text")
    from_txt = read_local(str(DATA / "cbt_cn.txt"), "cbt", "")
    assert len(from_txt) == 2 and len(from_txt[0].sentences) == 20
    assert from_txt[0].answer == "cheese" and len(from_txt[0].options) == 10


# ---------------------------------------------------------------------------------------------
# lm-evaluation-harness's own results (its `hf` model, its task configurations on local files)


def _lm_eval_configs() -> list[dict[str, Any]]:
    """lm-eval's lambada_openai and wikitext YAMLs, read by lm-eval, pointed at local JSONL."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks = Path(lm_eval.tasks.__file__).parent
    lambada = load_yaml(tasks / "lambada" / "lambada_openai.yaml")
    lambada.pop("tag", None)
    lambada.update(task="lambada_openai_local", dataset_path="json", dataset_name=None,
                   dataset_kwargs={"data_files": {"test": str(DATA / "lambada_openai.jsonl")}})
    wikitext = load_yaml(tasks / "wikitext" / "wikitext.yaml")
    wikitext.update(task="wikitext_local", dataset_path="json", dataset_name=None,
                    dataset_kwargs={"data_files": {"test": str(DATA / "wikitext2.jsonl")}},
                    training_split=None, validation_split=None)  # fmt: skip
    return [lambada, wikitext]


@pytest.fixture(scope="module")
def lm_eval_results(memorised_model_dir: Path) -> dict[str, dict[str, Any]]:
    """lm-eval 0.4.13's results on the memorised model (its greedy hits make acc informative).

    Its `hf` model runs in float64 here: lm-eval's float32 log_softmax sums the 50,257
    exponentials in float32, which on a confident model is off by up to 1e-4 nats per token
    (measured), more than the 1e-6 this test asks for; we sum in float64."""
    pytest.importorskip("lm_eval")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    model = HFLM(pretrained=str(memorised_model_dir), batch_size=1, max_length=CTX,
                 device="cpu", dtype="float64")  # fmt: skip
    results = simple_evaluate(model=model, tasks=_lm_eval_configs(), bootstrap_iters=0,
                              verbosity="ERROR")  # fmt: skip
    assert results is not None
    return results["results"]


def test_lambada_and_wikitext2_equal_lm_eval(
    lm_eval_results: dict[str, dict[str, Any]], memorised_model_dir: Path
) -> None:
    lambada, wikitext = records(
        "-m", str(memorised_model_dir), "--backend", "torch", "--ctx", str(CTX),
        "--tasks", "lambada_openai,wikitext2",
        "--data", data("lambada_openai"), "--data", data("wikitext2", "wikitext2.jsonl"),
    )  # fmt: skip
    expected = lm_eval_results["lambada_openai_local"]
    assert lambada["n"] == expected["sample_len"] == 10
    assert lambada["acc"] == expected["acc,none"]
    assert 0 < lambada["acc"] < 1  # greedy hits and misses: the check can tell
    assert lambada["perplexity"] == pytest.approx(expected["perplexity,none"], rel=REL)
    expected = lm_eval_results["wikitext_local"]
    assert wikitext["n"] == expected["sample_len"] == 3
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert wikitext[metric] == pytest.approx(expected[f"{metric},none"], rel=REL), metric
    assert wikitext["token_count"] > 3 * CTX  # several windows per article


def test_the_raw_wikitext_file_scores_as_the_document_level_data(memorised_model_dir: Path) -> None:
    args = ("-m", str(memorised_model_dir), "--backend", "torch", "--ctx", str(CTX),
            "--tasks", "wikitext2")  # fmt: skip
    (from_jsonl,) = records(*args, "--data", data("wikitext2", "wikitext2.jsonl"))
    (from_raw,) = records(*args, "--data", data("wikitext2"))
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert from_raw[metric] == from_jsonl[metric]


# ---------------------------------------------------------------------------------------------
# Plain transformers, by hand, for the tasks lm-eval does not ship


def _hf_logprobs(model: Any, ids: list[int], first: int = 1) -> np.ndarray:
    """log P(ids[i] | ids[:i]) for i >= first, in float64, in one forward pass."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, first - 1 : -1].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs[torch.arange(len(ids) - first), torch.tensor(ids[first:])].numpy()


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _engine(backend: Any, task: str, path: str, **settings: Any) -> Any:
    from gpt2cli.evaluation.data import read_local
    from gpt2cli.evaluation.tasks import TASKS, EvalOptions
    from gpt2cli.session import Session

    spec = TASKS[task]
    docs = read_local(path, spec.layout, spec.field)
    options = EvalOptions(ctx=settings.pop("ctx", 1024), **settings)
    return Session.from_backend(backend).evaluate(spec, docs, options)


def _metric(result: Any, name: str) -> float:
    return next(m.value for m in result.metrics if m.name == name)


@pytest.mark.parametrize("task", ["ptb", "1bw", "enwik8", "text8"])
def test_rolling_tasks_equal_transformers_by_hand(
    task: str, torch_backend: Any, hf_model: Any, hf_tokenizer: Any
) -> None:
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    path = DATA / f"{task}.txt"
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.split("\n") if line.strip()]
    # what is scored: ptb one stream, 1bw each sentence, enwik8/text8 the whole file
    docs = {"ptb": ["".join(line + "\n" for line in lines)], "1bw": lines}.get(task, [text])
    detok = task in ("ptb", "1bw")
    nll = 0.0
    for doc in docs:
        scored = wikitext_detokenizer({"page": doc}) if detok else doc
        ids = [hf_tokenizer.eos_token_id, *hf_tokenizer(scored)["input_ids"]]
        assert len(ids) <= 1024  # one window
        nll -= float(_hf_logprobs(hf_model, ids).sum())
    result = _engine(torch_backend, task, str(path))
    assert result.n == len(docs)
    if task in ("ptb", "1bw"):
        words = sum(len(line.split()) + 1 for line in lines)  # and one end of sentence each
        assert _metric(result, "word_perplexity") == pytest.approx(math.exp(nll / words), rel=REL)
    elif task == "enwik8":
        bits = nll / len(text.encode("utf-8")) / math.log(2)
        assert _metric(result, "bits_per_byte") == pytest.approx(bits, rel=REL)
    else:
        bits = nll / len(text) / math.log(2)
        assert _metric(result, "bits_per_char") == pytest.approx(bits, rel=REL)


@pytest.mark.parametrize("task", ["cbt_cn", "cbt_ne"])
def test_cbt_equals_transformers_by_hand(
    task: str, torch_backend: Any, hf_model: Any, hf_tokenizer: Any
) -> None:
    from gpt2cli.evaluation.data import read_local

    path = str(DATA / (f"{task}.txt" if task == "cbt_cn" else f"{task}.jsonl"))
    questions = read_local(path, "cbt", "")[: 2 if task == "cbt_cn" else 1]  # by hand is slow
    result = _engine(torch_backend, task, path, limit=len(questions))
    correct = []
    for question, ours in zip(questions, result.scores, strict=True):
        context = " ".join(question.sentences)
        context_ids = hf_tokenizer(context)["input_ids"]
        by_hand = []
        for option in question.options:
            sentence = " " + question.question.replace("XXXXX", option)
            whole = hf_tokenizer(context + sentence)["input_ids"]
            by_hand.append(float(_hf_logprobs(hf_model, whole, len(context_ids)).sum()))
        np.testing.assert_allclose(ours, by_hand, rtol=1e-5)
        correct.append(question.options[int(np.argmax(by_hand))] == question.answer)
    assert _metric(result, "acc") == sum(correct) / len(correct)


def test_lambada_last_token_is_the_papers_protocol(
    torch_backend: Any, hf_model: Any, hf_tokenizer: Any
) -> None:
    path = DATA / "lambada_openai.jsonl"
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    result = _engine(torch_backend, "lambada_openai", str(path), last_token=True)
    for text, ours in zip(texts, result.scores, strict=True):
        ids = hf_tokenizer(text)["input_ids"]
        if len(ids) == 1:
            ids = [hf_tokenizer.eos_token_id, *ids]
        assert ours == pytest.approx(float(_hf_logprobs(hf_model, ids)[-1]), rel=1e-5, abs=1e-5)
    assert result.token_count == len(texts)  # one target token each


def test_stride_gives_overlapping_windows_and_says_so(torch_backend: Any) -> None:
    from gpt2cli.evaluation.data import read_local
    from gpt2cli.evaluation.detokenize import wikitext
    from gpt2cli.scoring import ScoreOptions, score_texts

    path = str(DATA / "wikitext2.jsonl")
    disjoint = _engine(torch_backend, "wikitext2", path, ctx=CTX)
    strided = _engine(torch_backend, "wikitext2", path, ctx=CTX, stride=CTX // 2)
    assert "OVERLAPPING" in strided.definition and "OVERLAPPING" not in disjoint.definition
    assert strided.token_count == disjoint.token_count
    # the same windows as `score --ctx 33 --stride 16` (score's window counts its last target)
    pages = [wikitext(page) for page in read_local(path, "wikitext", "page")]
    scored = score_texts(torch_backend, pages, ScoreOptions(ctx=CTX + 1, stride=CTX // 2))
    np.testing.assert_allclose(strided.scores, [-s.stats.nll for s in scored], rtol=1e-9)
    assert strided.scores != pytest.approx(disjoint.scores, rel=1e-9)


def test_torch_and_onnx_agree(memorised_model_dir: Path, memorised_onnx_dir: Path) -> None:
    args = ("--ctx", str(CTX), "--tasks", "lambada_openai,wikitext2,cbt_cn",
            "--data", data("lambada_openai"), "--data", data("wikitext2"),
            "--data", data("cbt_cn"))  # fmt: skip
    torch_records = records("-m", str(memorised_model_dir), "--backend", "torch", *args)
    onnx_records = records("-m", str(memorised_onnx_dir), *args)
    for ours, theirs in zip(torch_records, onnx_records, strict=True):
        assert theirs["backend"] == "onnx" and ours["backend"] == "torch"
        for metric in ours["definitions"]:
            assert theirs[metric] == pytest.approx(ours[metric], rel=1e-5), metric


# ---------------------------------------------------------------------------------------------
# The command: output, limits, errors


def test_table_and_json(tiny_model_dir: Path) -> None:
    args = ("eval", "-m", str(tiny_model_dir), "--tasks", "lambada_openai,text8",
            "--data", data("lambada_openai"), "--data", data("text8"))  # fmt: skip
    table = run_in_process(*args)
    assert table.returncode == 0, table.err
    lines = table.out.splitlines()
    assert lines[0].split() == ["task", "metric", "value", "stderr", "n", "paper", "124M*",
                                "paper", "355M*"]  # fmt: skip
    rows = {tuple(line.split()[:2]): line.split() for line in lines[1:4]}
    assert rows[("lambada_openai", "perplexity")][-2:] == ["35.13", "15.60"]
    assert rows[("lambada_openai", "acc")][-2:] == ["45.99", "55.48"]  # the paper's percent
    assert rows[("text8", "bits_per_char")][-2:] == ["1.17", "1.06"]
    assert rows[("text8", "bits_per_char")][4] == "1"  # n
    assert "* paper: different tokenization and detokenization; not like for like" in table.out
    lambada, text8 = records(*args[1:])
    assert (lambada["index"], text8["index"]) == (0, 1)
    assert lambada["source"].endswith("lambada_openai.jsonl") and lambada["n"] == 10
    assert {"acc", "acc_stderr", "perplexity", "perplexity_stderr"} <= set(lambada)
    assert lambada["acc_stderr"] == pytest.approx(
        math.sqrt(lambada["acc"] * (1 - lambada["acc"]) / 9)
    )
    assert set(lambada["definitions"]) == {"acc", "perplexity"}
    assert lambada["paper"]["acc"] == {"124M": 45.99, "355M": 55.48, "unit": "percent"}
    assert "lm-eval's lambada_openai" in lambada["definition"]
    assert lambada["backend"] == "torch" and lambada["dtype"] == "float32"
    assert lambada["model"] == str(tiny_model_dir) and lambada["ctx"] == 1024
    assert {"gpt2cli", "numpy", "torch", "transformers"} <= set(lambada["versions"])
    assert text8["bits_per_char_stderr"] > 0 and text8["stride"] is None


def test_limit(tiny_model_dir: Path) -> None:
    lambada, enwik8 = records(
        "-m", str(tiny_model_dir), "--tasks", "lambada_openai,enwik8", "--limit", "3",
        "--ctx", "16", "--data", data("lambada_openai"), "--data", data("enwik8"),
    )  # fmt: skip
    assert lambada["n"] == 3 and lambada["limited"] is True
    assert enwik8["token_count"] == 3 * 16 and enwik8["limited"] is True  # 3 windows


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tasks", "lambada"), "--tasks: unknown task 'lambada' (one of lambada_openai,"),
        ((), "--tasks: give one or more of lambada_openai"),
        (("--tasks", "ptb", "--data", "wikitext2=x.txt"), "wikitext2 is not one of the --tasks"),
        (("--tasks", "ptb", "--data", "ptb"), "expected TASK=PATH"),
        (("--tasks", "ptb", "--data", "ptb=/nonexistent/ptb.txt"), "no such file"),
        (("--tasks", "cbt_cn", "--stride", "4"), "--stride applies to the perplexity tasks"),
        (("--tasks", "ptb", "--last-token"), "--last-token applies to lambada_openai"),
        (("--tasks", "ptb", "--ctx", "4096"), "--ctx: must be between 1 and the model's"),
        (("--tasks", "ptb", "--ctx", "8", "--stride", "9"), "--stride: must be between 1 and 8"),
    ],
)
def test_bad_usage_is_one_line(tiny_model_dir: Path, args: tuple[str, ...], message: str) -> None:
    result = run_in_process("eval", "-m", str(tiny_model_dir), *args)
    assert result.returncode == 2, result.err
    assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err


def test_a_missing_dataset_offline_names_the_data_option(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("datasets")
    result = run_cli(
        "eval", "-m", str(tiny_model_dir), "--tasks", "wikitext2",
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "EleutherAI/wikitext_document_level" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert "--data wikitext2=PATH" in lines[0]


def test_a_task_without_a_hub_dataset_needs_data(tiny_model_dir: Path) -> None:
    result = run_in_process("eval", "-m", str(tiny_model_dir), "--tasks", "enwik8")
    assert result.returncode == 2
    assert "--data enwik8=PATH" in result.err
