"""Bad-input matrix rows: memory and time bounds: long inputs, fan-out, streaming."""

from __future__ import annotations

import json
from pathlib import Path

from tests.badinput import Case, request

MB = 1_000_000
# 20 MB of prose-like text: before the fix, 3.1 GB RSS and 51 s to refuse it.
LONG_TEXT = (b"hello world " * (20 * MB // 12 + 1))[: 20 * MB]
# Inputs that made the tokenize chunker quadratic (43 s and 24 s for these sizes).
SPACES = b"x" + b" " * (2 * MB)
ROBOTS = "\N{ROBOT FACE} ".encode() * (2 * MB // 5)
# A whitespace run that tiktoken's regex overflows on when given whole (ids from `tokenizers`).
SPACES_WORD = b"x" + b" " * (2 * MB) + b"w"
NEWLINES_WORD = b"x" + b"\n" * (2 * MB + 1) + b"w"


def _generation_setting(key: str, value: object):  # noqa: ANN202
    def prepare(work: Path) -> None:
        path = work / "model" / "generation_config.json"
        settings = json.loads(path.read_text())
        settings.update({key: value, "do_sample": True})
        path.write_text(json.dumps(settings))

    return prepare


CASES: list[Case] = [
    # Item 5: long prompts are refused from their first chunks, or cut to their head or tail.
    Case(
        "generate 20 MB stdin over the context",
        ("generate", "-m", "{model}", "--max-new-tokens", "5"),
        2,
        "<stdin>: the prompt is ",
        stdin=LONG_TEXT,
        model="tiny_onnx_dir",
        max_rss_mb=500,
        max_seconds=30,
    ),
    Case(
        "generate 20 MB stdin over --max-length",
        ("generate", "-m", "{model}", "--max-length", "50"),
        2,
        "which leaves nothing to generate under --max-length 50",
        stdin=LONG_TEXT,
        model="tiny_onnx_dir",
        max_rss_mb=500,
        max_seconds=30,
    ),
    Case(
        "generate 20 MB --truncate left keeps the tail",
        ("--quiet", "generate", "-m", "{model}", "--max-new-tokens", "2", "--greedy",
         "--truncate", "left", "--format", "jsonl"),
        0,
        stdin=LONG_TEXT,
        model="tiny_onnx_dir",
        max_rss_mb=600,
        max_seconds=60,
    ),
    Case(
        "embed 20 MB stdin over the context",
        ("embed", "-m", "{model}"),
        2,
        "+ tokens, more than the model's context of 1024",  # N+: encoding stopped early
        stdin=LONG_TEXT,
        model="tiny_onnx_dir",
        max_rss_mb=500,
        max_seconds=30,
    ),
    Case(
        "embed 20 MB --truncate right keeps the head",
        ("--quiet", "embed", "-m", "{model}", "--truncate", "right"),
        0,
        stdin=LONG_TEXT,
        model="tiny_onnx_dir",
        max_rss_mb=600,
        max_seconds=90,  # the text is counted to its end, for an exact truncated_tokens
    ),
    Case(
        "embed --lines one 20 MB line",
        ("embed", "-m", "{model}", "--lines"),
        2,
        "<stdin>:2: ",
        stdin=b"short line\n" + LONG_TEXT + b"\n",
        model="tiny_onnx_dir",
        max_rss_mb=600,
        max_seconds=30,
    ),
    # Item 6: the chunker is linear; ids as the whole text's.
    Case(
        "tokenize x and 2 MB of spaces",
        ("tokenize", "--count"),
        0,
        stdin=SPACES,
        stdout=b"2000001\n",
        max_seconds=15,
    ),
    Case(
        "tokenize 2 MB of robots and spaces",
        ("tokenize", "--count"),
        0,
        stdin=ROBOTS,
        stdout=b"1200001\n",
        max_seconds=15,
    ),
    Case(
        "tokenize x, 2 MB of spaces, w",
        ("tokenize", "--count"),
        0,
        stdin=SPACES_WORD,
        stdout=b"2000001\n",
        max_seconds=15,
    ),
    Case(
        "tokenize x, 2 MB of newlines, w",
        ("tokenize", "--count"),
        0,
        stdin=NEWLINES_WORD,
        stdout=b"1000003\n",
        max_seconds=15,
    ),
    # Item 7: fan-out capped up front, before the weights load.
    Case(
        "generate --num-return-sequences 1000000",
        ("generate", "-m", "{model}", "--num-return-sequences", "1000000", "hi"),
        2,
        "--num-return-sequences: must be at most 128, got 1000000",
        model="tiny_onnx_dir",
        max_seconds=30,
    ),
    Case(
        "generate --num-return-sequences 129",
        ("generate", "-m", "{model}", "--do-sample", "--num-return-sequences", "129", "hi"),
        2,
        "--num-return-sequences: must be at most 128, got 129",
        model="tiny_onnx_dir",
    ),
    Case(
        "generate --batch-size 100000",
        ("generate", "-m", "{model}", "--batch-size", "100000", "hi"),
        2,
        "'--batch-size' / '-b': Input should be less than or equal to 256",
        model="tiny_onnx_dir",
    ),
    Case(
        "generation_config num_return_sequences 1e6",
        ("generate", "-m", "{model}", "hi"),
        1,
        "generation_config.json: num_return_sequences: must be at most 128, got 1000000 "
        "(a fault in the model's files)",
        model="tiny_onnx_dir",
        prepare=_generation_setting("num_return_sequences", 1_000_000),
    ),
    Case(
        "request num_return_sequences 100000",
        ("generate", "-m", "{model}", "--request", "req.json"),
        2,
        "req.json: parameters.num_return_sequences: must be at most 128, got 100000",
        files=request(
            '{"inputs": {"input_string": ["hi"]}, '
            '"parameters": {"num_return_sequences": 100000, "do_sample": true}}'
        ),
        model="tiny_onnx_dir",
    ),
    Case(
        "generate --num-return-sequences 128 streams through batches of 8 rows",
        ("generate", "-m", "{model}", "--do-sample", "--num-return-sequences", "128", "-n", "2",
         "--format", "jsonl", "hi"),
        0,
        model="tiny_onnx_dir",
        max_rss_mb=800,
        max_seconds=60,
    ),
]
