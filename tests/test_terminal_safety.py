"""User-controlled names reach stderr escaped: a file or model directory named with ESC, OSC or BEL
cannot retitle the terminal or move its cursor. And a closed stderr never sends diagnostics to
stdout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.clirun import run_cli

GPT2CLI = str(Path(sys.executable).parent / "gpt2cli")
EVIL = "evil\x1b]0;OWNED\x07\x1b[2J\r"


def _assert_escaped(stderr: str) -> None:
    for raw in ("\x1b", "\x07", "\r"):
        assert raw not in stderr, repr(stderr)
    assert "evil\\x1b]0;OWNED\\x07\\x1b[2J\\r" in stderr, stderr


def test_a_warning_naming_an_input_file_is_escaped(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    prompt = tmp_path / f"{EVIL}.txt"
    prompt.write_text("word " * 1100)
    result = run_cli(
        "generate", "-m", str(tiny_onnx_dir), "--max-new-tokens", "2", "--truncate", "left",
        "-f", str(prompt),
    )
    assert result.returncode == 0, result.err
    assert "dropped the first" in result.err
    _assert_escaped(result.err)


def test_a_warning_naming_a_model_directory_is_escaped(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / EVIL
    shutil.copytree(tiny_onnx_dir, model)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (model / name).unlink(missing_ok=True)
    result = run_cli("generate", "-m", str(model), "--max-new-tokens", "2", "Hello")
    assert result.returncode == 0, result.err
    assert "no tokenizer files" in result.err
    _assert_escaped(result.err)


def test_an_error_with_stderr_closed_writes_nothing_to_stdout(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", "-c", f'"{GPT2CLI}" tokenize -f missing.txt 2>&-'],
        capture_output=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stdout == b""
