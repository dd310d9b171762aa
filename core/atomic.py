"""Writes that a crash cannot leave half done: files through a temp file and a rename, folders
staged beside their target and swapped in with two renames (the previous copy stays whole under
.NAME.old in between, and `recover` puts it back)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import GptuiError


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace path with data. The file keeps an existing file's permissions, else gets `mode`, else
    what open() would give it (mkstemp alone makes 0600)."""
    path = Path(path)
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _old(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


@contextlib.contextmanager
def staged_folder(out: Path):
    """Yield an empty scratch folder beside `out`; on success it replaces `out`, on failure (or
    Ctrl-C) it vanishes and `out` is untouched. The scratch has a fixed name, so one left by a
    killed process is cleared by the next write (one writer per folder)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise GptuiError(f"cannot write {out}: {e.strerror or e}") from None
    try:
        yield tmp
        old = _old(out)
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)  # between these two renames the previous copy is still whole at `old`
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover(folder: Path) -> None:
    """A swap killed between its two renames leaves only the previous copy, under .NAME.old."""
    old = _old(Path(folder))
    if not Path(folder).exists() and old.is_dir():
        os.replace(old, folder)
