"""Run checkpoints: a model folder (core.checkpoint) plus the training state beside its weights.

`latest/` is rewritten every --save-every steps and on a signal; `best/` whenever validation
loss improves. Each is built in full under a scratch name and swapped in by rename, using the
same `.NAME.old` convention as core.checkpoint, so a kill at any instant leaves the previous
checkpoint loadable (core.checkpoint.read_config restores `.NAME.old` if needed).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..core.checkpoint import read_config, save_checkpoint
from ..core.errors import GptuiError
from ..core.model import GPT

LATEST = "latest"
BEST = "best"
STATE = "training_state.pt"
RUN_CONFIG = "run.json"
METRICS = "metrics.jsonl"


def save_run_checkpoint(out: Path, name: str, model: GPT, encoding: str, provenance: dict, card: dict,
                        state: dict | None) -> Path:
    """Write out/NAME atomically: weights, config, card and (for `latest`) the training state."""
    target = out / name
    scratch = out / f".{name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)  # left by a run killed while saving
    try:
        save_checkpoint(scratch, model, encoding, provenance=provenance, card=card)
        if state is not None:
            tmp = scratch / f".{STATE}.tmp"
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, scratch / STATE)
        old = out / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(scratch, target)  # between the renames, `old` is whole and read_config restores it
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target


def load_training_state(folder: Path) -> dict:
    """The optimizer, step and counters saved with a `latest` checkpoint (tensors and plain data only)."""
    read_config(folder)  # also puts back a checkpoint a kill left under .latest.old
    path = folder / STATE
    if not path.is_file():
        raise GptuiError(f"{folder}: no {STATE}; it is a model, not a resumable run checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: torch raises several types
        raise GptuiError(f"{path}: unreadable training state ({e})") from None
