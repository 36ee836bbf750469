"""Bad-input matrix rows: inconsistent or hostile model directories, threads, runtime logs.

The fixtures are a 2-layer, 2-head, 64-wide GPT-2 with 1024 positions and GPT-2's 50257 tokens
(tiny_model_dir, safetensors) and its ONNX export (tiny_onnx_dir). Each row damages its own copy,
work/model, in `prepare`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.badinput import Case, remove

GENERATE = ("generate", "-m", "{model}", "--max-new-tokens", "2")
SCORE = ("score", "-m", "{model}", "-f", "text.txt")
EMBED = ("embed", "-m", "{model}")
TEXT = {"text.txt": b"The quick brown fox jumps over the lazy dog.\n"}


def edit_json(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """A prepare step: rewrite work/model/`name` (a JSON object) with `change` applied."""

    def prepare(work: Path) -> None:
        path = work / "model" / name
        data = json.loads(path.read_text()) if path.exists() else {}
        change(data)
        path.write_text(json.dumps(data))

    return prepare


def config(**values: Any) -> Callable[[Path], None]:
    return edit_json("config.json", lambda data: data.update(values))


def generation(**values: Any) -> Callable[[Path], None]:
    return edit_json("generation_config.json", lambda data: data.update(values))


def task_params(**values: Any) -> Callable[[Path], None]:
    def change(data: dict[str, Any]) -> None:
        data.setdefault("task_specific_params", {}).setdefault("text-generation", {})
        data["task_specific_params"]["text-generation"].update(values)

    return edit_json("config.json", change)


def _drop_letters(tokenizer: dict[str, Any]) -> None:
    tokenizer["normalizer"] = {"type": "Replace", "pattern": {"Regex": "[a-z]"}, "content": ""}


_dropping_tokenizer = edit_json("tokenizer.json", _drop_letters)


def extra_tokenizer_token(work: Path) -> None:
    """A tokenizer.json with one added token, id 50257: one past the model's vocabulary."""
    from tokenizers import AddedToken, Tokenizer

    path = work / "model" / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.add_special_tokens([AddedToken("<|pad|>", special=True)])
    tokenizer.save(str(path))


def onnx_input_type(name: str, elem_type: str) -> Callable[[Path], None]:
    """Redeclare graph input `name` of model.onnx as `elem_type` (the weights stay external)."""

    def prepare(work: Path) -> None:
        import onnx

        path = work / "model" / "model.onnx"
        model = onnx.load(str(path), load_external_data=False)
        for graph_input in model.graph.input:
            if graph_input.name == name:
                graph_input.type.tensor_type.elem_type = getattr(onnx.TensorProto, elem_type)
        onnx.save(model, str(path))

    return prepare


class RunsCode:
    """Unpickling this calls os.system: what a hostile pytorch_model.bin does."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch pwned",))


def hostile_pickle(work: Path) -> None:
    import torch

    (work / "model" / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": RunsCode()}, work / "model" / "pytorch_model.bin")


def pickled_weights(**values: Any) -> Callable[[Path], None]:
    """The fixture's weights as pytorch_model.bin (no safetensors), config.json edited."""

    def prepare(work: Path) -> None:
        import torch
        from safetensors.torch import load_file

        model = work / "model"
        torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
        (model / "model.safetensors").unlink()
        config(**values)(work)

    return prepare


INCONSISTENT = "the model is inconsistent"
FAULT = "(a fault in the model's files)"

CASES: list[Case] = [
    # config.json sizes: refused before anything is sized from them (item 10).
    Case(
        "models: config n_layer 1e9 (onnx) refused before allocating",
        GENERATE + ("Hello",),
        1,
        f"config.json: n_layer: must be an integer from 1 to 1024, got 1000000000 {FAULT}",
        model="tiny_onnx_dir",
        prepare=config(n_layer=10**9),
        max_rss_mb=400,
        max_seconds=30,
    ),
    Case(
        "models: config n_layer 1e6 (torch) refused before allocating",
        GENERATE + ("Hello",),
        1,
        "config.json: n_layer: must be an integer from 1 to 1024, got 1000000",
        model="tiny_model_dir",
        prepare=config(n_layer=10**6),
        max_rss_mb=400,
        max_seconds=30,
    ),
    Case(
        "models: config n_layer -5",
        GENERATE + ("Hello",),
        1,
        "config.json: n_layer: must be an integer from 1 to 1024, got -5",
        model="tiny_model_dir",
        prepare=config(n_layer=-5),
    ),
    Case(
        "models: config n_layer a string",
        ("embed", "-m", "{model}", "Hello"),
        1,
        'config.json: n_layer: must be an integer from 1 to 1024, got "2"',
        model="tiny_onnx_dir",
        prepare=config(n_layer="2"),
    ),
    Case(
        "models: config n_embd not divisible by n_head",
        GENERATE + ("Hello",),
        1,
        "config.json: n_embd 64 is not divisible by n_head 3",
        model="tiny_onnx_dir",
        prepare=config(n_head=3),
    ),
    Case(
        "models: config vocab_size 0",
        SCORE,
        1,
        "config.json: vocab_size: must be an integer from 1 to 16777216, got 0",
        files=TEXT,
        model="tiny_onnx_dir",
        prepare=config(vocab_size=0),
    ),
    # config.json against the ONNX graph (item 10).
    Case(
        "models: onnx config n_layer 1 for a 2-layer graph",
        GENERATE + ("Hello",),
        1,
        f"{INCONSISTENT}: config.json says n_layer 1, but model.onnx has 2",
        model="tiny_onnx_dir",
        prepare=config(n_layer=1),
    ),
    Case(
        "models: onnx config n_layer 3 for a 2-layer graph",
        SCORE,
        1,
        f"{INCONSISTENT}: config.json says n_layer 3, but model.onnx has 2",
        files=TEXT,
        model="tiny_onnx_dir",
        prepare=config(n_layer=3),
    ),
    Case(
        "models: onnx config n_positions 4096 for a 1024-position graph",
        SCORE,
        1,
        f"{INCONSISTENT}: config.json says n_positions 4096 and n_embd 64, but model.onnx's "
        "position table is 1024x64",
        files=TEXT,
        model="tiny_onnx_dir",
        prepare=config(n_positions=4096),
    ),
    Case(
        "models: onnx config n_head 4 for a 2-head graph",
        EMBED + ("Hello",),
        1,
        f"{INCONSISTENT}: config.json gives n_head = 4, but model.onnx's past_key_values.0.key",
        model="tiny_onnx_dir",
        prepare=config(n_head=4),
    ),
    Case(
        "models: onnx config vocab_size larger than the graph's",
        GENERATE + ("Hello",),
        1,
        f"{INCONSISTENT}: config.json says vocab_size 50304 and n_embd 64, but model.onnx's "
        "token table is 50257x64",
        model="tiny_onnx_dir",
        prepare=config(vocab_size=50304),
    ),
    Case(
        "models: onnx input_ids declared int32",
        GENERATE + ("Hello",),
        1,
        "model.onnx: input input_ids is tensor(int32), expected tensor(int64)",
        model="tiny_onnx_dir",
        prepare=onnx_input_type("input_ids", "INT32"),
    ),
    Case(
        "models: onnx cache input declared double",
        GENERATE + ("Hello",),
        1,
        "model.onnx: cannot load the ONNX model",
        model="tiny_onnx_dir",
        prepare=onnx_input_type("past_key_values.1.value", "DOUBLE"),
    ),
    # config.json against the safetensors header or the pickled weights (item 10).
    Case(
        "models: torch config n_layer 3 for 2 layers of safetensors",
        GENERATE + ("Hello",),
        1,
        f"{INCONSISTENT}: config.json says n_layer 3, but model.safetensors holds 2 layers",
        model="tiny_model_dir",
        prepare=config(n_layer=3),
    ),
    Case(
        "models: torch config n_layer 1000 for 2 layers of safetensors",
        GENERATE + ("Hello",),
        1,
        f"{INCONSISTENT}: config.json says n_layer 1000, but model.safetensors holds 2 layers",
        model="tiny_model_dir",
        prepare=config(n_layer=1000),
        max_rss_mb=400,
    ),
    Case(
        "models: torch config n_positions 2048 for a 1024-position table",
        ("score", "-m", "{model}", "-f", "text.txt"),
        1,
        f"{INCONSISTENT}: config.json's n_positions and n_embd give wpe.weight 2048x64, "
        "but model.safetensors holds 1024x64",
        files=TEXT,
        model="tiny_model_dir",
        prepare=config(n_positions=2048),
    ),
    Case(
        "models: torch config n_layer 200 for 2 pickled layers",
        GENERATE + ("Hello",),
        1,
        f"{INCONSISTENT}: config.json says n_layer 200, but pytorch_model.bin holds 2 layers",
        model="tiny_model_dir",
        prepare=pickled_weights(n_layer=200),
        max_rss_mb=1500,
    ),
    Case(
        "models: export-onnx with config n_layer 5 for 2 layers",
        ("export-onnx", "{model}", "out"),
        1,
        "ONNX export failed: ",
        model="tiny_model_dir",
        prepare=config(n_layer=5),
    ),
    # Misleading messages (item 19).
    Case(
        "models: a pickle that runs code is refused, saying why (not from_tf)",
        GENERATE + ("Hello",),
        1,
        "pytorch_model.bin: the pickle would call ",
        model="tiny_model_dir",
        prepare=hostile_pickle,
    ),
    Case(
        "models: export-onnx of a pickle that runs code (not 'tensorflow')",
        ("export-onnx", "{model}", "out"),
        1,
        "pytorch_model.bin: the pickle would call ",
        model="tiny_model_dir",
        prepare=hostile_pickle,
    ),
    Case(
        "models: export-onnx of a damaged pickle (not 'tensorflow')",
        ("export-onnx", "{model}", "out"),
        1,
        "pytorch_model.bin: not a checkpoint that loads weights-only",
        model="tiny_model_dir",
        prepare=lambda work: (
            remove("model.safetensors")(work),
            (work / "model" / "pytorch_model.bin").write_bytes(b"not a pickle\n"),
        ),
    ),
    Case("models: generate -m ''", ("generate", "-m", "", "Hello"), 2, "--model: empty"),
    Case("models: score -m ''", ("score", "-m", "", "Hello"), 2, "--model: empty"),
    Case("models: tokenize -m ''", ("tokenize", "-m", "", "Hello"), 2, "--model: empty"),
    Case(
        "models: export-onnx ''",
        ("export-onnx", "", "out"),
        2,
        "the model name is empty",
    ),
    # Tokenizer against the model (items 15, 16).
    Case(
        "models: tokenizer id beyond the vocabulary",
        GENERATE + ("Hello",),
        1,
        "tokenizer.json: the tokenizer has ids up to 50257, beyond config.json's vocab_size 50257",
        model="tiny_onnx_dir",
        prepare=extra_tokenizer_token,
    ),
    Case(
        "models: tokenize -m DIR --no-parse-special",
        ("tokenize", "-m", "{model}", "--no-parse-special", "a<|endoftext|>b"),
        0,
        stdout=b"64 27 91 437 1659 5239 91 29 65\n",
        model="tiny_onnx_dir",
    ),
    Case(
        "models: tokenize -m DIR parses specials by default",
        ("tokenize", "-m", "{model}", "a<|endoftext|>b"),
        0,
        stdout=b"64 50256 65\n",
        model="tiny_onnx_dir",
    ),
    # generation_config.json and task_specific_params (item 16): the model's fault, exit 1.
    Case(
        "models: generation_config top_k a string",
        GENERATE + ("Hello",),
        1,
        f'generation_config.json: top_k: expected an integer, got "50" {FAULT}',
        model="tiny_onnx_dir",
        prepare=generation(top_k="50"),
    ),
    Case(
        "models: generation_config eos_token_id beyond the vocabulary",
        GENERATE + ("Hello",),
        1,
        "generation_config.json: eos_token_id: must be a token id from 0 to 50256 (or a list "
        "of them), got 99999999",
        model="tiny_onnx_dir",
        prepare=generation(eos_token_id=99999999),
    ),
    Case(
        "models: generation_config eos_token_id a string",
        GENERATE + ("Hello",),
        1,
        'generation_config.json: eos_token_id: must be a token id from 0 to 50256 (or a list '
        'of them), got "x"',
        model="tiny_onnx_dir",
        prepare=generation(eos_token_id="x"),
    ),
    Case(
        "models: generation_config do_sample yes",
        GENERATE + ("Hello",),
        1,
        'generation_config.json: do_sample: expected true or false, got "yes"',
        model="tiny_onnx_dir",
        prepare=generation(do_sample="yes"),
    ),
    Case(
        "models: generation_config temperature -1 (not blamed on --temperature)",
        GENERATE + ("--do-sample", "Hello"),
        1,
        f"generation_config.json: temperature: must be a strictly positive number, got -1 {FAULT}",
        model="tiny_onnx_dir",
        prepare=generation(temperature=-1),
    ),
    Case(
        "models: generation_config pad_token_id in a list of strings",
        GENERATE + ("Hello",),
        1,
        "generation_config.json: pad_token_id: must be a token id",
        model="tiny_onnx_dir",
        prepare=generation(pad_token_id=["a"]),
    ),
    Case(
        "models: generation_config not an object",
        GENERATE + ("Hello",),
        1,
        "generation_config.json: expected a JSON object, got [1, 2]",
        model="tiny_onnx_dir",
        prepare=lambda work: (work / "model" / "generation_config.json").write_text("[1, 2]"),
    ),
    Case(
        "models: task_specific_params temperature -1",
        GENERATE + ("Hello",),
        1,
        "config.json: task_specific_params.text-generation: temperature: must be a strictly "
        "positive number, got -1",
        model="tiny_model_dir",
        prepare=task_params(temperature=-1),
    ),
    Case(
        "models: task_specific_params top_p 2",
        GENERATE + ("Hello",),
        1,
        "config.json: task_specific_params.text-generation: top_p: must be in (0, 1], got 2",
        model="tiny_onnx_dir",
        prepare=task_params(top_p=2),
    ),
    # --threads (item 8) and --dtype on an ONNX export: usage errors, before any load.
    Case(
        "models: generate --threads 5000",
        GENERATE + ("--threads", "5000", "Hello"),
        2,
        "--threads: must be from 1 to ",
        model="tiny_model_dir",
        max_seconds=20,
    ),
    Case(
        "models: embed --threads 0",
        EMBED + ("--threads", "0", "Hello"),
        2,
        "--threads: must be from 1 to ",
        model="tiny_onnx_dir",
    ),
    Case(
        "models: tokenize --threads 100000",
        ("tokenize", "--threads", "100000", "Hello"),
        2,
        "--threads: must be from 1 to ",
    ),
    Case(
        "models: --dtype bfloat16 on an ONNX export is a usage error",
        GENERATE + ("--dtype", "bfloat16", "Hello"),
        2,
        "--dtype: got bfloat16, but the ONNX backend runs only the export's own precision, "
        "float32 (export-onnx writes float32; use --dtype float32, or --backend torch)",
        model="tiny_onnx_dir",
    ),
    # onnxruntime's own log lines never reach stderr (item 20).
    Case(
        "models: onnx with HOME not writable: no onnxruntime log line",
        GENERATE + ("Hello",),
        0,
        model="tiny_onnx_dir",
        env={"HOME": "/proc/gpt2cli-home"},  # not creatable, even by root
    ),
    # A tokenizer that yields no ids for a non-empty text (item 19): said so, not "empty".
    Case(
        "models: generate, the model's tokenizer drops the whole text",
        GENERATE + ("hello",),
        2,
        "argument 1: the model's tokenizer gives no tokens for this text (it is not empty",
        model="tiny_onnx_dir",
        prepare=_dropping_tokenizer,
    ),
    Case(
        "models: embed, the model's tokenizer drops the whole text",
        ("embed", "-m", "{model}", "hello"),
        2,
        "argument 1: the model's tokenizer gives no tokens for this text (it is not empty",
        model="tiny_onnx_dir",
        prepare=_dropping_tokenizer,
    ),
]
