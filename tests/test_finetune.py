"""`gpt2cli finetune clm` (and what every task shares: data errors, the output directory, LoRA,
--resume after SIGKILL) on the tiny random-weight model with the real vocabulary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.clirun import assert_one_line_error, run_in_process
from tests.models import MEMORISED_PARAGRAPH

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("peft")


def _finetune(*args: str) -> dict:
    result = run_in_process("finetune", *args, "--threads", "1", "--format", "json")
    assert result.returncode == 0, result.err
    return json.loads(result.out)


@pytest.fixture(scope="module")
def paragraph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "paragraph.txt"
    path.write_text(MEMORISED_PARAGRAPH, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def clm_dir(tiny_model_dir: Path, paragraph: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("clm") / "model"
    manifest = _finetune(
        "clm", "-m", str(tiny_model_dir), "--train", str(paragraph), "--valid", str(paragraph),
        "-o", str(out), "--max-steps", "60", "--lr", "6e-3", "--batch-size", "1",
    )
    return out, manifest


def test_clm_lowers_perplexity_and_generate_recites(clm_dir: tuple[Path, dict]) -> None:
    out, manifest = clm_dir
    assert manifest["final_eval"]["perplexity"] <= 0.5 * manifest["initial_eval"]["perplexity"]
    on_disk = json.loads((out / "gpt2cli-finetune.json").read_text())
    assert on_disk["format"] == "gpt2cli-finetune" and on_disk["task"] == "clm"
    assert on_disk["data"]["train"]["sha256"] and on_disk["libraries"]["peft"]
    assert set(on_disk["files"]) == {p.name for p in out.iterdir()} - {"gpt2cli-finetune.json"}
    words = MEMORISED_PARAGRAPH.split()
    result = run_in_process("generate", "-m", str(out), "--greedy", "--max-new-tokens", "60",
                            " ".join(words[:4]))
    assert result.returncode == 0, result.err
    assert MEMORISED_PARAGRAPH in result.out


def test_clm_output_scores_and_exports(clm_dir: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = clm_dir
    scored = run_in_process("score", "-m", str(out), "--format", "json", MEMORISED_PARAGRAPH)
    assert scored.returncode == 0, scored.err
    assert json.loads(scored.out)[0]["perplexity"] < 20
    exported = run_in_process("export-onnx", str(out), str(tmp_path / "onnx"))
    assert exported.returncode == 0, exported.err
    manifest = json.loads((tmp_path / "onnx" / "gpt2cli-export.json").read_text())
    assert manifest["validation"]["max_abs_logit_diff"] < 1e-3


def test_existing_output_needs_force_and_force_replaces_only_finetune_output(
    clm_dir: tuple[Path, dict], tiny_model_dir: Path, paragraph: Path, tmp_path: Path
) -> None:
    out, _ = clm_dir
    common = ("finetune", "clm", "-m", str(tiny_model_dir), "--train", str(paragraph))
    message = assert_one_line_error(run_in_process(*common, "-o", str(out)))
    assert "already exists" in message and "--force" in message
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    message = assert_one_line_error(run_in_process(*common, "-o", str(other), "--force"))
    assert "only a previous finetune output" in message
    assert (other / "notes.txt").read_text() == "mine"
    # A previous output plus a foreign file: refused too.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("gpt2cli-finetune.json", "config.json"):
        (copy / name).write_bytes((out / name).read_bytes())
    (copy / "extra.bin").write_text("x")
    assert "extra.bin" in assert_one_line_error(
        run_in_process(*common, "-o", str(copy), "--force"))


@pytest.mark.parametrize(
    ("task", "name", "content", "expected"),
    [
        ("clm", "t.jsonl", '{"text": "ok"}\n{"txt": "no"}\n', "t.jsonl:2: no field 'text'"),
        ("clm", "t.jsonl", '{"text": "ok"}\n{bad\n', "t.jsonl:2: not valid JSON"),
        ("classify", "t.csv", "text,label\nhello,joy\nbye\n", "t.csv:3: 1 columns"),
        ("classify", "t.jsonl", '{"text": "a", "label": [1]}\n', "t.jsonl:1: label: expected"),
        ("ner", "t.conll", "-DOCSTART- O\n\nJohn B-PER\nalone\n", "t.conll:4: expected a token"),
        ("ner", "t.jsonl", '{"tokens": ["a", "b"], "ner_tags": ["O"]}\n', "t.jsonl:1: ner_tags"),
        ("clm", "t.txt", " \n", "t.txt: input is only whitespace"),
    ],
)
def test_bad_rows_name_the_file_and_line(
    tiny_model_dir: Path, tmp_path: Path, task: str, name: str, content: str, expected: str
) -> None:
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    result = run_in_process("finetune", task, "-m", str(tiny_model_dir), "--train", str(data),
                            "-o", str(tmp_path / "out"))
    message = assert_one_line_error(result)
    assert expected in message.replace(str(tmp_path) + "/", "")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.finetune").exists()


def test_without_the_train_extra_the_command_names_it(
    tiny_model_dir: Path, paragraph: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` fails, as when not installed
    result = run_in_process("finetune", "clm", "-m", str(tiny_model_dir), "--train",
                            str(paragraph), "-o", str(tmp_path / "out"))
    assert result.returncode == 1, result.err
    assert "pip install 'gpt2cli[train]'" in result.err
    assert result.out == "" and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ LoRA


def _logits(model, ids: list[int]) -> np.ndarray:  # noqa: ANN001
    import torch

    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def test_lora_trains_only_adapters_and_merge_equals_adapter(
    tiny_model_dir: Path, paragraph: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    from gpt2cli.loader import load_backend

    common = ("clm", "-m", str(tiny_model_dir), "--train", str(paragraph), "--max-steps", "8",
              "--lr", "1e-2", "--batch-size", "1", "--lora", "--lora-r", "4", "--seed", "5")
    adapter = _finetune(*common, "-o", str(tmp_path / "adapter"))
    merged = _finetune(*common, "--merge", "-o", str(tmp_path / "merged"))
    # r=4 on c_attn (64 -> 192) and attn.c_proj (64 -> 64) of 2 layers.
    expected = 2 * (4 * (64 + 192) + 4 * (64 + 64))
    assert adapter["parameters"]["trainable"] == merged["parameters"]["trainable"] == expected
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()

    ids = [464, 22978, 8658, 19952, 262, 23642, 16046]
    base = GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval()
    unmerged = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with_adapter = _logits(unmerged, ids)
    whole = _logits(GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval(), ids)
    np.testing.assert_allclose(whole, with_adapter, atol=1e-5)
    # gpt2cli's loader applies the adapter: the same logits from the adapter directory.
    backend = load_backend(str(tmp_path / "adapter"), "torch", threads=1)
    array = np.array([ids])
    got = backend.forward(array, np.ones_like(array), np.arange(len(ids))[None], logits="all")
    np.testing.assert_allclose(got.logits[0], with_adapter, atol=1e-5)


def test_a_lora_target_that_matches_nothing_is_an_error(
    tiny_model_dir: Path, paragraph: Path, tmp_path: Path
) -> None:
    result = run_in_process("finetune", "clm", "-m", str(tiny_model_dir), "--train",
                            str(paragraph), "-o", str(tmp_path / "out"), "--lora",
                            "--lora-targets", "c_attn,q_proj")
    message = assert_one_line_error(result)
    assert "--lora-targets: 'q_proj' matches no module" in message
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- resume


def test_resume_after_sigkill_ends_with_the_uninterrupted_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import load_file

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": f"{MEMORISED_PARAGRAPH} {i}"}) + "\n"
                            for i in range(6)), encoding="utf-8")
    args = ["finetune", "clm", "-m", str(tiny_model_dir), "--train", str(data), "--block-size",
            "16", "--max-steps", "12", "--batch-size", "4", "--save-every", "4", "--seed", "3",
            "--lr", "1e-3", "--threads", "1"]
    whole = tmp_path / "whole"
    assert run_in_process(*args, "-o", str(whole)).returncode == 0
    killed = tmp_path / "killed"
    staging = tmp_path / ".killed.finetune"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2cli", *args, "-o", str(killed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        marker = staging / "checkpoints" / "checkpoint-8" / "trainer_state.json"
        while not marker.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.is_file(), "no checkpoint-8 before the run ended"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not killed.exists()
    # Without --resume the checkpoints are not silently thrown away.
    message = assert_one_line_error(run_in_process(*args, "-o", str(killed)))
    assert "--resume" in message
    result = run_in_process(*args, "-o", str(killed), "--resume", "--format", "json")
    assert result.returncode == 0, result.err
    manifest = json.loads(result.out)
    assert manifest["train"]["resumed_from"] in ("checkpoint-8", "checkpoint-12")
    assert manifest["train"]["steps"] == 12
    assert not staging.exists()
    expected, got = (load_file(d / "model.safetensors") for d in (whole, killed))
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_fused_gelu_is_gelu_new_in_one_kernel(tiny_model_dir: Path,
                                              clm_dir: tuple[Path, dict]) -> None:
    """The trainer's GELU swap changes neither the function (forward and gradients within
    float32 rounding) nor the saved model's config."""
    import torch
    from transformers import GPT2LMHeadModel

    from gpt2cli.training.trainer import fuse_gelu

    ids = torch.tensor([[15496, 11, 314, 1101, 257, 3303, 2746, 11]])
    results = []
    for fused in (False, True):
        model = GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval()
        if fused:
            assert fuse_gelu(model) == model.config.n_layer
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        grad = model.transformer.h[0].mlp.c_fc.weight.grad
        results.append((out.logits.detach(), grad.clone()))
    (logits, grad), (fused_logits, fused_grad) = results
    torch.testing.assert_close(fused_logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_grad, grad, rtol=1e-4, atol=1e-6)
    out, _ = clm_dir
    assert json.loads((out / "config.json").read_text())["activation_function"] == "gelu_new"
