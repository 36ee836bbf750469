"""Bench only: the fixed-batch decode loop that gpt2cli.scheduler replaced, kept runnable so
bench_scheduler.py can compare the two in one run. Not part of the package."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from gpt2cli.backends.base import Backend, position_ids_from_mask
from gpt2cli.decoding import (
    FINISH_LENGTH,
    BatchProcessors,
    GeneratedSequence,
    GenerationParams,
    Prompt,
    filtered_distribution,
    fresh_seed,
    plan_rows,
    row_generator,
    sample_token,
)


class FixedBatchDecoder:
    """The decode loop before the scheduler (gpt2cli 0.x up to issue 11): runs a batch of
    sequences to the end of its longest one, one token per step."""

    def __init__(self, backend: Backend, params: GenerationParams, seed: int | None = None) -> None:
        self.backend = backend
        self.params = params
        if params.seed is not None:
            seed = params.seed
        self.seed = seed if seed is not None else fresh_seed()
        self.stops = tuple(s.encode("utf-8") for s in params.stop)
        self._eos = set(params.eos_token_ids)
        self._eos_list = list(params.eos_token_ids)
        self._token_bytes: dict[int, bytes] = {}

    def token_bytes(self, token: int) -> bytes | None:
        """The bytes of a generated token; None for end-of-sequence."""
        if token in self._eos:
            return None
        piece = self._token_bytes.get(token)
        if piece is None:
            piece = self._token_bytes[token] = self.backend.tokenizer.token_bytes(token)
        return piece

    def run(self, sequences: list[GeneratedSequence]) -> Iterator[None]:
        """Generate all of `sequences` as one left-padded batch; yields after every step.

        Finished rows keep running on padding until the whole batch is done.
        """
        params = self.params
        rows = len(sequences)
        lengths = np.array([len(s.prompt_ids) for s in sequences], dtype=np.int64)
        width = int(lengths.max())
        steps = max(s.budget for s in sequences)
        pad = params.pad_token_id

        input_ids = np.full((rows, width), pad, dtype=np.int64)
        mask = np.zeros((rows, width + steps), dtype=np.int64)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq.prompt_ids) :] = seq.prompt_ids
            mask[row, width - len(seq.prompt_ids) : width] = 1

        processors = BatchProcessors(params, [s.prompt_ids for s in sequences], steps)
        rngs = None
        if params.do_sample:
            rngs = [row_generator(self.seed, s.prompt_index, s.sequence_index) for s in sequences]
        writable = processors.active or params.do_sample

        attention = mask[:, :width]
        result = self.backend.forward(
            input_ids, attention, position_ids_from_mask(attention, width), None, logits="last"
        )
        positions = lengths[:, None].copy()
        active = np.ones(rows, dtype=bool)
        tokens = np.empty((rows, 1), dtype=np.int64)
        for step in range(steps):
            logits = result.logits
            if writable and not logits.flags.writeable:
                logits = logits.copy()
            processors(logits, active)
            if rngs is not None:
                for row in np.flatnonzero(active):
                    ids, probs = filtered_distribution(
                        logits[row], params.temperature, params.top_k, params.top_p
                    )
                    tokens[row, 0] = sample_token(ids, probs, rngs[row].random())
            else:
                np.argmax(logits, axis=1, out=tokens[:, 0])

            for row in np.flatnonzero(active):
                seq = sequences[row]
                token = int(tokens[row, 0])
                seq.add(token, self.token_bytes(token), self.stops)
                if seq.finished:
                    active[row] = False
            tokens[~active, 0] = pad
            processors.append(tokens[:, 0])
            yield
            if not active.any():
                break
            mask[:, width + step] = 1
            attention = mask[:, : width + step + 1]
            if rows > 1:
                attention = np.ascontiguousarray(attention)
            result = self.backend.forward(tokens, attention, positions, result.cache, logits="last")
            positions += 1
        for seq in sequences:  # a budget of 0 steps left cannot happen, but be safe
            if seq.finish_reason is None:
                seq.finish_reason = FINISH_LENGTH


def generate_fixed(
    backend: Backend,
    prompts: Sequence[str | Prompt],
    params: GenerationParams,
    batch_size: int = 1,
) -> list[GeneratedSequence]:
    """The old decoding.generate: batches of `batch_size` rows, each run to its end."""
    decoder = FixedBatchDecoder(backend, params)
    items = [
        p if isinstance(p, Prompt) else Prompt(p, f"prompt {i}") for i, p in enumerate(prompts)
    ]
    out: list[GeneratedSequence] = []
    context = backend.info.n_positions
    for sequences in plan_rows(backend.tokenizer, items, params, context, batch_size):
        for _ in decoder.run(sequences):
            pass
        out.extend(sequences)
    return out
