"""`gptui-train eval`: loss per token, perplexity and bits per byte of a model on held-out code.

Bits per byte divides the total loss by the UTF-8 bytes of the predicted text, so models with
different tokenizers (gpt2 vs gpt2-code) can be compared on the same files; loss per token
cannot. Text is cut into windows of one context each (the first token of a window is given,
the rest predicted), the same way training's validation does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.checkpoint import Checkpoint, load_model
from ..core.errors import GptuiError
from ..core.registry import resolve
from ..core.tokenizer import encode_document, get_encoding
from .data import PackedExamples, eval_row_ids
from .distributed import pick_device
from .loss import IGNORE
from .shards import PRETRAIN, TOKEN_DTYPE, load_array, read_manifest
from .sources import find_python_files, read_source


def token_bytes(encoding: str, size: int) -> np.ndarray:
    """UTF-8 bytes each token id stands for; 0 for <|endoftext|> and padding (they are not text)."""
    enc = get_encoding(encoding)
    lengths = np.zeros(size, dtype=np.int64)
    for i in range(enc.n_vocab):
        if i != enc.eot_token:
            lengths[i] = len(enc.decode_single_token_bytes(i))
    return lengths


def stream_windows(streams: list[np.ndarray], block_size: int, max_tokens: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) windows of up to block_size predictions, from the start of each stream."""
    windows, predicted = [], 0
    for stream in streams:
        for start in range(0, len(stream) - 1, block_size):
            w = np.asarray(stream[start : start + block_size + 1], dtype=np.int64)
            windows.append((w[:-1], w[1:]))
            predicted += len(w) - 1
            if predicted >= max_tokens:
                return windows
    return windows


def python_dir_streams(roots: list[Path], encoding: str, max_file_bytes: int = 1_000_000) -> list[np.ndarray]:
    """The usable, deduplicated .py files under roots, tokenised, <|endoftext|> after each."""
    enc = get_encoding(encoding)
    seen, ids = set(), []
    roots = [Path(r) for r in roots]
    for c in find_python_files(roots):
        text, reason, sha = read_source(roots[c.root] / c.path, max_file_bytes)
        if text is not None and sha not in seen:
            seen.add(sha)
            ids.extend(encode_document(enc, text))
    if not ids:
        raise GptuiError(f"no usable .py files under {', '.join(map(str, roots))}")
    return [np.asarray(ids, dtype=TOKEN_DTYPE)]


def prepared_windows(folder: Path, split: str, block_size: int, max_tokens: int, encoding: str):
    manifest = read_manifest(folder)
    if manifest["encoding"] != encoding:
        raise GptuiError(f"{folder} was tokenised with {manifest['encoding']} but the model uses {encoding}")
    info = manifest["splits"].get(split)
    if not info or not info["tokens"]:
        raise GptuiError(f"{folder}: the {split!r} split is empty")
    if manifest["kind"] == PRETRAIN:
        return stream_windows([load_array(folder / s["file"]) for s in info["shards"]], block_size, max_tokens)
    rows = PackedExamples(folder, info, block_size, seed=0, eot=manifest["eot_token"])
    ids = eval_row_ids(rows, max(1, max_tokens // block_size), 0, 1)
    x, y = rows.rows(0, ids)
    return list(zip(x, y))


def _torch_losses(model, windows, batch_size: int, device: torch.device) -> tuple[float, list[np.ndarray]]:
    """Summed loss and the scored targets, batching windows of equal length."""
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    total, scored = 0.0, []
    by_length: dict[int, list] = {}
    for x, y in windows:
        by_length.setdefault(len(x), []).append((x, y))
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            x = torch.from_numpy(np.stack([c[0] for c in chunk])).to(device)
            y = torch.from_numpy(np.stack([c[1] for c in chunk])).to(device)
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x).float()
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum").item()
            scored.extend(c[1] for c in chunk)
    return total, scored


def _backend_losses(backend, windows) -> tuple[float, list[np.ndarray]]:
    """Summed loss through a backend's own forward pass (Backend.logits_all), one window at a time."""
    total, scored = 0.0, []
    for x, y in windows:
        logits = backend.logits_all([int(t) for t in x]).float()
        total += F.cross_entropy(logits, torch.from_numpy(y), ignore_index=IGNORE, reduction="sum").item()
        scored.append(y)
    return total, scored


def evaluate(model_ref: str, data: Path | None = None, split: str = "val", py_dirs: list[Path] | None = None,
             backend: str | None = None, max_tokens: int = 1 << 20, batch_size: int = 8, device: str = "auto") -> dict:
    folder = resolve(model_ref)
    ckpt = Checkpoint.open(folder)
    config, encoding = ckpt.config, ckpt.encoding
    if (data is None) == (not py_dirs):
        raise GptuiError("give exactly one of --data PREPARED or --py-dir DIR")
    if data is not None:
        windows = prepared_windows(Path(data), split, config.block_size, max_tokens, encoding)
        source = f"{data} ({split})"
    else:
        windows = stream_windows(python_dir_streams(py_dirs, encoding), config.block_size, max_tokens)
        source = ", ".join(map(str, py_dirs))
    if not windows:
        raise GptuiError(f"{source}: nothing to evaluate")
    if backend:
        from ..core.backends import load_backend

        total, scored = _backend_losses(load_backend(backend, folder), windows)
    else:
        dev = pick_device(device)
        model, _ = load_model(folder, device=dev)
        total, scored = _torch_losses(model, windows, batch_size, dev)
    targets = np.concatenate(scored)
    targets = targets[targets != IGNORE]
    n_bytes = int(token_bytes(encoding, config.padded_vocab_size)[targets].sum())
    loss = total / len(targets)
    return {
        "model": str(folder),
        "backend": backend or "torch",
        "source": source,
        "tokens": int(len(targets)),
        "bytes": n_bytes,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total / math.log(2) / max(1, n_bytes),
    }
