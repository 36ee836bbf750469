"""Bad-input matrix rows: request and pair JSON, sampling numerics, and `score` (conditional
pairs, streaming memory, terminal controls in --show)."""

from __future__ import annotations

from tests.badinput import Case, request

TINY_ONNX = "tiny_onnx_dir"
GENERATE = ("generate", "-m", "{model}", "--max-new-tokens", "3")
REQUEST = (*GENERATE, "--request", "req.json")
SAMPLE = (*GENERATE, "--do-sample", "--seed", "7")
SCORE = ("score", "-m", "{model}")
# 30,000 short lines: holding every result took ~240 MB here (about 3.8 kB a line on top of
# ~140 MB for the process and model); streamed, it stays at the start-up size.
SCORE_LINES = 30_000
WORDS = "the of and to in is it that was for on are with as his they be at one have this".split()


def _lines(count: int) -> bytes:
    return "".join(f"{WORDS[i % 21]} {WORDS[(i * 7) % 21]} {WORDS[(i * 3) % 21]}\n"
                   for i in range(count)).encode()  # fmt: skip


def _pairs(*pairs: tuple[str, str]) -> dict[str, bytes]:
    import json

    body = "".join(json.dumps({"context": c, "continuation": x}) + "\n" for c, x in pairs)
    return {"pairs.jsonl": body.encode()}


CASES: list[Case] = [
    # Request JSON: what Python's json lets through is refused, naming the place.
    Case(
        "request: duplicate key",
        REQUEST,
        2,
        "req.json: params.top_k: duplicate key",
        files=request('{"input_data": ["a"], "params": {"top_k": 5, "top_k": 50}}'),
        model=TINY_ONNX,
    ),
    Case(
        "request: duplicate top-level key",
        REQUEST,
        2,
        "req.json: input_data: duplicate key",
        files=request('{"input_data": ["a"], "input_data": ["b"]}'),
        model=TINY_ONNX,
    ),
    Case(
        "request: NaN literal",
        REQUEST,
        2,
        "req.json: params.temperature: NaN is not valid JSON",
        files=request('{"input_data": ["a"], "params": {"temperature": NaN, "do_sample": true}}'),
        model=TINY_ONNX,
    ),
    Case(
        "request: Infinity literal",
        REQUEST,
        2,
        "req.json: parameters.top_p: Infinity is not valid JSON",
        files=request('{"inputs": {"input_string": ["a"]}, "parameters": {"top_p": Infinity}}'),
        model=TINY_ONNX,
    ),
    Case(
        "request: -Infinity literal in the inputs",
        (*GENERATE, "--request", "-"),
        2,
        "<stdin>: input_data[1]: -Infinity is not valid JSON",
        stdin=b'{"input_data": ["a", -Infinity]}',
        model=TINY_ONNX,
    ),
    Case(
        "request: lone surrogate escape in format A",
        REQUEST,
        2,
        "req.json: inputs.input_string[1]: lone surrogate \\udc00 at character 1",
        files=request('{"inputs": {"input_string": ["fine", "a\\udc00b"]}}'),
        model=TINY_ONNX,
    ),
    Case(
        "request: lone surrogate escape in a stop string",
        REQUEST,
        2,
        "req.json: params.stop[0]: lone surrogate",
        files=request('{"input_data": ["a"], "params": {"stop": ["\\ud800"]}}'),
        model=TINY_ONNX,
    ),
    Case(
        "request: lone surrogate escape with --replace-invalid",
        (*REQUEST, "--replace-invalid"),
        0,
        files=request('{"input_data": ["Hello \\ud800"], "params": {"stop": ["\\udfff"]}}'),
        model=TINY_ONNX,
    ),
    Case(
        "request: more inputs than a request may hold",
        REQUEST,
        2,
        "req.json: input_data: 1025 inputs, more than the 1024 a request may hold",
        files=request('{"input_data": [' + ", ".join(['"a"'] * 1025) + "]}"),
        model=TINY_ONNX,
    ),
    # Extreme sampling values: finite maths, no numpy warnings on stderr.
    Case(
        "sampling: temperature 1e-50 is greedy",
        (*SAMPLE, "--temperature", "1e-50", "Hello world"),
        0,
        model=TINY_ONNX,
    ),
    Case(
        "sampling: temperature 5e-324 (the smallest float)",
        (*SAMPLE, "--temperature", "5e-324", "--top-k", "0", "--top-p", "0.5", "Hello world"),
        0,
        model=TINY_ONNX,
    ),
    Case(
        "sampling: temperature 1e39 (over float32)",
        (*SAMPLE, "--temperature", "1e39", "Hello world"),
        0,
        model=TINY_ONNX,
    ),
    Case(
        "sampling: repetition penalty 1e-45",
        (*SAMPLE, "--repetition-penalty", "1e-45", "Hello world"),
        0,
        model=TINY_ONNX,
    ),
    Case(
        "greedy: repetition penalty 1e-45",
        (*GENERATE, "--greedy", "--repetition-penalty", "1e-45", "Hello world"),
        0,
        model=TINY_ONNX,
    ),
    Case(
        "sampling: repetition penalty 1e300 (over float32)",
        (*SAMPLE, "--repetition-penalty", "1e300", "--temperature", "1e-40", "Hello world"),
        0,
        model=TINY_ONNX,
    ),
    # score --pairs: a continuation with no token of its own is refused, naming its line.
    Case(
        "score --pairs: continuation merged into the context's last token",
        (*SCORE, "--pairs", "-f", "pairs.jsonl"),
        2,
        "pairs.jsonl:2: the continuation merges into the context's last token",
        files=_pairs(("The sky is", " blue"), ("hel", "lo")),
        model=TINY_ONNX,
    ),
    Case(
        "score --pairs: a split inside a word is scored as lm-eval splits it",
        (*SCORE, "--pairs", "-f", "pairs.jsonl", "--jsonl"),
        0,
        files=_pairs(("hel", "lo world")),
        model=TINY_ONNX,
    ),
    Case(
        "score --context: continuation merged into the context",
        (*SCORE, "--context", "hel", "lo"),
        2,
        "argument 1: the continuation merges into the context's last token",
        model=TINY_ONNX,
    ),
    Case(
        "score --pairs: continuation longer than --ctx names its line",
        (*SCORE, "--pairs", "--ctx", "4", "-f", "pairs.jsonl"),
        2,
        "pairs.jsonl:1: the continuation is 6 tokens, more than a window of 4 (raise --ctx)",
        files=_pairs(("a", " b b b b b b")),
        model=TINY_ONNX,
    ),
    Case(
        "score --pairs: duplicate key in a line",
        (*SCORE, "--pairs"),
        2,
        "<stdin>:2: continuation: duplicate key",
        stdin=b'{"context": "a", "continuation": " b"}\n'
        b'{"context": "a", "continuation": " b", "continuation": " c"}\n',
        model=TINY_ONNX,
    ),
    Case(
        "score --pairs: NaN in a line",
        (*SCORE, "--pairs"),
        2,
        "<stdin>:1: context: NaN is not valid JSON",
        stdin=b'{"context": NaN, "continuation": " b"}\n',
        model=TINY_ONNX,
    ),
    Case(
        "score --pairs: lone surrogate in a line",
        (*SCORE, "--pairs"),
        2,
        "<stdin>:1: continuation: lone surrogate \\ud800",
        stdin=b'{"context": "a", "continuation": " b\\ud800"}\n',
        model=TINY_ONNX,
    ),
    Case(
        "score --pairs: lone surrogate with --replace-invalid",
        (*SCORE, "--pairs", "--replace-invalid"),
        0,
        stdin=b'{"context": "a", "continuation": " b\\ud800"}\n',
        model=TINY_ONNX,
    ),
    # score --limit, --kl-base and --format (issue 12)
    Case(
        "score --limit 0",
        (*SCORE, "--limit", "0", "Hello"),
        2,
        "--limit",
        model=TINY_ONNX,
    ),
    Case(
        "score --kl-base: no such directory",
        (*SCORE, "--kl-base", "./no-such-model", "Hello"),
        1,
        "./no-such-model: no such model directory",
        model=TINY_ONNX,
    ),
    Case(
        "score --kl-base: empty",
        (*SCORE, "--kl-base", "", "Hello"),
        2,
        "--kl-base: empty",
        model=TINY_ONNX,
    ),
    Case(
        "score --kl-base against itself, --limit, jsonl",
        (*SCORE, "--kl-base", "{model}", "--limit", "3", "--format", "jsonl", "Hello world, again"),
        0,
        model=TINY_ONNX,
    ),
    Case(
        "score --show --format json",
        (*SCORE, "--show", "--format", "json", "Hello"),
        2,
        "--show draws text; drop --format json",
        model=TINY_ONNX,
    ),
    Case(
        "score --pairs --limit smaller than the first pair: nothing scored, an empty array",
        (*SCORE, "--pairs", "--limit", "1", "--json", "-f", "pairs.jsonl"),
        0,
        files=_pairs(("The sky is", " blue and wide")),
        model=TINY_ONNX,
        stdout=b"[]\n",
    ),
    # score --show draws the text: terminal controls in it are shown escaped.
    Case(
        "score --show with ESC, BEL and CR in the text",
        (*SCORE, "--show"),
        0,
        stdin=b"a\x1b]0;OWNED\x07b\rc\x1b[2Jd\n",
        model=TINY_ONNX,
    ),
    # score --lines streams: memory does not grow with the number of lines.
    Case(
        f"score --lines: {SCORE_LINES} lines in bounded memory",
        (*SCORE, "--lines", "-f", "lines.txt"),
        0,
        files={"lines.txt": _lines(SCORE_LINES)},
        model=TINY_ONNX,
        max_rss_mb=210,
    ),
]
