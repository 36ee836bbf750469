"""Session-wide test models: built (and exported) once, shared by every test file.

Fixtures: gpt2_vocab_dir, tiny_model_dir, tiny_onnx_dir, tiny_onnx_int8_dir, memorised_model_dir,
memorised_onnx_dir, memorised_onnx_int8_dir. The builders and MEMORISED_PARAGRAPH live in
tests/models.py. Model directories are read-only by convention: copy one before changing it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models import build_memorised_model, build_random_model, write_vocab


@pytest.fixture(scope="session")
def gpt2_vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with GPT-2's vocab.json and merges.txt."""
    return write_vocab(tmp_path_factory.mktemp("gpt2-vocab"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random GPT-2 (2 layers, 2 heads, 64 wide, 1024 positions, real vocabulary),
    saved as safetensors with config, generation config and tokenizer files."""
    return build_random_model(tmp_path_factory.mktemp("tiny-gpt2") / "model")


@pytest.fixture(scope="session")
def memorised_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 shape trained to reproduce tests.models.MEMORISED_PARAGRAPH."""
    return build_memorised_model(tmp_path_factory.mktemp("memorised-gpt2") / "model")
