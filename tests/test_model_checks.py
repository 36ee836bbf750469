"""Model-directory checks that a bad-input row cannot express: the ONNX protobuf reader, the
safetensors header reader, the checkpoint error wording, the generation settings' coercion, the
--threads bound and onnxruntime's log level."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gpt2cli.errors import InputError, ModelError


def test_initializer_dims_reads_the_embedding_tables(tiny_onnx_dir: Path) -> None:
    from gpt2cli.backends.onnx import initializer_dims

    dims = initializer_dims(
        tiny_onnx_dir / "model.onnx", {"transformer.wte.weight", "transformer.wpe.weight"}
    )
    assert dims == {"transformer.wte.weight": [50257, 64], "transformer.wpe.weight": [1024, 64]}


def test_initializer_dims_gives_up_quietly_on_damaged_files(tmp_path: Path) -> None:
    from gpt2cli.backends.onnx import initializer_dims

    for content in (b"", b"\xff" * 20, b"\x3a\xff\xff\xff\xff\x0f", b"not protobuf at all"):
        (tmp_path / "model.onnx").write_bytes(content)
        assert initializer_dims(tmp_path / "model.onnx", {"transformer.wpe.weight"}) == {}


def test_initializer_dims_matches_onnx(tiny_onnx_int8_dir: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from gpt2cli.backends.onnx import initializer_dims

    path = tiny_onnx_int8_dir / "model.onnx"
    graph = onnx.load(str(path), load_external_data=False).graph
    expected = {t.name: list(t.dims) for t in graph.initializer}
    assert initializer_dims(path, set(expected)) == expected


def test_safetensors_header_shapes_and_truncation(tiny_model_dir: Path, tmp_path: Path) -> None:
    from gpt2cli.model_files import safetensors_shapes

    shapes = safetensors_shapes(tiny_model_dir / "model.safetensors")
    assert shapes["transformer.wpe.weight"] == [1024, 64]
    damaged = tmp_path / "model.safetensors"
    data = (tiny_model_dir / "model.safetensors").read_bytes()
    damaged.write_bytes(data[: len(data) - 1])
    with pytest.raises(ModelError, match="model.safetensors: truncated"):
        safetensors_shapes(damaged)
    damaged.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelError, match="no valid header"):
        safetensors_shapes(damaged)


def test_sharded_safetensors_are_checked_across_shards(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    from gpt2cli.model_files import check_torch_weights, read_config

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, model / shard)
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    check_torch_weights(model, read_config(model))
    config = read_config(model) | {"n_layer": 4}
    with pytest.raises(ModelError, match="n_layer 4, but model.safetensors.index.json holds 2"):
        check_torch_weights(model, config)


def test_weights_error_names_the_first_failure() -> None:
    import pickle

    from gpt2cli.backends.torch import weights_error

    try:
        try:
            raise pickle.UnpicklingError("Trying to load unsupported GLOBAL posix.system whose")
        except pickle.UnpicklingError:
            try:
                raise OSError("If you tried to load a PyTorch model from a TF 2.0 checkpoint")
            except OSError:
                raise ModuleNotFoundError("No module named 'tensorflow'") from None
    except ModuleNotFoundError as exc:
        # `from None` hides the cause from tracebacks but keeps it as the context
        message = weights_error(exc)
    assert "posix.system" in message and "tensorflow" not in message


def test_generation_settings_are_coerced_or_refused(tmp_path: Path) -> None:
    from gpt2cli.model_files import check_generation_settings

    checked = check_generation_settings(
        "g.json", {"top_k": 40.0, "temperature": 1, "max_new_tokens": None, "foo": "bar"}, 100
    )
    assert checked == {"top_k": 40, "temperature": 1.0, "foo": "bar"}
    assert type(checked["top_k"]) is int
    for bad in (
        {"top_k": True},
        {"temperature": float("nan")},
        {"top_p": 0},
        {"max_length": 10**30},
        {"eos_token_id": [1, 100]},
        {"eos_token_id": True},
        {"repetition_penalty": float("inf")},
    ):
        with pytest.raises(ModelError, match=r"g\.json: .*a fault in the model's files"):
            check_generation_settings("g.json", bad, 100)


def test_threads_bound_follows_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpt2cli import tokenizer

    monkeypatch.setattr(tokenizer.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert tokenizer.max_threads() == 12
    assert tokenizer.check_threads(12) == 12
    with pytest.raises(InputError, match="threads: must be from 1 to 12") as caught:
        tokenizer.check_threads(13)
    assert caught.value.param == "threads"


def test_onnxruntime_logs_nothing_unless_debug(tiny_onnx_dir: Path) -> None:
    from gpt2cli.backends.onnx import log_severity
    from gpt2cli.outputs import Settings

    assert log_severity() == 4
    saved = Settings.debug
    try:
        Settings.debug = True
        assert log_severity() == 2
    finally:
        Settings.debug = saved


def test_onnxruntime_failures_at_run_time_are_one_model_error(tiny_onnx_dir: Path) -> None:
    import numpy as np

    from gpt2cli.loader import load_backend

    backend = load_backend(str(tiny_onnx_dir))
    ids = np.array([[1]], dtype=np.int64)
    mask = np.ones((1, 1), dtype=np.int64)
    with pytest.raises(ModelError, match=r"model\.onnx: onnxruntime failed: "):
        backend.forward(ids, mask, np.array([[5000]], dtype=np.int64))  # past the position table
