"""-o files and export-onnx OUTDIR where a bad-input row cannot show it: two real processes
racing for one name, device nodes, a full file system, a closed stdout during an export."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt2cli.errors import InputError
from gpt2cli.exporting import _move_into_place
from gpt2cli.outputs import NAME_MAX, atomic_file, temp_name
from tests.clirun import assert_one_line_error, run_cli

GPT2CLI = str(Path(sys.executable).parent / "gpt2cli")
ENV = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}


def temporaries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_two_runs_racing_for_one_name_one_wins(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    """Both pass the early check and open their temporary files; then both finish. Without
    --force the second to commit must fail, not silently replace the first one's result."""
    args = [GPT2CLI, "generate", "-m", str(tiny_onnx_dir), "--max-new-tokens", "2"]
    runs = [
        subprocess.Popen(
            [*args, "-o", "same.txt", "-f", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=tmp_path, env=ENV,
        )
        for _ in range(2)
    ]
    # The prompt is read after the output is opened: hold it back until both temporary files
    # exist, so that neither run can have committed before the other checked.
    deadline = time.monotonic() + 120
    while len(temporaries(tmp_path)) < 2 and time.monotonic() < deadline:
        assert all(run.poll() is None for run in runs), [run.stderr.read() for run in runs]
        time.sleep(0.05)
    assert len(temporaries(tmp_path)) == 2, "the two runs never wrote at the same time"
    results = [run.communicate(b"Hello", timeout=120) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 2], [err.decode() for _, err in results]
    loser = next(err.decode() for (_, err), run in zip(results, runs, strict=True)
                 if run.returncode)
    assert loser.count("\n") == 1 and loser.startswith("gpt2cli: error: same.txt: already exists")
    assert "appeared while this command ran" in loser
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.txt"]  # no temporary file left
    assert (tmp_path / "same.txt").read_text().startswith("Hello")


def test_commit_never_replaces_a_file_that_appeared(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(InputError, match="out.txt: already exists"), atomic_file(target) as f:
        f.write("new")
        target.write_text("someone else's")
    assert target.read_text() == "someone else's"
    assert temporaries(tmp_path) == []


def test_force_replaces_a_symlinks_target_and_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("old")
    (tmp_path / "link.txt").symlink_to("real.txt")
    with atomic_file(tmp_path / "link.txt", force=True) as f:
        f.write("new")
    assert os.readlink(tmp_path / "link.txt") == "real.txt"
    assert (tmp_path / "real.txt").read_text() == "new"


def test_temporary_names_fit_any_valid_name() -> None:
    for name in ("a", "n" * 250, "é" * 127, "x" * NAME_MAX):
        tmp = temp_name(name)
        assert len(os.fsencode(tmp)) <= NAME_MAX and tmp.startswith(".") and tmp.endswith(".tmp")
    assert temp_name("out.txt") != temp_name("out.txt")


def test_a_character_device_is_written_through_not_replaced(
    tiny_onnx_dir: Path, tmp_path: Path
) -> None:
    """The issue's reproduction: `mknod fakenull c 1 3; ... -o fakenull --force`."""
    device = tmp_path / "fakenull"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod is not permitted here")
    result = run_cli(
        "generate", "-m", str(tiny_onnx_dir), "--max-new-tokens", "2", "-o", str(device),
        "--force", "Hello",
    )
    assert result.returncode == 0 and result.stderr == b"", result.err
    assert stat.S_ISCHR(device.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakenull"]


@pytest.fixture
def tiny_file_system(tmp_path: Path):  # noqa: ANN201
    """A 16 KiB tmpfs (root only); skipped where mounting is not permitted."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_names_the_output(
    tiny_onnx_dir: Path, tmp_path: Path, tiny_file_system: Path
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"line {i}\n" for i in range(40)))
    out = tiny_file_system / "vectors.jsonl"
    result = run_cli(
        "embed", "-m", str(tiny_onnx_dir), "--lines", "-f", str(texts), "-o", str(out)
    )
    line = assert_one_line_error(result, 1)
    assert f"{out}: cannot write: no space left on device" in line
    assert list(tiny_file_system.iterdir()) == []  # the temporary file is gone


def test_export_with_stdout_closed_writes_outdir(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`export-onnx M OUT >&-`: the export is a directory; only its summary line is lost."""
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "-c", '"$0" export-onnx "$1" "$2" --no-validate >&-', GPT2CLI,
         str(tiny_model_dir), str(out)],
        capture_output=True, env=ENV, timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"error" not in done.stderr and b"Traceback" not in done.stderr
    assert (out / "gpt2cli-export.json").is_file() and (out / "model.onnx").is_file()
    assert temporaries(tmp_path) == []


def test_outdir_that_appears_during_the_export_is_not_replaced(tmp_path: Path) -> None:
    staging = tmp_path / ".out.tmp"
    final = staging / "final"
    final.mkdir(parents=True)
    (final / "model.onnx").write_bytes(b"new export")
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="appeared during the export"):
        _move_into_place(final, outdir, staging, force=False)
    assert [p.name for p in outdir.iterdir()] == ["notes.txt"]
