"""The finetune output directory: checked before training, built in a hidden staging directory
beside it (which also holds the checkpoints that `--resume` continues from), and renamed into
place at the end, with its manifest `gpt2cli-finetune.json`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from gpt2cli.errors import InputError
from gpt2cli.outputs import check_directory

MANIFEST = "gpt2cli-finetune.json"
MANIFEST_FORMAT = "gpt2cli-finetune"
CHECKPOINTS = "checkpoints"


def staging_dir(outdir: Path) -> Path:
    """Where a run into `outdir` works: the same name every time, so that a killed run's
    checkpoints are found again by `--resume`."""
    return outdir.parent / f".{outdir.name}.finetune"


def check_outdir(outdir: Path, force: bool, source: Path | None = None) -> bool:
    """Refuse an OUTDIR that finetune must not create or replace. True when it is a previous
    finetune output (which --force replaces); False when it does not exist yet."""
    if outdir.name in ("", "..", ".") or str(outdir).endswith("/."):
        raise InputError(f"{outdir}: --output-dir must name a new directory, not '.', '..' or '/'")
    if source is not None:
        out, src = Path(os.path.realpath(outdir)), Path(os.path.realpath(source))
        if out == src or src in out.parents or out in src.parents:
            raise InputError(f"{outdir}: overlaps the base model's directory {source}")
    try:
        mode = os.lstat(outdir).st_mode
    except FileNotFoundError:
        ancestor = outdir.absolute().parent
        while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        check_directory(str(outdir), str(ancestor))
        return False
    except NotADirectoryError:
        raise InputError(f"{outdir}: a parent is not a directory") from None
    if stat.S_ISLNK(mode):
        raise InputError(f"{outdir}: is a symlink; give a new directory")
    if not stat.S_ISDIR(mode):
        raise InputError(f"{outdir}: exists and is not a directory")
    if not force:
        raise InputError(f"{outdir}: already exists (pass --force to replace a previous finetune "
                         "output)")
    check_previous_output(outdir)
    return True


def check_previous_output(outdir: Path) -> None:
    """--force replaces only what finetune wrote: a directory with a valid manifest holding only
    the files it lists; anything else is refused and nothing is deleted."""
    refusal = f"{outdir}: --force replaces only a previous finetune output, and this directory "
    manifest = outdir / MANIFEST
    try:
        data = None if manifest.is_symlink() else json.loads(manifest.read_text("utf-8"))
    except (OSError, ValueError):
        data = None
    listed = data.get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(
        listed, dict
    ):
        raise InputError(refusal + f"has no valid {MANIFEST}; nothing was deleted")
    foreign = sorted(
        entry.name for entry in os.scandir(outdir)
        if entry.name != MANIFEST and (entry.name not in listed
                                       or not entry.is_file(follow_symlinks=False))
    )
    if foreign:
        raise InputError(refusal + f"also holds {', '.join(foreign[:3])}; nothing was deleted")


class Staging:
    """The staging directory of one run, locked against a second run into the same OUTDIR."""

    def __init__(self, outdir: Path, resume: bool, force: bool) -> None:
        self.outdir = outdir
        self.path = staging_dir(outdir)
        self.checkpoints = self.path / CHECKPOINTS
        self.final = self.path / "final"
        self._lock: int | None = None
        existed = self.path.is_dir()
        if resume and not existed:
            raise InputError(
                param="resume", reason=f"no checkpoints of an earlier run into {outdir} "
                f"(looked in {self.path})",
            )
        try:
            outdir.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir(mode=0o700, exist_ok=True)
            self._lock = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{outdir}: another finetune run is writing it") from None
        except OSError as exc:
            raise InputError(f"{outdir}: cannot create it: {exc.strerror}") from None
        if existed and not resume:
            if self.last_checkpoint() is not None and not force:
                self.release()
                raise InputError(
                    f"{outdir}: an earlier run left checkpoints in {self.path}: pass --resume "
                    "to continue it, or --force to start over"
                )
            self.clear()
        shutil.rmtree(self.final, ignore_errors=True)

    def last_checkpoint(self) -> Path | None:
        found = [p for p in self.checkpoints.glob("checkpoint-*")
                 if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
        return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None

    def clear(self) -> None:
        for entry in self.path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["files"] = {p.name: p.stat().st_size for p in sorted(self.final.iterdir())
                             if p.is_file()}
        (self.final / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")

    def commit(self, force: bool) -> None:
        """Rename the finished model to OUTDIR (without --force only where nothing exists:
        the name is claimed with an exclusive mkdir), then remove the staging directory."""
        umask = os.umask(0)
        os.umask(umask)
        self.final.chmod(0o777 & ~umask)
        for path in self.final.iterdir():
            path.chmod(0o666 & ~umask)
        if force and os.path.lexists(self.outdir):
            check_outdir(self.outdir, force=True)
            old = self.path / "replaced"
            self.outdir.rename(old)
            try:
                self.final.rename(self.outdir)
            except BaseException:
                old.rename(self.outdir)
                raise
        else:
            try:
                self.outdir.mkdir()
            except FileExistsError:
                raise InputError(
                    f"{self.outdir}: already exists (it appeared during training; pass --force)"
                ) from None
            self.final.rename(self.outdir)
        self.remove()

    def remove(self) -> None:
        """The staging directory and its checkpoints, gone."""
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock)
            self._lock = None
