"""A real `make` over tests/data/Makefile (the README's example): token counts, two seeded runs
that must agree, a score, and an ONNX export that make rebuilds only when its source changes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt2cli.tokenizer import GPT2Tokenizer

MAKEFILE = Path(__file__).resolve().parent / "data" / "Makefile"
BIN = Path(sys.executable).parent
TEXTS = {
    "a.txt": "Hello, I'm a language model, and this file is scored.\n",
    "b.txt": "Another file, with different words in it: 12345.\n",
}

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(workdir: Path, *targets: str, model: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "NO_COLOR": "1",
    }
    return subprocess.run(
        ["make", "-j2", f"MODEL={model}", *targets],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def project(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A directory with the Makefile and two texts, after one full `make`; and its model copy."""
    root = tmp_path_factory.mktemp("make")
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)  # the test touches its weights later
    work = root / "work"
    (work / "texts").mkdir(parents=True)
    shutil.copy(MAKEFILE, work / "Makefile")
    for name, text in TEXTS.items():
        (work / "texts" / name).write_text(text)
    result = make(work, model=model)
    assert result.returncode == 0, result.stdout + result.stderr
    return work, model


def test_counts_tokens_of_each_file_and_the_total(project: tuple[Path, Path]) -> None:
    work, _ = project
    tokenizer = GPT2Tokenizer()
    counts = [len(tokenizer.encode(TEXTS[name])) for name in sorted(TEXTS)]
    expected = "".join(
        f"{n}\ttexts/{name}\n" for n, name in zip(counts, sorted(TEXTS), strict=True)
    )
    assert (work / "counts.tsv").read_text() == expected + f"{sum(counts)}\ttotal\n"


def test_same_seed_generates_the_same_text(project: tuple[Path, Path]) -> None:
    work, _ = project
    first, second = (work / "gen-1.txt").read_text(), (work / "gen-2.txt").read_text()
    assert first == second
    assert first.startswith("Once upon a time") and len(first) > len("Once upon a time")


def test_scores_a_file(project: tuple[Path, Path]) -> None:
    work, model = project
    [result] = json.loads((work / "score.json").read_text())  # one record per text
    assert result["source"] == "texts/a.txt"
    assert result["token_count"] == len(GPT2Tokenizer().encode(TEXTS["a.txt"]))
    assert math.isfinite(result["perplexity"]) and result["perplexity"] > 1
    assert result["ctx"] == 1024 and result["stride"] == 512  # says how it was computed


def test_export_is_not_rebuilt_while_up_to_date(project: tuple[Path, Path]) -> None:
    work, model = project
    target = work / "model-onnx" / "model.onnx"
    manifest = json.loads((work / "model-onnx" / "gpt2cli-export.json").read_text())
    assert str(model) in json.dumps(manifest)
    built = target.stat().st_mtime_ns

    question = make(work, "-q", "model-onnx/model.onnx", model=model)
    assert question.returncode == 0, "make -q: the export should be up to date"
    again = make(work, model=model)  # everything: only the phony seed comparison runs
    assert again.returncode == 0, again.stderr
    assert "gpt2cli" not in again.stdout, again.stdout
    assert target.stat().st_mtime_ns == built

    newer = time.time() + 5
    os.utime(model / "model.safetensors", (newer, newer))  # the source model changed
    assert make(work, "-q", "model-onnx/model.onnx", model=model).returncode == 1
    rebuilt = make(work, "model-onnx/model.onnx", model=model)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "export-onnx" in rebuilt.stdout
    assert target.stat().st_mtime_ns > built
    assert not [p for p in work.iterdir() if p.name.startswith(".")], "temporary files left"
