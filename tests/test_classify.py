"""`gpt2cli finetune classify|ner` and `gpt2cli classify` on the tiny random-weight model, with
transformers' pipelines as the oracle."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.clirun import assert_one_line_error, run_in_process

pytest.importorskip("peft")

EMOTIONS = ["sadness", "joy", "love", "anger", "fear", "surprise"]  # dair-ai/emotion's labels
KEYWORDS = ["gloomy", "cheerful", "adore", "furious", "terrified", "astonished"]
FILLER = "i feel today the morning was really quite so very and then we went home after work it"


def _emotion_rows(count: int, rng: random.Random) -> list[dict]:
    """dair-ai/emotion's layout ({"text", "label": 0..5}); the label is decided by a keyword."""
    rows = []
    for _ in range(count):
        label = rng.randrange(len(EMOTIONS))
        words = [rng.choice(FILLER.split()) for _ in range(rng.randint(2, 5))]
        words.insert(rng.randint(0, len(words)), KEYWORDS[label])
        rows.append({"text": " ".join(words), "label": label})
    return rows


PEOPLE = [["John", "Smith"], ["Mary"], ["Ahmed", "Khan"], ["Olga"], ["Pierre", "Dupont"]]
PLACES = [["Paris"], ["New", "York"], ["Berlin"], ["Tokyo"], ["Buenos", "Aires"]]
ORGS = [["Google"], ["United", "Nations"], ["Siemens"], ["Reuters"]]
NER_FILLER = "the visited said that in on yesterday met with from and a report".split()


def _ner_sentence(rng: random.Random) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for _ in range(rng.randint(1, 3)):
        out += [(rng.choice(NER_FILLER), "O") for _ in range(rng.randint(1, 3))]
        kind = rng.choice(["PER", "LOC", "ORG"])
        words = rng.choice({"PER": PEOPLE, "LOC": PLACES, "ORG": ORGS}[kind])
        out += [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]
    return [*out, (".", "O")]


def _conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for sentence in sentences:
        lines += [f"{word} NNP B-NP {tag}" for word, tag in sentence] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _finetune(*args: str) -> dict:
    result = run_in_process("finetune", *args, "--threads", "1", "--format", "json")
    assert result.returncode == 0, result.err
    return json.loads(result.out)


@pytest.fixture(scope="module")
def emotion_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Path, dict, list[dict]]:
    data = tmp_path_factory.mktemp("emotion")
    rng = random.Random(0)
    for name, count in (("train", 240), ("validation", 60)):
        rows = _emotion_rows(count, rng)
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = _finetune(
        "classify", "-m", str(tiny_model_dir), "--train", str(data / "train.jsonl"),
        "--valid", str(data / "validation.jsonl"), "-o", str(data / "model"), "--epochs", "4",
        "--lr", "5e-3", "--batch-size", "16", "--label-names", ",".join(EMOTIONS),
    )
    return data / "model", manifest, rows


def test_classify_reaches_95_percent_and_stores_labels(
    emotion_model: tuple[Path, dict, list[dict]],
) -> None:
    model, manifest, _ = emotion_model
    assert manifest["final_eval"]["accuracy"] >= 0.95, manifest["final_eval"]
    assert "macro_f1" in manifest["final_eval"]
    config = json.loads((model / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(EMOTIONS)}
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    # The pad token is GPT-2's new <|pad|>, not <|endoftext|>, on the tokenizer and the config.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    assert config["pad_token_id"] == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"


def test_classify_equals_the_text_classification_pipeline(
    emotion_model: tuple[Path, dict, list[dict]],
) -> None:
    from transformers import pipeline

    model, _, rows = emotion_model
    texts = [r["text"] for r in rows[:12]] + ["so cheerful<|endoftext|>", "adore<|endoftext|> x"]
    result = run_in_process("classify", "-m", str(model), "--all", "--format", "jsonl",
                            "--batch-size", "5", *texts)
    assert result.returncode == 0, result.err
    records = [json.loads(line) for line in result.out.splitlines()]
    oracle = pipeline("text-classification", model=str(model), top_k=None)(texts)
    assert len(records) == len(texts)
    for record, expected in zip(records, oracle, strict=True):
        assert [e["label"] for e in expected] == [g["label"] for g in record["labels"]]
        np.testing.assert_allclose([g["score"] for g in record["labels"]],
                                   [e["score"] for e in expected], atol=1e-5)
        assert record["label"] == expected[0]["label"]
    text = run_in_process("classify", "-m", str(model), "--top-k", "2", texts[0])
    first = records[0]["labels"]
    assert text.out == (f"{first[0]['label']}\t{first[0]['score']:.6f}\t{first[1]['label']}\t"
                        f"{first[1]['score']:.6f}\targument 1\n")


def test_the_pooled_token_is_the_last_real_token_even_after_endoftext(
    emotion_model: tuple[Path, dict, list[dict]],
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir, _, _ = emotion_model
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    text = "i feel furious<|endoftext|>"
    ids = tokenizer(text)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    with torch.inference_mode():
        hidden = model.transformer(torch.tensor([ids])).last_hidden_state[0, -1]
        expected = torch.softmax(model.score(hidden), -1).numpy()
    # Batched with a longer text, so this one is padded on the right.
    result = run_in_process("classify", "-m", str(model_dir), "--all", "--format", "json",
                            text, "a much longer text that pads the other one in the batch")
    record = json.loads(result.out)[0]
    by_label = {g["label"]: g["score"] for g in record["labels"]}
    got = [by_label[model.config.id2label[i]] for i in range(len(EMOTIONS))]
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.fixture(scope="module")
def ner_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, dict, list[list[tuple[str, str]]]]:
    data = tmp_path_factory.mktemp("ner")
    rng = random.Random(1)
    train = _conll(data / "train.conll", [_ner_sentence(rng) for _ in range(200)])
    sentences = [_ner_sentence(rng) for _ in range(50)]
    valid = _conll(data / "valid.conll", sentences)
    manifest = _finetune(
        "ner", "-m", str(tiny_model_dir), "--train", str(train), "--valid", str(valid),
        "-o", str(data / "model"), "--epochs", "3", "--lr", "5e-3", "--batch-size", "16",
    )
    return data / "model", manifest, sentences


def test_ner_reaches_entity_f1_of_0_9(ner_model: tuple[Path, dict, list]) -> None:
    model, manifest, _ = ner_model
    assert manifest["final_eval"]["f1"] >= 0.9, manifest["final_eval"]
    config = json.loads((model / "config.json").read_text())
    assert config["id2label"]["0"] == "O"
    assert json.loads((model / "tokenizer_config.json").read_text())["add_prefix_space"] is True


def test_ner_labels_the_first_sub_token_and_masks_the_rest(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from gpt2cli.training.data import Examples
    from gpt2cli.training.trainer import IGNORE, _ner_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, add_prefix_space=True)
    words = ["Pierre", "Dupontesque", "visited"]
    examples = Examples("x", texts=[words], labels=[["B-PER", "I-PER", "O"]], sources=["x:1"])
    row = _ner_rows(tokenizer, examples, {"O": 0, "B-PER": 1, "I-PER": 2}.__getitem__, 1024)[0]
    pieces = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    assert row["input_ids"] == [i for p in pieces for i in p]
    expected = []
    for piece, label in zip(pieces, [1, 2, 0], strict=True):
        expected += [label] + [IGNORE] * (len(piece) - 1)
    assert row["labels"] == expected and len(pieces[1]) > 1


def test_classify_equals_the_token_classification_pipeline(
    ner_model: tuple[Path, dict, list],
) -> None:
    from transformers import pipeline

    model, _, sentences = ner_model
    texts = [" ".join(w for w, _ in s) for s in sentences[:10]]
    texts.append("Mary met with Reuters in Buenos Aires yesterday")
    result = run_in_process("classify", "-m", str(model), "--format", "json", "-b", "4", *texts)
    assert result.returncode == 0, result.err
    records = json.loads(result.out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Tokenizer does not support real words"
        oracle = pipeline("token-classification", model=str(model),
                          aggregation_strategy="first")(texts)
    for record, expected in zip(records, oracle, strict=True):
        got = record["entities"]
        assert [(e["entity_group"], e["start"], e["end"]) for e in got] == [
            (e["entity_group"], e["start"], e["end"]) for e in expected]
        np.testing.assert_allclose([e["score"] for e in got],
                                   [float(e["score"]) for e in expected], atol=1e-5)
        assert [e["word"] for e in got] == [e["word"].strip() for e in expected]
    assert [e["entity_group"] for e in records[-1]["entities"]] == ["PER", "ORG", "LOC"]
    text = run_in_process("classify", "-m", str(model), texts[-1])
    assert text.out.startswith("PER:Mary (") and text.out.endswith("\targument 1\n")


def test_classify_refuses_a_language_model(tiny_model_dir: Path) -> None:
    message = assert_one_line_error(run_in_process("classify", "-m", str(tiny_model_dir), "hi"),
                                    code=1)
    assert "not a classification model" in message
