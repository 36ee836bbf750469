"""`info`: a model described from its files alone: sizes, files, backends, generation defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2cli.generation_params import TRANSFORMERS_DEFAULTS
from tests.clirun import assert_one_line_error, run_cli, run_in_process


def _info(*args: str) -> dict:
    result = run_in_process("info", *args, "--format", "json")
    assert result.returncode == 0, result.err
    return json.loads(result.out)


def test_info_of_a_torch_directory(tiny_model_dir: Path) -> None:
    report = _info("-m", str(tiny_model_dir))
    assert (report["n_layer"], report["n_head"], report["n_embd"]) == (2, 2, 64)
    assert (report["context_length"], report["vocab_size"]) == (1024, 50257)
    assert report["eos_token_id"] == report["bos_token_id"] == 50256
    assert report["backends"] == ["torch"] and report["auto_backend"] == "torch"
    assert report["export"] is None and report["quantization"] is None
    # The safetensors header's count is the model's own (tied output layer counted once).
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    assert report["parameters"] == sum(p.numel() for p in hf.parameters())
    assert report["parameters_from"] == "model.safetensors header"
    files = {f["name"]: f for f in report["files"]}
    weights = tiny_model_dir / "model.safetensors"
    assert files["model.safetensors"]["bytes"] == weights.stat().st_size
    assert files["model.safetensors"]["role"] == "torch weights (safetensors)"
    assert report["total_bytes"] == sum(f["bytes"] for f in report["files"])
    # gpt2's task_specific_params over transformers' defaults
    from_model = report["generation_settings_from_model"]
    assert {k: from_model[k] for k in ("do_sample", "max_length")} == {
        "do_sample": True, "max_length": 50
    }  # fmt: skip
    # what generate applies: the pipeline's 256 new tokens, since generation_config.json sets no
    # length (task_specific_params' max_length 50 does not replace it, as in transformers)
    assert report["generation_defaults"] == {**TRANSFORMERS_DEFAULTS, "do_sample": True,
                                             "max_length": 50, "max_new_tokens": 256}  # fmt: skip


def test_info_of_an_int8_export(tiny_onnx_int8_dir: Path, tiny_model_dir: Path) -> None:
    report = _info("-m", str(tiny_onnx_int8_dir))
    assert report["backends"] == ["onnx"] and report["auto_backend"] == "onnx"
    assert report["quantization"]["method"].startswith("onnxruntime MatMulNBits 8-bit")
    assert report["export"]["dtype"] == "float32"
    assert report["export"]["source"] == str(tiny_model_dir)
    # No safetensors: the count comes from config.json's sizes, and agrees with the header's.
    assert report["parameters_from"] == "config.json"
    assert report["parameters"] == _info("-m", str(tiny_model_dir))["parameters"]
    roles = {f["name"]: f["role"] for f in report["files"]}
    assert roles["model.onnx"] == "ONNX graph"
    assert roles["gpt2cli-export.json"] == "export manifest"
    assert any(r == "ONNX weights (external data)" for r in roles.values())


def test_info_text_and_output_file(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    result = run_cli("info", "-m", str(tiny_onnx_dir))
    assert result.returncode == 0 and result.err == "", result.err
    lines = result.out.splitlines()
    fields = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in lines
              if not line.startswith(" ") and "  " in line}  # fmt: skip
    assert fields["context"] == "1024 tokens"
    assert fields["backends"] == "onnx (auto picks onnx)"
    assert fields["architecture"].startswith("gpt2: 2 layers, 2 heads, 64 wide")
    assert any(line.strip().startswith("model.onnx ") for line in lines)
    assert any(line.split() == ["do_sample", "true", "model"] for line in lines)
    target = tmp_path / "info.json"
    written = run_cli("info", "-m", str(tiny_onnx_dir), "--json", "-o", str(target))
    assert written.returncode == 0 and written.out == "", written.err
    assert json.loads(target.read_text())["auto_backend"] == "onnx"
    again = run_cli("info", "-m", str(tiny_onnx_dir), "-o", str(target))
    assert "already exists" in assert_one_line_error(again, 2)


def test_info_on_an_onnx_directory_imports_no_torch(tiny_onnx_dir: Path) -> None:
    code = (
        "import sys\n"
        "from gpt2cli.cli import run\n"
        f"code = run(['info', '-m', {str(tiny_onnx_dir)!r}, '--format', 'json'])\n"
        "assert code == 0, code\n"
        "heavy = {'torch', 'transformers', 'onnxruntime'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_layer"] == 2


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-m", "no/such/model/dir"], 1, "no such model directory"),
        (["-m", "gpt2"], 1, "not in the local Hub cache"),
        (["-m", ""], 2, "--model: empty"),
    ],
)
def test_info_errors(args: list[str], code: int, message: str) -> None:
    assert message in assert_one_line_error(run_cli("info", *args), code)
