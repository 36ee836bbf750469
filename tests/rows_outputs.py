"""Bad-input matrix rows: -o files, export-onnx OUTDIR and other places output is written.

The rules: -o writes a new regular file atomically (never over one that appeared meanwhile),
replaces a regular file (or a symlink's target) only with --force, writes character devices,
FIFOs and /dev/stdout-style paths directly, and refuses directories, sockets, dangling symlinks
and names that end in '/'. Every -o path is checked before any input is read or model loads: the
rows with a broken model show it (the -o error comes first). export-onnx --force replaces only a
previous export, and OUTDIR never overlaps the source model.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from tests.badinput import Case, truncate

TINY_ONNX = "tiny_onnx_dir"  # starts fastest: for rows where the backend does not matter
TINY_TORCH = "tiny_model_dir"
GENERATE = ("generate", "-m", "{model}", "--max-new-tokens", "2")
SCORE = ("score", "-m", "{model}")
EMBED = ("embed", "-m", "{model}")
EXPORT = ("export-onnx", "{model}")
OLD = b"results of an earlier run\n"
LONG_NAME = "n" * 246 + ".txt"  # 250 bytes: valid, and the temporary name must still fit
TOO_LONG_NAME = "n" * 252 + ".txt"  # 256 bytes: over NAME_MAX
BROKEN_MODEL = truncate("model.onnx")  # would fail to load: an -o error must come first


def _symlink(name: str, target: str) -> Callable[[Path], None]:
    return lambda work: os.symlink(target, work / name)


def _read_only_dir(work: Path) -> None:
    BROKEN_MODEL(work)
    (work / "ro").chmod(0o555)


def _socket(work: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(work / "sock"))
    listener.close()  # the socket file stays


def _foreign_file_in_export(work: Path) -> None:
    (work / "model" / "notes.txt").write_text("the user's own notes\n")


FAKE_EXPORT = {
    "fake/gpt2cli-export.json": json.dumps(
        {"format": "gpt2cli-onnx-export", "files": {"model.onnx": 4}}
    ).encode(),
    "fake/model.onnx": b"onnx",
    "fake/data.bin": b"not part of any export",
}

CASES: list[Case] = [
    # Devices, FIFOs and descriptors are written through: no temporary file, no --force.
    Case(
        "-o /dev/null",
        (*GENERATE, "-o", "/dev/null", "Hello"),
        0,
        model=TINY_ONNX,
    ),
    Case(
        "-o /dev/null --force leaves /dev/null a device",
        (),
        0,
        shell='"$GPT2CLI" generate -m {model} --max-new-tokens 2 -o /dev/null --force Hello'
        " && test -c /dev/null",
        model=TINY_ONNX,
    ),
    Case(
        "-o a FIFO: written through, read by the other end",
        (),
        0,
        # If the command fails before opening f, `: <>f` (read-write: never blocks) lets cat go.
        shell='mkfifo f; cat f > got 2> /dev/null & "$GPT2CLI" generate -m {model} '
        "--max-new-tokens 2 -o f --force Hello || { : <>f; wait; exit 1; }; wait; test -p f "
        "&& grep -q '^Hello' got",
        model=TINY_ONNX,
        writes={"f": None, "got": None},
    ),
    Case(
        "-o /dev/stdout: the results on stdout",
        (),
        0,
        shell='"$GPT2CLI" embed -m {model} -o /dev/stdout --format jsonl Hello | cat > got '
        "&& grep -q '\"embedding\"' got",
        model=TINY_ONNX,
        writes={"got": None},
    ),
    Case(
        "-o /proc/self/fd/1 appends where stdout appends",
        (),
        0,
        shell='echo first > log.txt; "$GPT2CLI" generate -m {model} --max-new-tokens 2 '
        "-o /proc/self/fd/1 Hello >> log.txt && head -1 log.txt | grep -qx first "
        "&& grep -q '^Hello' log.txt",
        model=TINY_ONNX,
        writes={"log.txt": None},
    ),
    Case(
        "-o /dev/stdout with stdout closed",
        (),
        2,
        "/dev/stdout: descriptor 1 is not open",
        shell='"$GPT2CLI" generate -m {model} --max-new-tokens 2 -o /dev/stdout Hello >&-',
        model=TINY_ONNX,
    ),
    Case(
        "-o /dev/full: the full device is named",
        (*GENERATE, "-o", "/dev/full", "Hello"),
        1,
        "/dev/full: cannot write: no space left on device",
        model=TINY_ONNX,
    ),
    Case(
        "embed --format npy -o /dev/full: numpy's write error names the path",
        (*EMBED, "--format", "npy", "-o", "/dev/full", "Hello"),
        1,
        "/dev/full: cannot write: no space left on device",
        model=TINY_ONNX,
    ),
    # Paths -o refuses, before the model loads (the model here is broken).
    Case(
        "-o a directory",
        (*GENERATE, "-o", "outdir", "Hello"),
        2,
        "outdir: is a directory",
        files={"outdir/keep.txt": b"keep\n"},
        model=TINY_ONNX,
        prepare=BROKEN_MODEL,
    ),
    Case(
        "-o a directory with --force",
        (*SCORE, "-o", "outdir", "--force", "Hello"),
        2,
        "outdir: is a directory",
        files={"outdir/keep.txt": b"keep\n"},
        model=TINY_ONNX,
        prepare=BROKEN_MODEL,
    ),
    Case(
        "-o newdir/ with a trailing slash writes no file named newdir",
        (*EMBED, "-o", "newdir/", "Hello"),
        2,
        "newdir/: names a directory (ends in '/'); -o takes a file name",
        model=TINY_ONNX,
        prepare=BROKEN_MODEL,
    ),
    Case(
        "-o .",
        (*GENERATE, "-o", ".", "--force", "Hello"),
        2,
        ".: is a directory",
        model=TINY_ONNX,
    ),
    Case(
        "-o ''",
        (*GENERATE, "-o", "", "Hello"),
        2,
        "-o: the path is empty",
        model=TINY_ONNX,
    ),
    Case(
        "-o a dangling symlink",
        (*GENERATE, "-o", "out.txt", "Hello"),
        2,
        "out.txt: is a symlink to a missing file (elsewhere.txt)",
        model=TINY_ONNX,
        prepare=_symlink("out.txt", "elsewhere.txt"),
    ),
    Case(
        "-o a dangling symlink with --force",
        (*GENERATE, "-o", "out.txt", "--force", "Hello"),
        2,
        "out.txt: is a symlink to a missing file (elsewhere.txt)",
        model=TINY_ONNX,
        prepare=_symlink("out.txt", "elsewhere.txt"),
    ),
    Case(
        "-o a symlink to a file, without --force",
        (*GENERATE, "-o", "link.txt", "Hello"),
        2,
        "link.txt: already exists (pass --force to overwrite)",
        files={"real.txt": OLD},
        model=TINY_ONNX,
        prepare=_symlink("link.txt", "real.txt"),
    ),
    Case(
        "-o a symlink to a file with --force: the target is replaced, the link stays",
        (*GENERATE, "-o", "link.txt", "--force", "Hello"),
        0,
        files={"real.txt": OLD},
        model=TINY_ONNX,
        prepare=_symlink("link.txt", "real.txt"),
        writes={"real.txt": None},
    ),
    Case(
        "-o a socket",
        (*GENERATE, "-o", "sock", "--force", "Hello"),
        2,
        "sock: is a socket; -o writes regular files, character devices and FIFOs",
        model=TINY_ONNX,
        prepare=_socket,
    ),
    Case(
        "-o a 250-byte file name",
        (*GENERATE, "-o", LONG_NAME, "Hello"),
        0,
        model=TINY_ONNX,
        writes={LONG_NAME: None},
    ),
    Case(
        "-o a 256-byte file name",
        (*GENERATE, "-o", TOO_LONG_NAME, "Hello"),
        2,
        ": file name too long",
        model=TINY_ONNX,
    ),
    Case(
        "-o below a file",
        (*GENERATE, "-o", "text.txt/out.txt", "Hello"),
        2,
        "text.txt: not a directory",
        files={"text.txt": b"x\n"},
        model=TINY_ONNX,
        prepare=BROKEN_MODEL,
    ),
    Case(
        "-o into a read-only directory, named, before the model loads",
        (*GENERATE, "-o", "ro/out.txt", "Hello"),
        2,
        "ro/out.txt: permission denied (cannot create files in ro)",
        files={"ro/keep.txt": b"keep\n"},
        model=TINY_ONNX,
        prepare=_read_only_dir,
        unreadable=("ro/keep.txt",),  # runs without root's file override
    ),
    Case(
        "score -o an existing file: refused before scoring, before the model loads",
        (*SCORE, "-o", "out.txt", "-f", "text.txt"),
        2,
        "out.txt: already exists (pass --force to overwrite)",
        files={"text.txt": b"The quick brown fox.\n", "out.txt": OLD},
        model=TINY_ONNX,
        prepare=BROKEN_MODEL,
    ),
    Case(
        "score -o into a missing directory, before the input is read",
        (*SCORE, "-o", "no/such/out.txt", "-f", "missing.txt"),
        2,
        "no/such: no such directory",
        model=TINY_ONNX,
    ),
    Case(
        "embed -o an existing file, before the model loads",
        (*EMBED, "-o", "out.npy", "--format", "npy", "Hello"),
        2,
        "out.npy: already exists (pass --force to overwrite)",
        files={"out.npy": OLD},
        model=TINY_ONNX,
        prepare=BROKEN_MODEL,
    ),
    Case(
        "generate --request -o an existing file, before the model loads",
        (*GENERATE, "--request", "req.json", "-o", "out.json"),
        2,
        "out.json: already exists (pass --force to overwrite)",
        files={"req.json": b'{"input_data": ["Hello"]}', "out.json": OLD},
        model=TINY_ONNX,
        prepare=BROKEN_MODEL,
    ),
    # export-onnx OUTDIR: refused before the export starts; --force replaces only an export.
    Case(
        "export-onnx: OUTDIR .",
        (*EXPORT, ".", "--force"),
        2,
        "OUTDIR must name a new directory",
        model=TINY_TORCH,
        max_seconds=30,
    ),
    Case(
        "export-onnx: OUTDIR a dangling symlink",
        (*EXPORT, "out"),
        2,
        "out: is a dangling symlink (nowhere)",
        model=TINY_TORCH,
        prepare=_symlink("out", "nowhere"),
        max_seconds=30,
    ),
    Case(
        "export-onnx: OUTDIR a file, with --force",
        (*EXPORT, "out", "--force"),
        2,
        "out: exists and is not a directory",
        files={"out": b"keep me\n"},
        model=TINY_TORCH,
        max_seconds=30,
    ),
    Case(
        "export-onnx: OUTDIR the source model, with --force",
        (*EXPORT, "{model}", "--force"),
        2,
        "is the source model directory",
        model=TINY_TORCH,
        max_seconds=30,
    ),
    Case(
        "export-onnx: OUTDIR containing the source model, with --force",
        (*EXPORT, "{work}", "--force"),
        2,
        "contains the source model directory",
        model=TINY_TORCH,
        max_seconds=30,
    ),
    Case(
        "export-onnx: OUTDIR inside the source model",
        (*EXPORT, "{model}/onnx"),
        2,
        "is inside the source model directory",
        model=TINY_TORCH,
        max_seconds=30,
    ),
    Case(
        "export-onnx: --force on a directory that is not an export: nothing deleted",
        (*EXPORT, "other", "--force"),
        2,
        "other: --force replaces only a previous gpt2cli export, and this directory has no "
        "valid gpt2cli-export.json; nothing was deleted",
        files={"other/notes.txt": b"notes\n", "other/sub/data.bin": b"data"},
        model=TINY_TORCH,
        max_seconds=30,
    ),
    Case(
        "export-onnx: --force on an export holding the user's own files: nothing deleted",
        ("export-onnx", "distilgpt2", "{model}", "--force"),
        2,
        "also holds notes.txt; nothing was deleted",
        model=TINY_ONNX,
        prepare=_foreign_file_in_export,
        max_seconds=30,
    ),
    Case(
        "export-onnx: --force on a planted manifest beside other files",
        ("export-onnx", "distilgpt2", "fake", "--force"),
        2,
        "also holds data.bin; nothing was deleted",
        files=FAKE_EXPORT,
        max_seconds=30,
    ),
    Case(
        "export-onnx: --block-size 1073741824",
        (*EXPORT, "out", "--quantize", "int4", "--block-size", "1073741824"),
        2,
        "--block-size: expected one of 16, 32, 64, 128, 256, got 1073741824",
        model=TINY_TORCH,
        max_seconds=30,
    ),
    Case(
        "export-onnx: --block-size 48",
        (*EXPORT, "out", "--quantize", "int4", "--block-size", "48"),
        2,
        "--block-size: expected one of 16, 32, 64, 128, 256, got 48",
        model=TINY_TORCH,
        max_seconds=30,
    ),
]
