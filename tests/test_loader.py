"""The model loader: resolving --model, choosing a backend, and clear errors for broken models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpt2cli.errors import CliError, InputError, MissingExtraError, ModelError
from gpt2cli.loader import load_backend, resolve_model

ROOT = Path(__file__).resolve().parent.parent


def copy_model(source: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    shutil.copytree(source, target, ignore=lambda _dir, names: [n for n in names if n in skip])
    return target


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (for import blocking and Hub environment variables)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_torch_backend_info_and_generation_defaults(tiny_model_dir: Path) -> None:
    backend = load_backend(str(tiny_model_dir))
    assert backend.name == "torch"
    info = backend.info
    assert (info.vocab_size, info.n_positions, info.n_layer, info.n_head, info.n_embd) == (
        50257, 1024, 2, 2, 64,
    )
    assert info.eos_token_id == info.bos_token_id == 50256
    assert info.model_dir == tiny_model_dir
    # generation_config.json, then task_specific_params["text-generation"] on top (as the pipeline)
    assert info.generation_defaults["do_sample"] is True
    assert info.generation_defaults["max_length"] == 50
    assert info.generation_defaults["eos_token_id"] == 50256
    assert backend.tokenizer.encode("Hello, I'm a language model,") == [
        15496, 11, 314, 1101, 257, 3303, 2746, 11,
    ]


def test_task_params_override_generation_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "m")
    generation = json.loads((model / "generation_config.json").read_text())
    generation.update(max_length=20, top_k=7)
    (model / "generation_config.json").write_text(json.dumps(generation))
    defaults = load_backend(str(model)).info.generation_defaults
    assert defaults["top_k"] == 7 and defaults["max_length"] == 50


def test_pytorch_bin_weights_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    target = copy_model(tiny_model_dir, tmp_path / "bin", skip=("model.safetensors",))
    model.save_pretrained(target, safe_serialization=False)
    assert (target / "pytorch_model.bin").is_file() and not (target / "model.safetensors").exists()
    ids = np.array([[15496, 11, 314]], dtype=np.int64)
    mask, positions = np.ones_like(ids), np.arange(3)[None]
    a = load_backend(str(target)).forward(ids, mask, positions).logits
    b = load_backend(str(tiny_model_dir)).forward(ids, mask, positions).logits
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_missing_config_is_a_model_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "m", skip=("config.json",))
    with pytest.raises(ModelError, match="no config.json"):
        load_backend(str(model))


def test_invalid_config_is_a_model_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "m")
    (model / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_backend(str(model))
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelError, match="not the GPT-2 architecture"):
        load_backend(str(model))


def test_truncated_safetensors_is_one_line_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "m")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match="cannot load the weights") as caught:
        load_backend(str(model))
    assert "\n" not in caught.value.message


def test_missing_weights_is_a_model_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "m", skip=("model.safetensors",))
    with pytest.raises(ModelError, match="incomplete model directory"):
        load_backend(str(model))


def test_nonexistent_directory_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model directory"):
        load_backend(str(tmp_path / "nope" / "model"))


def test_bad_choices_are_input_errors(tiny_model_dir: Path) -> None:
    from gpt2cli.cli import cli_name

    for param, value, choices in (
        ("backend", "tensorflow", "auto, torch, onnx"),
        ("dtype", "int3", "float32, bfloat16, float16"),
        ("device", "tpu", "cpu, cuda"),
    ):
        with pytest.raises(InputError) as caught:
            load_backend(str(tiny_model_dir), **{param: value})
        assert caught.value.param == param
        assert caught.value.render(cli_name) == (
            f"--{param}: expected one of {choices}, got {value!r}"
        )


def test_backend_choices_come_from_the_registry() -> None:
    from gpt2cli.backends import registry
    from gpt2cli.options import BackendName, DeviceName, DtypeName

    assert [b.value for b in BackendName] == ["auto", "torch", "onnx"] == list(registry.CHOICES)
    assert [d.value for d in DeviceName] == ["cpu", "cuda"]
    assert [d.value for d in DtypeName] == ["float32", "bfloat16", "float16"]
    assert BackendName.onnx == "onnx" and isinstance(BackendName.auto, str)


def test_auto_choice_from_the_registry(
    tiny_model_dir: Path, tiny_onnx_dir: Path, tmp_path: Path
) -> None:
    from gpt2cli.backends import registry

    assert registry.choose_local(tiny_model_dir) == "torch"
    assert registry.choose_local(tiny_onnx_dir) == "onnx"
    assert registry.choose_local(tmp_path) == registry.DEFAULT  # neither: torch's error follows
    assert registry.choose_hub(tiny_onnx_dir) == "onnx"  # its manifest marks an export
    assert registry.choose_hub(tmp_path) == "torch"


def test_enum_option_values_are_accepted(tiny_model_dir: Path) -> None:
    from gpt2cli.options import BackendName, DeviceName, DtypeName

    backend = load_backend(
        str(tiny_model_dir), BackendName.torch, DeviceName.cpu, DtypeName.float32
    )
    assert backend.name == "torch"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tiny_model_dir: Path) -> None:
    with pytest.raises(CliError, match="CUDA is not available"):
        load_backend(str(tiny_model_dir), backend="torch", device="cuda")


def test_threads_sets_torch_threads(tiny_model_dir: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        load_backend(str(tiny_model_dir), backend="torch", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


BLOCK_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError, as if not installed
sys.modules["transformers"] = None
"""


def test_torch_backend_without_torch_names_the_extra(tiny_model_dir: Path) -> None:
    result = run_python(
        BLOCK_TORCH
        + f"""
from gpt2cli.errors import MissingExtraError
from gpt2cli.loader import load_backend
try:
    load_backend({str(tiny_model_dir)!r}, backend="torch")
except MissingExtraError as exc:
    print(exc.message)
"""
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'gpt2cli[torch]'" in result.stdout
    assert MissingExtraError("the torch backend", "torch").message in result.stdout


def make_hub_cache(hf_home: Path, repo: str, model_dir: Path) -> Path:
    """A Hugging Face cache holding `model_dir` as the `main` snapshot of `repo`."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    shutil.copytree(model_dir, snapshot)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def test_hub_id_resolves_from_the_offline_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    snapshot = make_hub_cache(tmp_path / "hf", "someone/tiny-gpt2", tiny_model_dir)
    result = run_python(
        """
from gpt2cli.loader import resolve_model, load_backend
directory, chosen = resolve_model("someone/tiny-gpt2")
print(directory, chosen, load_backend("someone/tiny-gpt2").info.n_layer)
""",
        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(snapshot), "torch", "2"]


def test_unknown_hub_id_offline_is_one_clear_line(tmp_path: Path) -> None:
    result = run_python(
        """
from gpt2cli.errors import ModelError
from gpt2cli.loader import load_backend
try:
    load_backend("someone/not-cached-anywhere")
except ModelError as exc:
    print(exc.message)
""",
        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith("someone/not-cached-anywhere: not in the local Hub cache")


def test_local_directory_choice(tiny_model_dir: Path) -> None:
    assert resolve_model(str(tiny_model_dir)) == (tiny_model_dir, "torch")
    assert resolve_model(str(tiny_model_dir), "onnx") == (tiny_model_dir, "onnx")


def test_truncated_onnx_is_one_line_model_error(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_onnx_dir, tmp_path / "m")
    graph = model / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 3])
    with pytest.raises(ModelError, match="cannot load the ONNX model") as caught:
        load_backend(str(model))
    assert "\n" not in caught.value.message


def test_onnx_dir_missing_config_is_a_model_error(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_onnx_dir, tmp_path / "m", skip=("config.json",))
    with pytest.raises(ModelError, match="no config.json"):
        load_backend(str(model))


def test_torch_on_an_onnx_export_says_so(tiny_onnx_dir: Path) -> None:
    from gpt2cli.cli import cli_name

    with pytest.raises(ModelError) as caught:
        load_backend(str(tiny_onnx_dir), backend="torch")
    assert caught.value.render(cli_name).endswith(
        "no model.safetensors or pytorch_model.bin: incomplete model directory "
        "(it holds an ONNX export: use --backend onnx)"
    )


def test_onnx_on_a_pytorch_model_says_how_to_export(tiny_model_dir: Path) -> None:
    from gpt2cli.cli import cli_name

    with pytest.raises(ModelError, match="export-onnx") as caught:
        load_backend(str(tiny_model_dir), backend="onnx")
    assert caught.value.render(cli_name).endswith(
        "DIR` (it holds PyTorch weights: use --backend torch)"
    )


def test_onnx_export_not_matching_config_is_a_model_error(
    tiny_onnx_dir: Path, tmp_path: Path
) -> None:
    model = copy_model(tiny_onnx_dir, tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    config["n_layer"] = 3
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="n_layer 3, but model.onnx has 2"):
        load_backend(str(model))


def test_hub_id_of_an_export_picks_onnx(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    make_hub_cache(tmp_path / "hf", "someone/tiny-gpt2-onnx", tiny_onnx_dir)
    result = run_python(
        """
from gpt2cli.loader import load_backend
print(load_backend("someone/tiny-gpt2-onnx").name)
""",
        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "onnx"


def test_truncated_onnx_weights_are_one_line_model_error(
    tiny_onnx_dir: Path, tmp_path: Path
) -> None:
    model = copy_model(tiny_onnx_dir, tmp_path / "m")
    weights = model / "model.onnx_data"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match="cannot load the ONNX model") as caught:
        load_backend(str(model))
    assert "\n" not in caught.value.message
