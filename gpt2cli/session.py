"""The session layer: one opened model and the operations every front end runs on it.

`open_model(ModelOptions(...))` finds the model and reads its config (the checks that need no
weights), then loads it, or leaves loading to the first operation (`load=False`), so a front
end can check its options against `session.info` before the slow part. The operations take
engine-level requests and return results or step updates; front ends only parse, build
requests and print.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from gpt2cli.backends.base import Backend, ForwardResult, ModelInfo
    from gpt2cli.decoding import GeneratedSequence, GenerationParams, Prompt
    from gpt2cli.embedding import Embedded, EmbedOptions, Encoded
    from gpt2cli.evaluation.tasks import EvalOptions, Task, TaskResult
    from gpt2cli.loader import LocatedModel
    from gpt2cli.scheduler import GenerationUpdate
    from gpt2cli.scoring import Scored, ScoreOptions

DEFAULT_MODEL = "gpt2"
# Texts a front end hands the session at a time (embed, score, classify, batch): enough that
# texts of similar length batch together (little padding), few enough that output streams and
# memory stays bounded.
BLOCK_TEXTS = 1024


@dataclass(frozen=True)
class ModelOptions:
    """Which model to open and how: the options every model command shares."""

    model: str = DEFAULT_MODEL
    backend: str = "auto"  # "auto", "torch" or "onnx"
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("backend", "device", "dtype"):  # the CLI's enums, as their values
            value = getattr(self, name)
            object.__setattr__(self, name, str(getattr(value, "value", value)))


def open_model(options: ModelOptions, *, load: bool = True) -> Session:
    """Locate `options.model` and read its config (no weights), then load it unless `load` is
    False (the session then loads on first use, or on `session.load()`)."""
    from gpt2cli.loader import locate_model

    session = Session(locate_model(options.model, options.backend), options)
    if load:
        session.load()
    return session


@dataclass
class Timings:
    """Where a generate run's time went (llama.cpp's timings block): seconds and tokens."""

    load_s: float = 0.0  # loading the weights
    prompt_s: float = 0.0  # forward passes over prompt tokens (prefill)
    generate_s: float = 0.0  # the rest of generation: decode steps, sampling, output
    prompt_tokens: int = 0  # prompt tokens of every row (prompt x sequence)
    generated_tokens: int = 0


class _TimedBackend:
    """A backend whose prefill forward passes (no logits wanted) are timed into `timings`."""

    def __init__(self, backend: Backend, timings: Timings) -> None:
        self._backend = backend
        self._timings = timings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        cache: Any = None,
        **kwargs: Any,
    ) -> ForwardResult:
        start = time.perf_counter()
        result = self._backend.forward(input_ids, attention_mask, position_ids, cache, **kwargs)
        if kwargs.get("logits") == "none":
            self._timings.prompt_s += time.perf_counter() - start
        return result


class Session:
    """An opened model: its config now, its weights on first use."""

    def __init__(
        self, located: LocatedModel, options: ModelOptions, backend: Backend | None = None
    ) -> None:
        self.located = located
        self.options = options
        self._backend = backend
        self.load_seconds = 0.0  # how long load() took

    @classmethod
    def from_backend(cls, backend: Backend) -> Session:
        """A session over a backend loaded elsewhere (tests, benchmarks)."""
        from gpt2cli.loader import LocatedModel

        info = backend.info
        located = LocatedModel(info.source, info.model_dir, backend.name, info)
        return cls(located, ModelOptions(info.source, backend.name), backend)

    @property
    def info(self) -> ModelInfo:
        return self.located.info

    @property
    def backend(self) -> Backend:
        """The loaded backend (loading it now if needed)."""
        return self.load()

    def load(self) -> Backend:
        """Load the weights (once)."""
        if self._backend is None:
            from gpt2cli.loader import load_backend

            o = self.options
            start = time.perf_counter()
            self._backend = load_backend(self.located, o.backend, o.device, o.dtype, o.threads)
            self.load_seconds = time.perf_counter() - start
        return self._backend

    # -- generate -----------------------------------------------------------------------------

    def generation_params(
        self, overrides: dict[str, Any], name: Callable[[str], str] | None = None
    ) -> GenerationParams:
        """transformers' defaults, then this model's generation config, then `overrides`;
        checked (before any weights load), errors naming parameters with `name`. The length
        default is the text-generation pipeline's (GenerationParams.resolve)."""
        from gpt2cli.decoding import GenerationParams

        info = self.info
        return GenerationParams.resolve(
            info.generation_defaults,
            overrides,
            eos_token_id=info.eos_token_id,
            name=name,
            model_source=str(self.located.directory / "generation_config.json"),
            vocab_size=info.vocab_size,
            model_length=self.config_sets_length(),
        )

    def config_sets_length(self) -> bool:
        """Whether the model's generation config sets a length (model_files.config_sets_length)."""
        from gpt2cli.model_files import config_sets_length

        return config_sets_length(self.located.directory)

    def generate(
        self,
        prompts: Iterable[Prompt],
        params: GenerationParams,
        *,
        batch_size: int = 8,
        max_tokens: int | None = None,
        name: Callable[[str], str] | None = None,
        timings: Timings | None = None,
    ) -> Iterator[GenerationUpdate]:
        """Step updates while `prompts` (read as rows free up) are generated with continuous
        batching: each lists the sequences planned since the last, in input order; they fill
        in as the following steps run. With `timings`, prefill time is added to it (the caller
        counts tokens and the rest of the time)."""
        from gpt2cli.errors import plain_name
        from gpt2cli.scheduler import decode

        backend: Any = self.backend
        if timings is not None:
            timings.load_s = self.load_seconds
            backend = _TimedBackend(backend, timings)
        return decode(
            backend, prompts, params, max_rows=batch_size, max_tokens=max_tokens,
            name=name or plain_name,
        )

    def generate_all(
        self, prompts: Iterable[Prompt], params: GenerationParams, **settings: Any
    ) -> list[GeneratedSequence]:
        """Every sequence of `prompts`, in input order, once all have ended."""
        out: list[GeneratedSequence] = []
        for update in self.generate(prompts, params, **settings):
            out.extend(update.planned)
        return out

    # -- score --------------------------------------------------------------------------------

    def score(
        self,
        texts: Sequence[str],
        settings: ScoreOptions,
        progress: Callable[[int, int], None] | None = None,
        first_index: int = 0,
    ) -> list[Scored]:
        """Whole texts scored with the strided window (scoring.score_texts)."""
        from gpt2cli.scoring import score_texts

        return score_texts(self.backend, texts, settings, progress, first_index)

    def score_pairs(
        self,
        pairs: Iterable[tuple[str, str]],
        settings: ScoreOptions,
        progress: Callable[[int, int], None] | None = None,
        first_index: int = 0,
        sources: Sequence[str] | None = None,
    ) -> list[Scored]:
        """log P(continuation | context) and the greedy check (scoring.score_pairs)."""
        from gpt2cli.scoring import score_pairs

        return score_pairs(self.backend, pairs, settings, progress, first_index, sources)

    # -- embed --------------------------------------------------------------------------------

    def encode_for_embedding(
        self, texts: Sequence[str], sources: Sequence[str], truncate: str = "none"
    ) -> list[Encoded]:
        """Texts tokenized for `embed` (embedding.encode_texts)."""
        from gpt2cli.embedding import encode_texts

        return encode_texts(self.backend, texts, sources, truncate)

    def embed(
        self,
        encoded: Sequence[Encoded],
        settings: EmbedOptions,
        first_index: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> list[Embedded]:
        """Pooled hidden-state features of encoded texts (embedding.embed_encoded)."""
        from gpt2cli.embedding import embed_encoded

        return embed_encoded(self.backend, encoded, settings, first_index, progress)

    # -- eval ---------------------------------------------------------------------------------

    def evaluate(
        self,
        task: Task,
        docs: Sequence[Any],
        settings: EvalOptions,
        progress: Callable[[int, int], None] | None = None,
    ) -> TaskResult:
        """One task of the paper's zero-shot table on `docs` (evaluation.tasks.run_task)."""
        from gpt2cli.evaluation.tasks import run_task

        return run_task(self.backend, task, docs, settings, progress)
