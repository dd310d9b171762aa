"""A prepared data folder on disk: token arrays (.npy, memory-mappable) and manifest.json.

Pretraining data is a stream of uint16 token ids with <|endoftext|> after every document, cut
into shards at document boundaries. SFT data is one token array per split with a parallel
loss mask and document offsets. The manifest says which files hold what.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.atomic import write_json_atomic
from ..core.checkpoint import read_json
from ..core.errors import GptuiError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TOKEN_DTYPE = np.uint16  # every supported encoding has fewer than 65,536 ids
PRETRAIN = "pretrain"
SFT = "sft"


def save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def load_array(path: Path) -> np.ndarray:
    """Memory-mapped: the OS pages shards in as the loader touches them."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise GptuiError(f"{path}: missing (re-run gptui-train prepare)") from None
    except (OSError, ValueError) as e:
        raise GptuiError(f"{path}: unreadable ({e})") from None


def read_manifest(folder: str | Path, kind: str | None = None) -> dict:
    """The manifest of a prepared folder, checked to be of the expected kind."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise GptuiError(f"{folder}: not a prepared data folder (no {MANIFEST}; run gptui-train prepare)")
    manifest = read_json(folder / MANIFEST)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise GptuiError(f"{folder}: prepared by another gptui version; run gptui-train prepare again")
    if kind and manifest.get("kind") != kind:
        want = "a directory of .py files" if kind == PRETRAIN else "--hf or --mine"
        raise GptuiError(f"{folder}: holds {manifest.get('kind')} data; this needs {kind} data (prepare from {want})")
    return manifest


def check_output(out: Path, fingerprint: str, force: bool) -> bool:
    """True when `out` already holds exactly this preparation. Raises when it holds anything else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise GptuiError(f"{out} exists and is not a directory")
    if (out / MANIFEST).is_file():
        try:
            same = read_json(out / MANIFEST).get("fingerprint") == fingerprint
        except GptuiError:
            same = False
        if same:
            return True
        if force:
            return False
        raise GptuiError(f"{out} holds other prepared data (use --force to replace it)")
    if any(out.iterdir()):
        raise GptuiError(f"{out} exists and is not empty")
    return False


def write_manifest(folder: Path, manifest: dict) -> None:
    write_json_atomic(folder / MANIFEST, {"format_version": FORMAT_VERSION, **manifest})
