"""Cold start: what `gpt2cli generate` skips without changing any result.

- GPT-2's own tokenizer files (tokenizer.json, or vocab.json and merges.txt) load the built-in
  tiktoken tokenizer instead of `tokenizers`: recognised exactly (any change to the vocabulary,
  merges, added tokens, normalizer, pre-tokenizer, truncation or padding keeps `tokenizers`),
  and both give the same ids, pieces and errors.
- Typer coerces plain option values without Pydantic, to the same values; errors are Typer's.
- Only the command run is built; unknown options still suggest the commands that have them.
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2cli import cli
from gpt2cli.errors import InputError
from gpt2cli.inputs import GPT2_SPLITS
from gpt2cli.tokenizer import (
    ENDOFTEXT,
    GPT2Tokenizer,
    HFTokenizer,
    is_gpt2_tokenizer,
    model_tokenizer,
)
from tests.clirun import assert_one_line_error, run_in_process

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "",
    "Hello",
    "Hello, I'm a language model,",
    f"one{ENDOFTEXT}two {ENDOFTEXT} three{ENDOFTEXT}{ENDOFTEXT}",
    "<|endoftext", "<|endoftext|", "endoftext|>", "< |endoftext|>", "<|ENDOFTEXT|>",
    "  leading and trailing spaces   ",
    "tabs\tand\r\nCRLF\r\nlines\n\n\n",
    "emoji 🤖👩‍👩‍👧 and combining e\u0301 marks, ﬁ ligature",
    "数字 12345 と日本語テキスト 한국어 العربية",
    "don't won't they'll I've we're she'd 'S 'LL",
    "    \n\n  \t \u00a0\u2003 ",
    "numbers 3.14159 1,000,000 0x1F",
    "a" * 300 + " " + "ab" * 200,
]  # fmt: skip


def _hf(directory: Path, parse_special: bool = True) -> HFTokenizer:
    return HFTokenizer.from_dir(directory, parse_special=parse_special)


# --- recognising GPT-2's files ---------------------------------------------------------------


def _copy_tokenizer(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """`target` with source's tokenizer.json, edited."""
    target.mkdir()
    spec = json.loads(_read_cached(source / "tokenizer.json"))
    edit(spec)
    (target / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    return target


@functools.cache
def _read_cached(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _swap_ids(spec: dict[str, Any]) -> None:
    vocab = spec["model"]["vocab"]
    vocab["Ġthe"], vocab["Ġa"] = vocab["Ġa"], vocab["Ġthe"]


def _swap_merges(spec: dict[str, Any]) -> None:
    merges = spec["model"]["merges"]
    merges[10], merges[11] = merges[11], merges[10]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return edit


def _extra_token(spec: dict[str, Any]) -> None:
    spec["added_tokens"].append({**spec["added_tokens"][0], "id": 50257, "content": "<|pad|>"})


OTHER_TOKENIZERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "added token renamed": _set("added_tokens.0.content", "<|end|>"),
    "added token not special": _set("added_tokens.0.special", False),
    "added token strips": _set("added_tokens.0.lstrip", True),
    "another added token": _extra_token,
    "two ids swapped": _swap_ids,
    "two merges swapped": _swap_merges,
    "a merge dropped": lambda spec: spec["model"]["merges"].pop(),
    "a normalizer": _set("normalizer", {"type": "Lowercase"}),
    "prefix space": _set("pre_tokenizer.add_prefix_space", True),
    "truncation": _set(
        "truncation",
        {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0},
    ),
    "dropout": _set("model.dropout", 0.1),
    "ignore merges": _set("model.ignore_merges", True),
}


def test_gpt2_files_are_recognised_in_every_layout(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert is_gpt2_tokenizer(tiny_model_dir)  # tokenizer.json as transformers saves it
    assert isinstance(model_tokenizer(tiny_model_dir), GPT2Tokenizer)
    # The same content laid out otherwise (merges as "a b" strings, as older tokenizers wrote
    # them, indented): checked field by field, still GPT-2's.
    merges = json.loads((tiny_model_dir / "tokenizer.json").read_text())["model"]["merges"]
    old_style = _set("model.merges", [" ".join(pair) for pair in merges])
    assert is_gpt2_tokenizer(_copy_tokenizer(tiny_model_dir, tmp_path / "old", old_style))
    # vocab.json and merges.txt alone
    files = tmp_path / "files"
    files.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (files / name).write_bytes((tiny_model_dir / name).read_bytes())
    assert is_gpt2_tokenizer(files)
    shorter = tmp_path / "shorter"
    shorter.mkdir()
    (shorter / "vocab.json").write_bytes((files / "vocab.json").read_bytes())
    lines = (files / "merges.txt").read_text(encoding="utf-8").splitlines()
    (shorter / "merges.txt").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    assert not is_gpt2_tokenizer(shorter)
    assert isinstance(model_tokenizer(shorter), HFTokenizer)
    assert not is_gpt2_tokenizer(tmp_path)  # no tokenizer files


@pytest.mark.parametrize("change", list(OTHER_TOKENIZERS))
def test_any_other_tokenizer_keeps_tokenizers(
    change: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    directory = _copy_tokenizer(tiny_model_dir, tmp_path / "tok", OTHER_TOKENIZERS[change])
    assert not is_gpt2_tokenizer(directory)
    if change == "added token renamed":  # then model_tokenizer reads it with `tokenizers`
        assert isinstance(model_tokenizer(directory), HFTokenizer)


# --- the built-in tokenizer is the same tokenizer ----------------------------------------------


@pytest.fixture(scope="module")
def both(tiny_model_dir: Path) -> dict[bool, tuple[GPT2Tokenizer, HFTokenizer]]:
    """By parse_special: the built-in tokenizer and `tokenizers` on the model's tokenizer.json."""
    return {
        special: (GPT2Tokenizer(parse_special=special), _hf(tiny_model_dir, special))
        for special in (True, False)
    }


@pytest.mark.parametrize("parse_special", [True, False])
def test_same_ids_pieces_and_facts(both: dict, parse_special: bool) -> None:
    built_in, hf = both[parse_special]
    for text in TEXTS:
        ids = built_in.encode(text)
        assert ids == hf.encode(text), text
        assert built_in.decode_bytes(ids) == hf.decode_bytes(ids) == text.encode("utf-8")
    assert built_in.encode_batch(TEXTS) == hf.encode_batch(TEXTS)
    for name in ("vocab_size", "eos_token_id", "max_token_bytes"):
        assert getattr(built_in, name) == getattr(hf, name), name
    assert built_in.id_bound() == hf.id_bound() == 50257
    assert built_in.split_rule() == hf.split_rule() == GPT2_SPLITS
    for token_id in [*range(0, 50257, 97), 50255, 50256]:
        assert built_in.token_bytes(token_id) == hf.token_bytes(token_id), token_id
    for tokenizer in (built_in, hf):
        with pytest.raises(InputError, match="token id 50300 is not in the vocabulary"):
            tokenizer.token_bytes(50300)
        with pytest.raises(InputError, match="token id 50300 is not in the vocabulary"):
            tokenizer.decode_bytes([15496, 50300])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
            st.sampled_from([ENDOFTEXT, "<|", "|>", " ", "\n", "\n\n", "'s", "  ", "\t", "99"]),
        ),
        max_size=8,
    ).map("".join)
)
def test_same_ids_on_generated_text(both: dict, text: str) -> None:
    for parse_special in (True, False):
        built_in, hf = both[parse_special]
        assert built_in.encode(text) == hf.encode(text)


# --- the CLI: what a generate run imports -----------------------------------------------------

# One fresh process: tokenize, then generate on GPT-2's files, then on a modified copy.
IMPORTS_SCRIPT = """
import contextlib, io, json, sys
from gpt2cli import cli
def run(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.run(list(args))
    assert code == 0, (args, code)
    return out.getvalue()
def loaded(*names):
    return sorted(n for n in names if n in sys.modules)
heavy = ("torch", "transformers", "onnxruntime", "tokenizers", "pydantic")
report = {}
run("tokenize", "Hello world")
report["tokenize"] = loaded(*heavy)
args = ["--max-new-tokens", "2", "--greedy", "-p", "Hello", "--format", "json"]
report["gpt2_out"] = run("generate", "-m", sys.argv[1], *args)
report["gpt2"] = loaded(*heavy)
report["other_out"] = run("generate", "-m", sys.argv[2], *args)
report["other"] = loaded(*heavy)
print(json.dumps(report))
"""


def test_generate_reads_no_tokenizer_json_when_it_is_gpt2s(
    tiny_onnx_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for path in tiny_onnx_dir.iterdir():
        if path.name != "tokenizer.json":
            (other / path.name).symlink_to(path)
    _copy_tokenizer(tiny_onnx_dir, tmp_path / "tok", OTHER_TOKENIZERS["added token not special"])
    (tmp_path / "tok" / "tokenizer.json").rename(other / "tokenizer.json")
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_SCRIPT, str(tiny_onnx_dir), str(other)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tokenize"] == []
    assert report["gpt2"] == ["onnxruntime"]  # neither tokenizers nor pydantic
    assert report["other"] == ["onnxruntime", "tokenizers"]
    assert report["gpt2_out"] == report["other_out"]  # the same ids, the same greedy tokens


def test_the_session_holds_the_built_in_tokenizer(tiny_onnx_dir: Path) -> None:
    from gpt2cli.session import ModelOptions, open_model

    session = open_model(ModelOptions(str(tiny_onnx_dir)))
    assert isinstance(session.backend.tokenizer, GPT2Tokenizer)


# --- Typer without Pydantic ----------------------------------------------------------------------

SAMPLE_VALUES: list[Any] = [
    "0", "1", "-1", "7", "007", "-0", "+5", " 5", "1_000", "65535", "65536", "99999999999999999999",
    "0.5", "-0.5", "0.0005", "1.", ".5", "1e3", "nan", "inf", "1.5.2", "", "abc", "gpt2",
    "text", "json", "jsonl", "JSON", "Text", "onnx", "torch", "auto", "mean", "last", "int8",
    "float32", "cpu", "a\udcffb", 0, 3, -2, 70000, 0.5, 2.0, True, False,
    ("a", "b"), ["x"], (), ("a", 1),
]  # fmt: skip


def _typer_coerce(param: Any, value: Any, ctx: Any) -> tuple[str, Any]:
    from typer._coercion import build_runtime_param

    try:
        return "ok", build_runtime_param(param.type_descriptor)._coerce_value(value, param, ctx)
    except Exception as exc:  # noqa: BLE001 - any error: the fast path must defer
        return "error", type(exc).__name__


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return repr(a) == repr(b) or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def test_plain_coercion_gives_typers_values() -> None:
    import typer

    group = typer.main.get_command(cli.app)
    checked = 0
    for name, command in {"": group, **group.commands}.items():
        ctx = typer.Context(command, info_name=name or "gpt2cli", token_normalize_func=cli._dashes)
        for param in command.params:
            descriptor = param.type_descriptor
            for value in SAMPLE_VALUES:
                plain = cli._plain_value(descriptor.annotation, descriptor.parameter_info,
                                         value, ctx)  # fmt: skip
                if plain is cli._UNSURE:
                    continue
                outcome, expected = _typer_coerce(param, value, ctx)
                assert outcome == "ok", (name, param.name, value, expected)
                assert _same_value(plain, expected), (name, param.name, value, plain, expected)
                checked += 1
    assert checked > 1000


def test_only_the_command_run_is_built() -> None:
    assert [c.name for c in cli.app_for(["generate", "-p", "x"]).registered_commands] == [
        "generate"
    ]
    for args in (["--help"], ["--version"], ["no-such-command"], []):
        assert cli.app_for(args) is cli.app
    # An unknown option still names the other commands that have it.
    error = assert_one_line_error(run_in_process("generate", "--pooling", "mean", "x"), 2)
    assert "--pooling is an option of embed" in error
    bad = assert_one_line_error(run_in_process("generate", "--max-new-tokens", "x", "y"), 2)
    assert "Invalid value for '--max-new-tokens'" in bad and "valid integer" in bad  # Typer's
