"""Run checkpoints: a model folder (core.checkpoint) plus the training state beside its weights.

`latest/` is rewritten every --save-every steps and on a signal; `best/` whenever validation
loss improves. Each is built in full under a scratch name and swapped in by rename, using the
same `.NAME.old` convention as core.checkpoint, so a kill at any instant leaves the previous
checkpoint loadable (core.atomic.recover, called before a resume, restores `.NAME.old`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..core.atomic import recover, staged_folder
from ..core.checkpoint import Checkpoint, write_checkpoint_files
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
    with staged_folder(target) as scratch:
        write_checkpoint_files(scratch, model, encoding, provenance=provenance, card=card)
        if state is not None:
            with open(scratch / STATE, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
    return target


def load_training_state(folder: Path) -> dict:
    """The optimizer, step and counters saved with a `latest` checkpoint (tensors and plain data only)."""
    recover(folder)  # puts back a checkpoint a kill left under .latest.old
    Checkpoint.open(folder)
    path = folder / STATE
    if not path.is_file():
        raise GptuiError(f"{folder}: no {STATE}; it is a model, not a resumable run checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: torch raises several types
        raise GptuiError(f"{path}: unreadable training state ({e})") from None
