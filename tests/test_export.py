"""export-onnx: the real console script and the export engine, on the tiny test models."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2cli.backends.base import position_ids_from_mask
from gpt2cli.exporting import ExportOptions, export_model
from gpt2cli.loader import load_backend
from gpt2cli.model_files import MANIFEST_NAME
from tests.clirun import assert_one_line_error, run_cli
from tests.models import MEMORISED_PARAGRAPH, MEMORISED_PROMPT_TOKENS, greedy_continue

ROOT = Path(__file__).resolve().parent.parent
METADATA = ["config.json", "generation_config.json", "tokenizer.json", "vocab.json", "merges.txt"]


def leftovers(parent: Path) -> list[str]:
    """Temporary export directories left beside OUTDIR."""
    return [p.name for p in parent.iterdir() if p.name.endswith(".tmp")]


def graph(directory: Path):  # noqa: ANN201
    import onnx

    return onnx.load(str(directory / "model.onnx"), load_external_data=False)


def memorised_greedy(directory: Path) -> str:
    backend = load_backend(str(directory))
    ids = backend.tokenizer.encode(MEMORISED_PARAGRAPH)
    produced = greedy_continue(backend, ids[:MEMORISED_PROMPT_TOKENS], len(ids))
    return backend.tokenizer.decode(ids[:MEMORISED_PROMPT_TOKENS] + produced)


def test_cli_export_validates_and_writes_everything(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "tiny-onnx"
    result = run_cli("export-onnx", str(tiny_model_dir), str(out))
    assert result.returncode == 0, result.err
    assert result.out.startswith("max abs logit diff vs PyTorch: ")
    assert float(result.out.split(":")[1]) < 1e-4
    assert "Traceback" not in result.err
    for name in ["model.onnx", MANIFEST_NAME, *METADATA]:
        assert (out / name).is_file(), name
    assert leftovers(out.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700

    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["source"] == str(tiny_model_dir)
    assert manifest["task"] == "text-generation-with-past"
    assert manifest["opset"] >= 14
    assert manifest["quantization"] is None
    validation = manifest["validation"]
    assert validation["max_abs_logit_diff"] < 1e-4 and validation["top1_agreement"] == 1.0
    assert validation["decode_steps"] == 20
    assert manifest["libraries"]["onnxruntime"] and manifest["libraries"]["optimum"]
    assert manifest["files"]["model.onnx_data"] == (out / "model.onnx_data").stat().st_size

    # An existing OUTDIR is refused unless --force, and left as it was.
    before = (out / "model.onnx").read_bytes()
    refused = run_cli("export-onnx", str(tiny_model_dir), str(out), "--no-validate")
    assert "already exists" in assert_one_line_error(refused, 2)
    assert (out / "model.onnx").read_bytes() == before

    replaced = run_cli(  # -m MODEL OUTDIR, as every other command takes -m
        "export-onnx", "-m", str(tiny_model_dir), str(out), "--force", "--no-validate",
        "--quantize", "int8", "--format", "json",
    )
    assert replaced.returncode == 0, replaced.err
    manifest = json.loads(replaced.out)
    assert manifest["validation"] is None
    assert manifest["graph"] == "fused"
    assert manifest["quantization"]["method"].startswith("onnxruntime MatMulNBits 8-bit")
    assert json.loads((out / MANIFEST_NAME).read_text())["quantization"] is not None
    assert leftovers(out.parent) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["out"], "one argument (out) given: export-onnx MODEL OUTDIR, or -m MODEL OUTDIR"),
        ([], "missing OUTDIR"),
        (["-m", "{model}", "other", "out"], "and the MODEL argument 'other' differ; give one"),
        (["-m", "", "out"], "--model: empty"),
        (["{model}", "out", "--format", "jsonl"], "--format"),
        (["{model}", "out", "--json", "--format", "text"], "json and text given together"),
        # The same model both ways is fine: the OUTDIR check is what refuses this one.
        (["-m", "{model}", "{model}", "."], ".: "),
        (["-m", "{model}", "."], ".: "),
    ],
)
def test_model_option_and_arguments(
    tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [a.replace("{model}", str(tiny_model_dir)) for a in args]
    result = run_cli("export-onnx", *args, cwd=str(tmp_path))
    assert message in assert_one_line_error(result, 2)
    assert list(tmp_path.iterdir()) == []


def test_json_alias_prints_the_manifest_object(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    result = run_cli("export-onnx", "-m", str(tiny_model_dir), str(out), "--no-validate", "--json")
    assert result.returncode == 0, result.err
    manifest = json.loads(result.out)
    assert isinstance(manifest, dict) and manifest == json.loads((out / MANIFEST_NAME).read_text())


def test_failed_export_leaves_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "out"
    result = run_cli("export-onnx", str(broken), str(out))
    assert "export failed" in assert_one_line_error(result, 1)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_outdir_that_is_a_file_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("keep me")
    result = run_cli("export-onnx", str(tiny_model_dir), str(target), "--force")
    assert "not a directory" in assert_one_line_error(result, 2)
    assert target.read_text() == "keep me"


def test_ctrl_c_leaves_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2cli", "export-onnx", str(tiny_model_dir), str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 120
    while not leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the export finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    assert not out.exists()
    assert leftovers(tmp_path) == []


def weights_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("model.onnx*"))


def test_tied_embedding_is_stored_once(tiny_onnx_dir: Path) -> None:
    model = graph(tiny_onnx_dir)
    vocab_sized = [i.name for i in model.graph.initializer if 50257 in i.dims]
    assert vocab_sized == ["transformer.wte.weight"]
    head = next(n for n in model.graph.node if "logits" in n.output)
    assert (head.op_type, head.input[1]) == ("FusedMatMul", "transformer.wte.weight")
    parameters = 50257 * 64 + 1024 * 64 + 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64
    assert weights_size(tiny_onnx_dir) < 1.1 * 4 * parameters
    assert (tiny_onnx_dir / "model.onnx_data").is_file()  # mapped at load, not parsed


def test_fused_graph_is_nine_nodes_a_layer(tiny_onnx_dir: Path) -> None:
    """The default export: GPT-2 built from ONNX Runtime's fused operators; attention is one
    node a layer, appending to the cache in place (the backend binds past and present)."""
    import onnxruntime as ort

    model = graph(tiny_onnx_dir)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GroupQueryAttention") == 2 and ops.count("SkipLayerNormalization") == 4
    assert ops.count("FastGelu") == 2 and ops.count("MatMul") == 2 * 4
    assert len(ops) <= 2 * 9 + 30  # 9 a layer, the rest shared (embeddings, mask, head)
    assert not {"Where", "Softmax", "Transpose", "Concat"} & {
        n.op_type for n in model.graph.node if n.name.startswith("/h.")
    }
    assert {p.key: p.value for p in model.metadata_props} == {
        "gpt2cli.shared_cache": "1", "gpt2cli.row_lengths": "1",
    }
    manifest = json.loads((tiny_onnx_dir / MANIFEST_NAME).read_text())
    assert manifest["graph"] == "fused"
    session = ort.InferenceSession(str(tiny_onnx_dir / "model.onnx"))
    assert session.get_modelmeta().custom_metadata_map["gpt2cli.shared_cache"] == "1"
    assert session.get_modelmeta().custom_metadata_map["gpt2cli.row_lengths"] == "1"


def test_attention_scale_is_folded_so_key_transpose_fuses(
    tiny_optimum_onnx_dir: Path, tmp_path: Path
) -> None:
    """optimum's graph: each layer's q @ k^T takes the transposed key directly, and ONNX
    Runtime fuses the transpose into the matmul instead of transposing the whole key cache
    every step."""
    import onnxruntime as ort

    tiny_onnx_dir = tiny_optimum_onnx_dir
    model = graph(tiny_onnx_dir)
    producer = {o: n for n in model.graph.node for o in n.output}
    score_matmuls = [
        n for n in model.graph.node
        if n.op_type == "MatMul" and producer.get(n.input[1]) is not None
        and producer[n.input[1]].op_type == "Transpose"
    ]
    assert len(score_matmuls) == 2  # the tiny model's two layers
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tiny_onnx_dir / "model.onnx"), options)
    optimized = graph_file(tmp_path / "optimized.onnx")
    fused = [n for n in optimized.graph.node if n.op_type == "FusedMatMul"]
    assert len(fused) == 3  # the two attention scores and the tied vocabulary projection
    key_transposes = [
        n for n in optimized.graph.node
        if n.op_type == "Transpose" and [list(a.ints) for a in n.attribute] == [[0, 1, 3, 2]]
    ]
    assert key_transposes == []


def sdpa_scores_graph():  # noqa: ANN201
    """q @ k^T as torch's SDPA decomposition exports it: both sides scaled by head_dim ** -0.25."""
    from onnx import TensorProto, helper, numpy_helper

    def tensor(name: str, length: int):  # noqa: ANN202
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 2, length, 64])

    nodes = [
        helper.make_node("Sqrt", ["inverse_sqrt_dim"], ["root"]),
        helper.make_node("Mul", ["q", "root"], ["q_scaled"]),
        helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 1, 3, 2]),
        helper.make_node("Sqrt", ["inverse_sqrt_dim"], ["root_2"]),
        helper.make_node("Mul", ["k_t", "root_2"], ["k_t_scaled"]),
        helper.make_node("MatMul", ["q_scaled", "k_t_scaled"], ["scores"]),
    ]
    scale = numpy_helper.from_array(np.array(1 / 8, dtype=np.float32), "inverse_sqrt_dim")
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, 3, 5])
    body = helper.make_graph(nodes, "scores", [tensor("q", 3), tensor("k", 5)], [scores], [scale])
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_attention_scale_fold_keeps_the_scores(tmp_path: Path) -> None:
    import onnxruntime as ort

    from gpt2cli.exporting import fold_attention_scale

    config = {"n_embd": 128, "n_head": 2}
    assert fold_attention_scale(sdpa_scores_graph(), {**config, "scale_attn_weights": False}) == 0
    assert fold_attention_scale(
        sdpa_scores_graph(), {**config, "scale_attn_by_inverse_layer_idx": True}
    ) == 0
    folded = sdpa_scores_graph()
    assert fold_attention_scale(folded, config) == 1
    assert [n.op_type for n in folded.graph.node] == ["Mul", "Transpose", "MatMul"]
    assert fold_attention_scale(folded, config) == 0  # nothing left to fold

    rng = np.random.default_rng(0)
    feeds = {
        "q": rng.standard_normal((1, 2, 3, 64), dtype=np.float32),
        "k": rng.standard_normal((1, 2, 5, 64), dtype=np.float32),
    }
    expected = feeds["q"] @ feeds["k"].transpose(0, 1, 3, 2) / 8
    for model in (sdpa_scores_graph(), folded):
        cpu = ["CPUExecutionProvider"]
        session = ort.InferenceSession(model.SerializeToString(), providers=cpu)
        np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-5, atol=1e-5)


def graph_file(path: Path):  # noqa: ANN201
    import onnx

    return onnx.load(str(path), load_external_data=False)


@pytest.mark.parametrize("which", ["fused", "optimum"])
def test_export_adds_hidden_states_and_logits_to_keep(
    which: str, tiny_onnx_dir: Path, tiny_optimum_onnx_dir: Path
) -> None:
    model = graph(tiny_onnx_dir if which == "fused" else tiny_optimum_onnx_dir)
    outputs = [o.name for o in model.graph.output]
    assert outputs[:5] == [
        "logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value",
    ]
    assert outputs[5:] == ["hidden_states.0", "hidden_states.1", "hidden_states.2"]
    assert "logits_to_keep" in {i.name for i in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    assert inputs == {
        "input_ids", "attention_mask", "position_ids", "logits_to_keep",
        *(f"past_key_values.{layer}.{kind}" for layer in (0, 1) for kind in ("key", "value")),
    }


@pytest.mark.parametrize("which", ["fused", "optimum"])
def test_optimum_loads_the_export(
    which: str, tiny_model_dir: Path, tiny_onnx_dir: Path, tiny_optimum_onnx_dir: Path
) -> None:
    tiny_onnx_dir = tiny_onnx_dir if which == "fused" else tiny_optimum_onnx_dir
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import GPT2LMHeadModel

    ort_model = ORTModelForCausalLM.from_pretrained(tiny_onnx_dir)
    reference = GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[15496, 11, 314, 1101, 257, 3303, 2746, 11]])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        got = ort_model(input_ids=ids, attention_mask=mask).logits
        expected = reference(input_ids=ids, attention_mask=mask).logits
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-4
        kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 50256}
        generated = ort_model.generate(ids, attention_mask=mask, **kwargs)
        assert generated.tolist() == reference.generate(ids, attention_mask=mask, **kwargs).tolist()


def test_int8_export_quantizes_every_weight_matrix(tiny_onnx_int8_dir: Path) -> None:
    model = graph(tiny_onnx_int8_dir)
    ops = [n.op_type for n in model.graph.node]
    assert "MatMul" not in ops
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 * 4 + 1  # four per block, plus the vocabulary projection
    attributes = {a.name: a.i for a in nbits[0].attribute}
    assert attributes["bits"] == 8 and attributes["accuracy_level"] == 4
    manifest = json.loads((tiny_onnx_int8_dir / MANIFEST_NAME).read_text())
    assert manifest["quantization"]["block_size"] == 32


@pytest.mark.parametrize(
    "settings",
    [
        ExportOptions(quantize="int8", per_channel=True, graph="optimum"),
        ExportOptions(quantize="int4"),
    ],
    ids=["optimum-int8-per-channel", "int4"],
)
def test_quantized_exports_reproduce_the_memorised_paragraph(
    memorised_model_dir: Path, tmp_path: Path, settings: ExportOptions
) -> None:
    out = tmp_path / "quantized"
    manifest = export_model(str(memorised_model_dir), out, settings)
    assert manifest["validation"]["top1_agreement"] > 0.9
    assert memorised_greedy(out) == MEMORISED_PARAGRAPH + "<|endoftext|>"
    if settings.graph == "optimum":
        ops = [n.op_type for n in graph(out).graph.node]
        assert "Gemm" not in ops
        quantized = [op for op in ops if op in ("MatMulInteger", "DynamicQuantizeMatMul")]
        assert len(quantized) == 2 * 4 + 1  # four per block, plus the vocabulary projection
        assert manifest["quantization"] == {
            "method": "onnxruntime dynamic int8", "per_channel": True,
        }
    if settings.quantize == "int4":
        nodes = graph(out).graph.node
        bits = {n.output[0]: {a.name: a.i for a in n.attribute}["bits"]
                for n in nodes if n.op_type == "MatMulNBits"}
        assert bits.pop("logits") == 8  # the vocabulary projection stays 8-bit by default
        assert set(bits.values()) == {4}
        assert manifest["quantization"]["block_size"] == 128
        ops = [n.op_type for n in nodes]
        assert ops.count("MatMulNBits") == 2 * 4 + 1
        assert ops.count("GatherBlockQuantized") == 2  # token and position embeddings


def test_external_data_export_loads_back(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """optimum's >2 GB path (its raw export already with external data), forced on the tiny
    model."""
    monkeypatch.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")
    out = tmp_path / "external"
    manifest = export_model(str(tiny_model_dir), out, ExportOptions(graph="optimum"))
    assert (out / "model.onnx_data").is_file()
    assert (out / "model.onnx").stat().st_size < 1_000_000
    assert manifest["validation"]["max_abs_logit_diff"] < 1e-4
    backend = load_backend(str(out))
    ids = np.array([[15496, 11, 314]], dtype=np.int64)
    mask = np.ones_like(ids)
    result = backend.forward(ids, mask, position_ids_from_mask(mask, 3), hidden_layer=2)
    assert result.logits.shape == (1, 50257) and result.hidden.shape == (1, 3, 64)


def test_bad_options_are_input_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    from gpt2cli.errors import InputError
    from gpt2cli.options import cli_name

    with pytest.raises(InputError, match="block_size: expected one of") as caught:
        export_model(str(tiny_model_dir), tmp_path / "x", ExportOptions("int4", block_size=48))
    assert caught.value.param == "block_size"
    assert caught.value.render(cli_name).startswith("--block-size: ")
    with pytest.raises(InputError, match="quantize: expected int8 or int4") as caught:
        export_model(str(tiny_model_dir), tmp_path / "x", ExportOptions("int3"))
    assert caught.value.render(cli_name).startswith("--quantize: ")
    assert list(tmp_path.iterdir()) == []


def test_missing_export_extra_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["optimum"] = None  # as if the 'export' extra were not installed
        from gpt2cli.errors import MissingExtraError
        from gpt2cli.exporting import export_model
        try:
            export_model({str(tiny_model_dir)!r}, {str(tmp_path / "out")!r})
        except MissingExtraError as exc:
            print(exc.message)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "pip install 'gpt2cli[export]'" in run.stdout
    assert not (tmp_path / "out").exists()
