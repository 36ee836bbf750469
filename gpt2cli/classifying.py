"""`classify`'s engine: a fine-tuned sequence- or token-classification GPT-2 (what `finetune
classify` and `finetune ner` write) over batches of texts, with transformers' pipeline
semantics: softmax scores (sigmoid for one label or multi-label models); for token
classification, per-token labels grouped into entities as pipeline("token-classification",
aggregation_strategy="first") groups them."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gpt2cli.errors import InputError, ModelError
from gpt2cli.model_files import read_config, resolve_model_dir

SEQUENCE = "sequence"
TOKEN = "token"
ARCHITECTURES = {
    "GPT2ForSequenceClassification": SEQUENCE,
    "GPT2ForTokenClassification": TOKEN,
}


@dataclass
class Classifier:
    """A loaded classification model and its tokenizer."""

    kind: str  # SEQUENCE or TOKEN
    model: Any
    tokenizer: Any
    labels: list[str]  # id2label, in id order
    context: int
    multi_label: bool

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)


def classifier_kind(model: str) -> str:
    """SEQUENCE or TOKEN from the model's config.json (no weights loaded); anything else is a
    ModelError saying which models `classify` runs."""
    directory = resolve_model_dir(model, ["config.json"])
    config = read_config(directory)
    architectures = config.get("architectures") or []
    kinds = [ARCHITECTURES[a] for a in architectures if a in ARCHITECTURES]
    if not kinds:
        shown = ", ".join(map(str, architectures)) or "none listed"
        raise ModelError(
            f"{model}: not a classification model (architectures: {shown}); classify runs "
            "GPT2ForSequenceClassification and GPT2ForTokenClassification models, such as "
            "`gpt2cli finetune classify` and `finetune ner` write"
        )
    return kinds[0]


def load_classifier(model: str, threads: int | None = None, device: str = "cpu") -> Classifier:
    from gpt2cli.backends.torch import import_torch, weights_error

    torch, transformers = import_torch()
    kind = classifier_kind(model)
    patterns = ["*.json", "merges.txt", "model.safetensors", "model-*.safetensors"]
    directory = resolve_model_dir(model, patterns)
    if threads is not None:
        torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    classes = {SEQUENCE: transformers.AutoModelForSequenceClassification,
               TOKEN: transformers.AutoModelForTokenClassification}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory, use_fast=True)
            loaded = classes[kind].from_pretrained(
                directory, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelError(f"{directory}: cannot load the weights: {weights_error(exc)}") from None
    loaded.eval()
    config = loaded.config
    labels = [config.id2label[i] for i in range(config.num_labels)]
    if kind == SEQUENCE and config.pad_token_id is None:
        raise ModelError(f"{directory}: config.json sets no pad_token_id, so a batch cannot be "
                         "pooled at each text's last token")
    multi = config.num_labels == 1 or config.problem_type == "multi_label_classification"
    return Classifier(kind, loaded.to(device), tokenizer, labels,
                      config.n_positions, multi)


def check_top_k(classifier: Classifier, top_k: int | None) -> None:
    if top_k is not None and not 1 <= top_k:
        raise InputError(param="top_k", reason=f"must be at least 1, got {top_k}")


def classify(
    classifier: Classifier,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    top_k: int | None = 1,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """One result per text: `token_count`, `truncated_tokens`, and for a sequence classifier
    `label`, `score` and (top_k other than 1, or None for all) `labels`; for a token classifier
    `entities` and `token_labels`. Texts longer than the context are cut on the right."""
    import torch

    tokenizer = classifier.tokenizer
    results: list[dict[str, Any]] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        encoded = [tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
                   for text in batch]
        lengths = [min(len(e["input_ids"]), classifier.context) for e in encoded]
        width = max(lengths)
        ids = torch.full((len(batch), width), classifier.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (e, length) in enumerate(zip(encoded, lengths, strict=True)):
            ids[row, :length] = torch.tensor(e["input_ids"][:length])
            mask[row, :length] = 1
        with torch.inference_mode():
            logits = classifier.model(input_ids=ids, attention_mask=mask).logits.float()
        for row, (text, e, length) in enumerate(zip(batch, encoded, lengths, strict=True)):
            result: dict[str, Any] = {
                "token_count": length,
                "truncated_tokens": len(e["input_ids"]) - length,
            }
            if classifier.kind == SEQUENCE:
                result.update(_sequence_result(classifier, logits[row].numpy(), top_k))
            else:
                result.update(_token_result(classifier, text, e, logits[row, :length].numpy()))
            results.append(result)
        if progress is not None:
            progress(len(batch))
    return results


def _probabilities(logits: Any, multi_label: bool) -> Any:
    import numpy as np

    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _sequence_result(classifier: Classifier, logits: Any, top_k: int | None) -> dict[str, Any]:
    import numpy as np

    scores = _probabilities(logits, classifier.multi_label)
    order = np.argsort(-scores, kind="stable")
    best = order[0]
    result: dict[str, Any] = {"label": classifier.labels[best], "score": float(scores[best])}
    if top_k != 1:
        shown = order if top_k is None else order[:top_k]
        result["labels"] = [{"label": classifier.labels[i], "score": float(scores[i])}
                            for i in shown]
    return result


def _token_result(
    classifier: Classifier, text: str, encoded: Any, logits: Any
) -> dict[str, Any]:
    """Per-token labels, then words (a token that neither starts the text nor follows a space
    continues the previous word: the pipeline's heuristic for tokenizers without a subword
    prefix), labelled by their first token, then entities: B-X starts one, I-X continues one
    of type X, O is dropped."""
    scores = _probabilities(logits, False)
    tokens, words = [], []
    for index, (start, end) in enumerate(encoded["offset_mapping"][: len(scores)]):
        if encoded["special_tokens_mask"][index]:
            continue
        best = int(scores[index].argmax())
        token = {"label": classifier.labels[best], "score": float(scores[index][best]),
                 "start": start, "end": end}
        tokens.append(token)
        continues = start > 0 and " " not in text[start - 1 : start + 1]
        if words and continues:
            words[-1]["end"] = end
        else:
            words.append(dict(token))
    entities: list[dict[str, Any]] = []
    group: list[dict[str, Any]] = []

    def close() -> None:
        if group:
            kind = group[0]["label"].split("-", 1)[-1]
            if kind != "O":
                start, end = group[0]["start"], group[-1]["end"]
                entities.append({
                    "entity_group": kind,
                    "score": float(sum(w["score"] for w in group) / len(group)),
                    "word": text[start:end].strip(),
                    "start": start,
                    "end": end,
                })
        group.clear()

    for word in words:
        begins, kind = _tag(word["label"])
        if group and kind == _tag(group[-1]["label"])[1] and not begins:
            group.append(word)
        else:
            close()
            group.append(word)
    close()
    return {"entities": entities, "token_labels": tokens}


def _tag(label: str) -> tuple[bool, str]:
    """(starts an entity, its type), as the pipeline reads B-X, I-X and anything else."""
    if label.startswith("B-"):
        return True, label[2:]
    if label.startswith("I-"):
        return False, label[2:]
    return False, label
