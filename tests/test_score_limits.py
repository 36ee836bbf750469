"""`score` streams: texts are scored and written in blocks, with only running totals kept, so
memory stays flat however many lines come in; the output is the same as in one block."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2cli.commands import score as score_command
from tests.clirun import run_in_process

GNU_TIME = Path("/usr/bin/time")
GPT2CLI = str(Path(sys.executable).parent / "gpt2cli")
WORDS = "the of and to in is it that was for on are with as his they be at one have this".split()


def _lines(count: int) -> str:
    return "".join(f"{WORDS[i % 21]} {WORDS[(i * 7) % 21]} {WORDS[(i * 3) % 21]}\n"
                   for i in range(count))  # fmt: skip


def _score(*args: str) -> str:
    result = run_in_process("score", *args)
    assert result.returncode == 0, result.err
    return result.out


@pytest.mark.parametrize(
    "mode",
    [
        (),
        ("--json",),
        ("--jsonl",),
        ("--per-token",),
        ("--show",),
        ("--pairs",),
        ("--pairs", "--json"),
        ("--per-token", "--format", "jsonl"),
        ("--limit", "12"),
    ],
    ids=lambda mode: " ".join(mode) or "text",
)
def test_blocks_write_what_one_block_writes(
    tiny_onnx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: tuple[str, ...]
) -> None:
    texts = _lines(7).splitlines()
    if "--pairs" in mode:
        texts = [json.dumps({"context": t, "continuation": " end"}) for t in texts]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    args = ("-m", str(tiny_onnx_dir), "--lines", "-f", str(source), *mode)
    whole = _score(*args)
    monkeypatch.setattr(score_command, "BLOCK_TEXTS", 2)
    assert _score(*args) == whole
    if "--json" in mode:
        records = json.loads(whole)
        assert [r["index"] for r in records] == [*range(7), None]
        assert records[-1]["source"] == "total" and records[-1]["texts"] == 7
    if "--limit" in mode:
        assert whole.splitlines()[-1].split("\t")[2] == "12"
    if mode == ():
        assert whole.splitlines()[-1].endswith("\ttotal")
        assert whole.splitlines()[-2].endswith(f"\t{source}:7")


def _peak_rss_mb(model: Path, lines: Path) -> int:
    report = lines.with_suffix(".rss")
    command = [str(GNU_TIME), "-f", "%M", "-o", str(report), GPT2CLI, "score", "-m", str(model),
               "--lines", "-f", str(lines)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith("\ttotal")
    return int(report.read_text().split()[-1]) // 1024


@pytest.mark.skipif(not GNU_TIME.exists(), reason="needs GNU time for the peak RSS")
def test_score_lines_memory_does_not_grow_with_the_input(
    tiny_onnx_dir: Path, tmp_path: Path
) -> None:
    """Measured (tiny ONNX model, 2 cores): 20k lines 145 MB, 100k lines 152 MB; before
    streaming, 202 MB and 505 MB (about 3.8 kB a line: a million lines took 2.5 GB+)."""
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text(_lines(2_000), encoding="utf-8")
    large.write_text(_lines(40_000), encoding="utf-8")
    growth = _peak_rss_mb(tiny_onnx_dir, large) - _peak_rss_mb(tiny_onnx_dir, small)
    # Holding every result, 38k more lines would take ~140 MB more.
    assert growth < 30, f"peak RSS grew {growth} MB from 2k to 40k lines"


def test_show_escapes_terminal_controls(tiny_onnx_dir: Path) -> None:
    text = "a\x1b]0;OWNED\x07b\rc\x1b[2Jd\x85e\u2028f\tg\nh\n"
    result = subprocess.run(
        [GPT2CLI, "score", "-m", str(tiny_onnx_dir), "--show"],
        input=text.encode(),
        capture_output=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    out = result.stdout.decode()
    for control in ("\x1b", "\x07", "\r", "\x85", "\u2028"):
        assert control not in out
    view = re.sub(r"\{[1-4]\}", "", out.partition("\n\n")[0])
    assert view == "a\\x1b]0;OWNED\\x07b\\rc\\x1b[2Jd\\x85e\\u2028f\tg\nh\n"
