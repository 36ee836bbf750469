"""What the engines know about a model before and after its weights load: ModelInfo, built from a
checked config.json and the generation settings of the model's files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2cli.errors import InputError
from gpt2cli.model_files import config_sizes, generation_defaults

# config.json's activation_function names of GPT-2's tanh-approximated GELU: transformers'
# gelu_new (five elementwise operations) and gelu_pytorch_tanh (torch's one kernel) compute the
# same function, so any fused tanh-GELU kernel may stand in for either.
TANH_GELU = frozenset({"gelu_new", "gelu_pytorch_tanh"})


@dataclass
class ModelInfo:
    """What the commands need to know about a model."""

    model_dir: Path
    source: str  # what the user passed to --model
    vocab_size: int
    n_positions: int  # context length (1024 for GPT-2)
    n_layer: int
    n_head: int
    n_embd: int
    eos_token_id: int | None
    bos_token_id: int | None
    # generation_config.json merged with config.task_specific_params["text-generation"],
    # as transformers' pipeline applies them (gpt2: do_sample=True, max_length=50).
    generation_defaults: dict[str, Any] = field(default_factory=dict)

    def hidden_state_index(self, layer: int | None) -> int | None:
        """`layer` as a non-negative index into hidden_states (n_layer + 1 entries; negative
        counts from the end); None stays None. Out of range is an InputError on hidden_layer."""
        if layer is None:
            return None
        count = self.n_layer + 1
        if not -count <= layer < count:
            raise InputError(
                param="hidden_layer",
                reason=f"{layer} is out of range: this model has hidden states "
                f"0..{self.n_layer} (or -{count}..-1)",
            )
        return layer % count


def check_hidden_layer(info: ModelInfo, hidden_layer: int | None) -> int | None:
    """`info.hidden_state_index(hidden_layer)`, for callers that hold the layer apart."""
    return info.hidden_state_index(hidden_layer)


def model_info(directory: Path, source: str, config: dict[str, Any]) -> ModelInfo:
    """ModelInfo from a checked config.json (see model_files.read_config)."""
    sizes = config_sizes(directory / "config.json", config)
    defaults = generation_defaults(directory, config, sizes["vocab_size"])
    eos, bos = config.get("eos_token_id"), config.get("bos_token_id")
    if isinstance(eos, list):  # several end tokens: decoding stops at any of them
        defaults.setdefault("eos_token_id", eos)
        eos = eos[0] if eos else None
    if isinstance(bos, list):
        bos = bos[0] if bos else None
    return ModelInfo(
        model_dir=directory,
        source=source,
        vocab_size=sizes["vocab_size"],
        n_positions=sizes["n_positions"],
        n_layer=sizes["n_layer"],
        n_head=sizes["n_head"],
        n_embd=sizes["n_embd"],
        eos_token_id=eos,
        bos_token_id=bos,
        generation_defaults=defaults,
    )
