"""Checkpoint folders: config.json + model.safetensors (sharded with an index when large) + card.json.

Weights never go through pickle. A folder is written beside its destination and swapped in by
rename, so an interrupted save leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import staged_folder, umask, write_json_atomic
from .config import GPTConfig
from .errors import GptuiError
from .model import GPT
from .tokenizer import ENCODINGS

CONFIG = "config.json"
CARD = "card.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TIED = "lm_head.weight"  # tied to transformer.wte.weight, so stored once
FORMAT_VERSION = 1


def read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise GptuiError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GptuiError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise GptuiError(f"{path}: expected a JSON object")
    return data


def _weights_to_save(model: GPT, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    sd = {k: v for k, v in model.state_dict().items() if k != TIED}
    return {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous() for k, v in sd.items()}


def _split_large(tensors: dict[str, torch.Tensor], max_bytes: int) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Cut tensors larger than max_bytes into row blocks named NAME:partK, so no file exceeds it."""
    out, parts = {}, {}
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if nbytes <= max_bytes or t.dim() == 0:
            out[name] = t
            continue
        rows = max(1, max_bytes * t.size(0) // nbytes)
        pieces = torch.split(t, rows, dim=0)
        parts[name] = [f"{name}:part{k}" for k in range(len(pieces))]
        out.update({part: piece.contiguous() for part, piece in zip(parts[name], pieces)})
    return out, parts


def _write_weights(folder: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int | None) -> None:
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if not max_shard_bytes or total <= max_shard_bytes:
        save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
        return
    # Leave room for each file's JSON header (a few KB) below the limit.
    tensors, split = _split_large(tensors, max_shard_bytes - 64 * 1024)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes - 64 * 1024:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / fname, metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    if split:
        index["split_tensors"] = split  # NAME -> its row blocks, concatenated in order on load
    write_json_atomic(folder / WEIGHTS_INDEX, index)


def save_checkpoint(
    folder: str | Path,
    model: GPT,
    encoding: str,
    provenance: dict | None = None,
    card: dict | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write a checkpoint folder atomically, replacing any previous one at that path."""
    folder = Path(folder)
    with staged_folder(folder) as tmp:
        write_checkpoint_files(tmp, model, encoding, provenance, card, dtype, max_shard_bytes)
    return folder


def write_checkpoint_files(folder: Path, model: GPT, encoding: str, provenance: dict | None = None,
                           card: dict | None = None, dtype: torch.dtype | None = None,
                           max_shard_bytes: int | None = None) -> None:
    """Weights, config and card into an existing (staged) folder."""
    _write_weights(folder, _weights_to_save(model, dtype), max_shard_bytes)
    write_json_atomic(folder / CONFIG, {
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "encoding": encoding,
        "provenance": provenance or {},
    })
    write_json_atomic(folder / CARD, card or {})
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask())  # safetensors writes 0600


def weight_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if (folder / WEIGHTS_INDEX).exists():
        index = read_json(folder / WEIGHTS_INDEX)
        return [folder / f for f in sorted(set(index.get("weight_map", {}).values()))]
    return [folder / WEIGHTS]


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder opened once: config.json read and checked; the weights, their
    fingerprint and the card are read only when asked for. Opening renames nothing: where a save
    may have been killed between its two renames, call `recover(folder)` first."""

    folder: Path
    config: GPTConfig
    encoding: str
    meta: dict  # the whole config.json

    @classmethod
    def open(cls, folder: str | Path) -> Checkpoint:
        folder = Path(folder)
        if not folder.is_dir():
            raise GptuiError(f"model folder {folder} does not exist")
        meta = read_json(folder / CONFIG)
        try:
            config = GPTConfig.from_dict(meta["model"])
            encoding = meta["encoding"]
        except (KeyError, TypeError, ValueError) as e:
            raise GptuiError(f"{folder / CONFIG}: not a gptui model config ({e})") from None
        if encoding not in ENCODINGS:
            raise GptuiError(f"{folder / CONFIG}: unknown encoding {encoding!r}")
        return cls(folder, config, encoding, meta)

    @property
    def provenance(self) -> dict:
        return self.meta.get("provenance", {})

    @property
    def card(self) -> dict:
        return read_card(self.folder)

    @property
    def files(self) -> list[Path]:
        return weight_files(self.folder)

    @functools.cached_property
    def fingerprint(self) -> str:
        return weights_fingerprint(self.folder)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return load_state_dict(self.folder)

    def load_model(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GPT:
        """The model in eval mode. Built on the meta device, then the loaded tensors are assigned."""
        state = self.state_dict()
        with torch.device("meta"):
            model = GPT(self.config)
        expected = {k: v.shape for k, v in model.state_dict().items() if k != TIED}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
        if missing or unexpected or wrong:
            detail = "; ".join(
                f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if names
            )
            raise GptuiError(f"{self.folder}: weights do not match config.json ({detail})")
        state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
        return model.eval()


def read_card(folder: str | Path) -> dict:
    path = Path(folder) / CARD
    return read_json(path) if path.exists() else {}


def update_card(folder: str | Path, **metrics) -> dict:
    """Merge metrics into card.json (nested dicts are merged one level deep)."""
    card = read_card(folder)
    for k, v in metrics.items():
        card[k] = {**card[k], **v} if isinstance(v, dict) and isinstance(card.get(k), dict) else v
    write_json_atomic(Path(folder) / CARD, card)
    return card


def load_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except FileNotFoundError:
            raise GptuiError(f"{path}: missing weights file") from None
        except (SafetensorError, OSError, ValueError) as e:
            raise GptuiError(f"{path}: corrupted or truncated weights ({e})") from None
    if (folder / WEIGHTS_INDEX).exists():
        for name, parts in read_json(folder / WEIGHTS_INDEX).get("split_tensors", {}).items():
            if not all(part in tensors for part in parts):
                raise GptuiError(f"{folder}: weights index lists parts of {name} that no file holds")
            tensors[name] = torch.cat([tensors.pop(part) for part in parts], dim=0)
    return tensors


def load_model(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[GPT, str]:
    """(model in eval mode, encoding name) of the checkpoint in `folder`."""
    ckpt = Checkpoint.open(folder)
    return ckpt.load_model(device, dtype), ckpt.encoding


def weights_fingerprint(folder: str | Path) -> str:
    """SHA-256 over the weight files: derived artifacts (ONNX, INT8) record it to detect staleness."""
    h = hashlib.sha256()
    for path in weight_files(Path(folder)):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def folder_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in weight_files(Path(folder)) if p.exists())
