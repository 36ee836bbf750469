"""Bad-input matrix rows: the command line itself (terminal controls, closed descriptors,
pipes, encodings)."""

from __future__ import annotations

from tests.badinput import Case, request, truncate

# 3,000 short lines: enough output that `| head -1` closes the pipe while the command still writes.
MANY_LINES = {"lines.txt": "".join(f"line {i}\n" for i in range(3000)).encode()}
FIRST_LINE_IDS = b"1370 657\n"  # "line 0"
TINY_ONNX = "tiny_onnx_dir"
GENERATE = ("generate", "-m", "{model}", "--max-new-tokens", "2")


def _head(command: str) -> str:
    """`command | head -1`, succeeding only if head saw a line (the pipeline's status is head's)."""
    return f'{command} | head -1 > first.txt; test -s first.txt'


CASES: list[Case] = [
    # Closed descriptors.
    Case(
        "closed stdout: results have nowhere to go",
        (),
        1,
        "stdout is closed: nothing to write the results to (give -o FILE)",
        shell='"$GPT2CLI" tokenize Hello >&-',
    ),
    Case(
        "closed stdout with -o: the file is written",
        (),
        0,
        shell='"$GPT2CLI" generate -m {model} --max-new-tokens 2 -o out.txt Hello >&-',
        model=TINY_ONNX,
        writes={"out.txt": None},
    ),
    Case(
        "closed stdin with -f -",
        (),
        2,
        "<stdin>: stdin is closed",
        shell='"$GPT2CLI" tokenize -f - <&-',
    ),
    Case(
        "closed stdin with --request -",
        (),
        2,
        "<stdin>: stdin is closed",
        shell='"$GPT2CLI" generate -m {model} --request - <&-',
        model=TINY_ONNX,
    ),
    Case(
        "closed stderr: results still on stdout, nothing else there",
        (),
        0,
        shell='"$GPT2CLI" tokenize Hello 2>&-',
        stdout=b"15496\n",
    ),
    # `| head -1` is quiet, whatever the command writes.
    Case(
        "tokenize --lines | head -1",
        (),
        0,
        shell=_head('"$GPT2CLI" tokenize --lines -f lines.txt'),
        files=MANY_LINES,
        writes={"first.txt": FIRST_LINE_IDS},
    ),
    Case(
        "tokenize --tokens --lines | head -1",
        (),
        0,
        shell=_head('"$GPT2CLI" tokenize --tokens --lines -f lines.txt'),
        files=MANY_LINES,
        writes={"first.txt": b'"line" " 0"\n'},
    ),
    Case(
        "embed --format npy | head -1",
        (),
        0,
        shell=_head('"$GPT2CLI" embed -m {model} --format npy --lines -f lines.txt'),
        files=MANY_LINES,
        model=TINY_ONNX,
        writes={"first.txt": None},
    ),
    Case(
        "embed --format jsonl | head -1",
        (),
        0,
        shell=_head('"$GPT2CLI" embed -m {model} --lines -f lines.txt'),
        files=MANY_LINES,
        model=TINY_ONNX,
        writes={"first.txt": None},
    ),
    Case(
        "score --lines | head -1",
        (),
        0,
        shell=_head('"$GPT2CLI" score -m {model} --lines -f lines.txt'),
        files=MANY_LINES,
        model=TINY_ONNX,
        writes={"first.txt": None},
    ),
    Case(
        "generate --lines | head -1",
        (),
        0,
        shell=_head('"$GPT2CLI" generate -m {model} --max-new-tokens 2 --lines -f lines.txt'),
        files=MANY_LINES,
        model=TINY_ONNX,
        writes={"first.txt": None},
    ),
    # Command-line text that is not UTF-8 (Python passes the bytes on as lone surrogates).
    Case(
        "invalid UTF-8 in a text argument",
        ("tokenize", "caf\udce9"),
        2,
        "text 1: invalid UTF-8 at byte offset 3 (pass --replace-invalid to substitute U+FFFD)",
    ),
    Case(
        "invalid UTF-8 in a text argument, --replace-invalid",
        ("tokenize", "--replace-invalid", "caf\udce9"),
        0,
        stdout=b"66 1878 4210\n",
    ),
    Case(
        "invalid UTF-8 in the second text after --",
        ("tokenize", "--", "ok", "\udcff\udcfe"),
        2,
        "text 2: invalid UTF-8 at byte offset 0",
    ),
    Case(
        "invalid UTF-8 in --stop, before the weights load",
        (*GENERATE, "--stop", "a\udcff", "Hello"),
        2,
        "--stop: invalid UTF-8 at byte offset 1",
        model="tiny_model_dir",
        prepare=truncate("model.safetensors"),
    ),
    Case(
        "invalid UTF-8 in --stop=VALUE",
        (*GENERATE, "--stop=\udce2\udc82", "Hello"),
        2,
        "--stop: invalid UTF-8 at byte offset 0",
        model="tiny_model_dir",
        prepare=truncate("model.safetensors"),
    ),
    Case(
        "invalid UTF-8 in an embed text, before the weights load",
        ("embed", "-m", "{model}", "Hello \udcc3("),
        2,
        "text 1: invalid UTF-8 at byte offset 6",
        model="tiny_model_dir",
        prepare=truncate("model.safetensors"),
    ),
    Case(
        "invalid UTF-8 in score --context",
        ("score", "-m", "{model}", "--context", "\udcff", "Hello"),
        2,
        "--context: invalid UTF-8 at byte offset 0",
        model=TINY_ONNX,
    ),
    Case(
        "invalid UTF-8 in --separator",
        (*GENERATE, "--separator", "\udcc0", "Hello"),
        2,
        "--separator: invalid UTF-8",
        model=TINY_ONNX,
    ),
    Case(
        "a file name that is not UTF-8 is a valid file name",
        ("tokenize", "-f", "caf\udce9.txt"),
        0,
        files={"caf\udce9.txt": b"Hello"},
        stdout=b"15496\n",
    ),
    Case(
        "a missing file name that is not UTF-8, shown escaped",
        ("tokenize", "-f", "caf\udce9\x1b]0;x\x07.txt"),
        2,
        "caf\\xe9\\x1b]0;x\\x07.txt: no such file",
    ),
    Case(
        "a lone surrogate escape in --separator",
        (*GENERATE, "--separator", "\\ud800", "Hello"),
        2,
        "--separator: '\\\\ud800': \\ud800 is a lone surrogate, not a character",
        model=TINY_ONNX,
    ),
    Case(
        "request body with a lone surrogate escape is checked before the weights load",
        (*GENERATE, "--request", "req.json"),
        2,
        "req.json: input_data[0]: lone surrogate \\ud800 at character 1",
        files=request('{"input_data": ["a\\ud800"]}'),
        model="tiny_model_dir",
        prepare=truncate("model.safetensors"),
    ),
    # Terminal controls from the input never reach the terminal raw.
    Case(
        "tokenize --show escapes ESC, BEL and CR",
        ("tokenize", "--show"),
        0,
        stdin=b"a\x1b]0;X\x07b\rc\n",
        stdout=b"a|\\x1b|]|0|;|X|\\x07|b|\\r|c|\n\n",
    ),
    # Output is UTF-8 whatever the locale says.
    Case(
        "PYTHONIOENCODING=ascii with non-ASCII output",
        ("tokenize", "--tokens", "café ✓"),
        0,
        env={"PYTHONIOENCODING": "ascii"},
        stdout='"c" "af" "é" " ✓"\n'.encode(),
    ),
    Case(
        "LC_ALL=C with non-ASCII JSON output",
        ("tokenize", "--jsonl", "--tokens", "--offsets", "é"),
        0,
        env={"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "latin-1"},
        stdout='{"index": 0, "source": "argument 1", "ids": [2634], "pieces": ["é"], '
        '"piece_bytes": ["c3a9"], "offsets": [[0, 1]], "token_count": 1}\n'.encode(),
    ),
]
