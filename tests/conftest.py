"""Session-wide test models: built (and exported) once, shared by every test file.

Fixtures: gpt2_vocab_dir, tiny_model_dir, tiny_onnx_dir, tiny_onnx_int8_dir, memorised_model_dir,
memorised_onnx_dir, memorised_onnx_int8_dir; loaded once: torch_backend and onnx_backend (our
backends on tiny_model_dir and tiny_onnx_dir) and hf_model (transformers' GPT2LMHeadModel on
tiny_model_dir). The builders and MEMORISED_PARAGRAPH live in tests/models.py. Model directories
and loaded models are read-only by convention: copy or load your own before changing one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.models import (
    build_memorised_model,
    build_random_classifier,
    build_random_model,
    write_vocab,
)

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

    from gpt2cli.backends.base import Backend


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


def _export(
    source: Path,
    factory: pytest.TempPathFactory,
    name: str,
    quantize: str | None,
    graph: str = "fused",
) -> Path:
    """Export through the real export-onnx engine (validation is tested in test_export.py)."""
    from gpt2cli.exporting import ExportOptions, export_model

    target = factory.mktemp(name) / "model"
    settings = ExportOptions(quantize=quantize, validate=False, graph=graph)
    export_model(str(source), target, settings)
    return target


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_model_dir exported by export-onnx (fp32)."""
    return _export(tiny_model_dir, tmp_path_factory, "tiny-onnx", None)


@pytest.fixture(scope="session")
def tiny_optimum_onnx_dir(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """tiny_model_dir exported by export-onnx --graph optimum (fp32)."""
    return _export(tiny_model_dir, tmp_path_factory, "tiny-optimum-onnx", None, "optimum")


@pytest.fixture(scope="session")
def tiny_onnx_int8_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_model_dir exported by export-onnx --quantize int8."""
    return _export(tiny_model_dir, tmp_path_factory, "tiny-onnx-int8", "int8")


@pytest.fixture(scope="session")
def memorised_onnx_dir(memorised_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """memorised_model_dir exported by export-onnx (fp32)."""
    return _export(memorised_model_dir, tmp_path_factory, "memorised-onnx", None)


@pytest.fixture(scope="session")
def memorised_onnx_int8_dir(
    memorised_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """memorised_model_dir exported by export-onnx --quantize int8."""
    return _export(memorised_model_dir, tmp_path_factory, "memorised-onnx-int8", "int8")


@pytest.fixture(scope="session")
def torch_backend(tiny_model_dir: Path) -> Backend:
    """Our torch backend on tiny_model_dir."""
    from gpt2cli.loader import load_backend

    return load_backend(str(tiny_model_dir), backend="torch")


@pytest.fixture(scope="session")
def onnx_backend(tiny_onnx_dir: Path) -> Backend:
    """Our onnx backend on tiny_onnx_dir."""
    from gpt2cli.loader import load_backend

    return load_backend(str(tiny_onnx_dir), backend="onnx")


@pytest.fixture(scope="session")
def hf_model(tiny_model_dir: Path) -> GPT2LMHeadModel:
    """transformers' GPT2LMHeadModel on tiny_model_dir, in eval mode: the oracle."""
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random GPT2ForSequenceClassification of the tiny shape (labels neg, neu, pos)."""
    return build_random_classifier(tmp_path_factory.mktemp("tiny-classifier") / "model")
