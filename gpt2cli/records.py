"""The JSON records of results, shared by every front end (the CLI's commands and `batch`):
one place for each command's field names (README, "Field names")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpt2cli.decoding import GeneratedSequence
    from gpt2cli.embedding import Embedded
    from gpt2cli.scoring import Scored


def prompt_record(sequences: Sequence[GeneratedSequence], full_text: bool) -> dict[str, Any]:
    """The JSON record of one prompt and its generated sequences."""
    first = sequences[0]
    return {
        "index": first.prompt_index,
        "source": first.prompt.source,
        "prompt": first.prompt.text,
        "token_count": len(first.prompt_ids),
        "truncated_tokens": first.truncated_tokens,
        "sequences": [sequence_record(seq, full_text) for seq in sequences],
    }


def sequence_record(seq: GeneratedSequence, full_text: bool) -> dict[str, Any]:
    """The JSON object for one generated sequence (inside its prompt's record)."""
    return {
        "generated_text": (seq.prompt.text + seq.text) if full_text else seq.text,
        "ids": seq.token_ids,
        "token_count": len(seq.token_ids),
        "finish_reason": seq.finish_reason,
        "stop_string": seq.stop_string,
    }


def embed_record(result: Embedded, source: str) -> dict[str, Any]:
    """The JSON record of one embedded text."""
    return {
        "index": result.index,
        "source": source,
        "token_count": result.token_count,
        "truncated_tokens": result.truncated_tokens,
        "embedding": result.vector.tolist(),
    }


def score_record(result: Scored, source: str, conditional: bool = False) -> dict[str, Any]:
    """One scored text's (or pair's) record: index, source, token_count and its figures (the
    caller adds per-token arrays and the settings)."""
    stats = result.stats.as_dict()
    record: dict[str, Any] = {"index": result.index, "source": source,
                              "token_count": stats.pop("token_count")}  # fmt: skip
    if conditional:
        record["context_tokens"] = result.context_tokens
        record["context_truncated"] = result.context_truncated
        record["logprob"] = result.logprob
        record["is_greedy"] = result.is_greedy
    else:
        record["text_tokens"] = result.text_tokens
    record.update(stats)
    return record


def score_settings(ctx: int, stride: int | None, first_token: str | None, model: str,
                   backend: str, dtype: str) -> dict[str, Any]:
    """The settings every score record states: ctx, (whole texts:) stride and first_token,
    then model, backend and dtype."""
    fields: dict[str, Any] = {"ctx": ctx}
    if stride is not None:
        fields["stride"] = stride
        fields["first_token"] = first_token
    fields.update(model=model, backend=backend, dtype=dtype)
    return fields
