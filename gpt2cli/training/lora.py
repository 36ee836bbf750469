"""LoRA through PEFT, with GPT-2's traps handled: its attention and MLP layers are Conv1D
(weights stored in x out), so `fan_in_fan_out` is set; a target that matches no module is an
error, not a silent no-op."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpt2cli.errors import InputError

DEFAULT_TARGETS = ("c_attn", "attn.c_proj")
TASK_TYPES = {"clm": "CAUSAL_LM", "classify": "SEQ_CLS", "ner": "TOKEN_CLS"}


@dataclass(frozen=True)
class LoraOptions:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS


def matching_modules(model: Any, target: str) -> list[str]:
    """The module names PEFT would adapt for `target`: the name itself or a dotted suffix."""
    return [name for name, _ in model.named_modules()
            if name == target or name.endswith("." + target)]


def check_targets(model: Any, targets: tuple[str, ...]) -> None:
    if not targets:
        raise InputError(param="lora_targets", reason="empty; name at least one module")
    for target in targets:
        found = matching_modules(model, target)
        if not found:
            examples = sorted({name.split(".")[-1] for name, _ in model.named_modules()
                               if name.startswith("transformer.h.0.") or ".h.0." in name})
            raise InputError(
                param="lora_targets",
                reason=f"{target!r} matches no module of the model",
                hint="GPT-2's layers are " + ", ".join(examples[:8]),
            )
        kinds = {n: type(model.get_submodule(n)).__name__ for n in found}
        bad = [n for n, kind in kinds.items() if kind not in ("Conv1D", "Linear")]
        if bad:
            raise InputError(
                param="lora_targets",
                reason=f"{target!r} matches {bad[0]}, a {kinds[bad[0]]}; LoRA adapts Conv1D "
                "and Linear layers",
            )


def apply_lora(model: Any, task: str, options: LoraOptions) -> Any:
    """`model` wrapped in a PeftModel whose only trainable parameters are the adapters (and,
    for classification, the new head)."""
    from peft import LoraConfig, TaskType, get_peft_model

    check_targets(model, options.targets)
    config = LoraConfig(
        task_type=getattr(TaskType, TASK_TYPES[task]),
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.targets),
        fan_in_fan_out=True,  # GPT-2's Conv1D stores weights as (in, out)
    )
    return get_peft_model(model, config)


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
