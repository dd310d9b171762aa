"""Training rows and the order they are read in.

A *row* is block_size + 1 tokens: inputs are the first block_size, targets the last block_size,
with -1 where a target is not trained on. Pretraining rows are windows into the memory-mapped
token shards; SFT rows are examples packed end to end.

Which rows a micro-batch reads is a pure function of (seed, step, micro-step, rank): resuming
at step N reads exactly what an uninterrupted run would have, and DDP ranks read disjoint rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.errors import GptuiError
from ..core.tokenizer import fim_ids, get_encoding
from .loss import IGNORE
from .shards import PRETRAIN, load_array


def fim_permute(row: np.ndarray, rng: np.random.Generator, rate: float, eot: int, sentinels: tuple[int, int, int]) -> np.ndarray:
    """Fill-in-the-middle: each document in `row` (cut at <|endoftext|>) is, with probability
    `rate`, cut at two random points and rearranged prefix-suffix-middle:
    <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle [<|endoftext|>].
    The three sentinels lengthen the row, so it is cut back to its length at the end.
    """
    pre, mid, suf = sentinels
    ends = np.flatnonzero(row == eot) + 1
    pieces = []
    for doc in np.split(row, ends):
        has_eot = len(doc) > 0 and doc[-1] == eot
        body = doc[:-1] if has_eot else doc
        if len(body) >= 2 and rng.random() < rate:
            a, b = np.sort(rng.integers(0, len(body) + 1, size=2))
            doc = np.concatenate([[pre], body[:a], [suf], body[b:], [mid], body[a:b], doc[len(body):]])
        pieces.append(doc)
    return np.concatenate(pieces)[: len(row)].astype(row.dtype, copy=False)


class TokenWindows:
    """Pretraining rows: consecutive windows of the token stream, one shard at a time.

    Each epoch shifts the window grid by a seeded offset, so repeated epochs cut documents
    at different places instead of showing the model the very same windows again. With a
    FIM rate, documents are rearranged for fill-in-the-middle afresh each epoch (a function
    of seed, epoch and row, so resuming reads the same rows).
    """

    def __init__(self, shards: list[np.ndarray], block_size: int, seed: int, fim_rate: float = 0.0,
                 eot: int = 0, fim_sentinels: tuple[int, int, int] | None = None):
        self.shards = shards
        self.lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.block_size = block_size
        self.seed = seed
        if fim_rate > 0 and fim_sentinels is None:
            raise GptuiError("fill-in-the-middle needs an encoding with FIM tokens (gpt2-code)")
        self.fim_rate, self.eot, self.fim_sentinels = fim_rate, eot, fim_sentinels

    def _offset(self, epoch: int) -> int:
        return 0 if epoch == 0 else int(np.random.default_rng([self.seed, epoch, 1]).integers(self.block_size))

    def _counts(self, epoch: int) -> np.ndarray:
        return np.maximum(0, (self.lengths - 1 - self._offset(epoch)) // self.block_size)

    def epoch_size(self, epoch: int) -> int:
        return int(self._counts(epoch).sum())

    def rows(self, epoch: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts, T = self._counts(epoch), self.block_size
        ends = np.cumsum(counts)
        shard = np.searchsorted(ends, ids, side="right")
        starts = self._offset(epoch) + (ids - (ends[shard] - counts[shard])) * T
        windows = [self.shards[s][p : p + T + 1] for s, p in zip(shard, starts)]
        if self.fim_rate > 0:
            windows = [fim_permute(w, np.random.default_rng([self.seed, 3, epoch, int(i)]), self.fim_rate, self.eot,
                                   self.fim_sentinels) for w, i in zip(windows, ids)]
        batch = np.stack(windows).astype(np.int64)
        return batch[:, :-1], batch[:, 1:]

    def targets(self, epoch: int, ids: np.ndarray) -> int:
        return len(ids) * self.block_size


class PackedExamples:
    """SFT rows: whole examples packed into rows in a seeded order, padded with <|endoftext|>.

    Targets are the response tokens (and the <|endoftext|> after each response); prompts and
    padding are -1. Examples longer than a row are left out (a cut-off response would teach
    the model to stop mid-answer) and counted in `too_long`.
    """

    def __init__(self, folder: Path, split: dict, block_size: int, seed: int, eot: int):
        tokens = load_array(folder / split["files"]["tokens"])
        mask = load_array(folder / split["files"]["mask"])
        offsets = load_array(folder / split["files"]["offsets"])
        lengths = np.diff(offsets)
        width = block_size + 1
        order = np.random.default_rng([seed, 2]).permutation(len(lengths))
        rows: list[list[int]] = []
        used, self.too_long = width, 0
        for i in order:
            if lengths[i] > width:
                self.too_long += 1
                continue
            if used + lengths[i] > width:
                rows.append([])
                used = 0
            rows[-1].append(int(i))
            used += int(lengths[i])
        self.tokens = np.full((len(rows), width), eot, dtype=np.uint16)
        self.mask = np.zeros((len(rows), width), dtype=bool)
        for r, members in enumerate(rows):
            pos = 0
            for i in members:
                start, end = offsets[i], offsets[i + 1]
                self.tokens[r, pos : pos + end - start] = tokens[start:end]
                self.mask[r, pos : pos + end - start] = mask[start:end]
                pos += end - start
        self.examples = sum(map(len, rows))

    def epoch_size(self, epoch: int) -> int:
        return len(self.tokens)

    def rows(self, epoch: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.tokens[ids].astype(np.int64)
        return t[:, :-1], np.where(self.mask[ids, 1:], t[:, 1:], IGNORE)

    def targets(self, epoch: int, ids: np.ndarray) -> int:
        return int(self.mask[ids, 1:].sum())


class MixedRows:
    """Rows of one source with code windows mixed in: a share `rate` of each epoch's rows are
    windows of a second, prepared code folder (every token a target). For SFT: fine-tuning on
    instructions alone moves a model away from plain code; replaying pretraining data keeps its
    completions. For pretraining: a small corpus of better code is seen more often than its size
    alone would give.

    Row ids below the first source's count are its rows; the others are code windows, taken in
    order from where the previous epoch stopped, so successive epochs see different windows.
    """

    def __init__(self, sft, code: TokenWindows, rate: float):
        if not 0 < rate < 1:
            raise GptuiError(f"the mix rate must be between 0 and 1, got {rate}")
        self.sft, self.code = sft, code
        self.too_long = getattr(sft, "too_long", 0)
        self.n_sft = sft.epoch_size(0)
        self.n_code = max(1, round(self.n_sft * rate / (1 - rate)))
        if code.epoch_size(0) == 0:
            raise GptuiError("the mixed-in code data has no complete rows for this context")

    def epoch_size(self, epoch: int) -> int:
        return self.n_sft + self.n_code

    def _split(self, epoch: int, ids: np.ndarray):
        is_code = ids >= self.n_sft
        code_ids = (ids[is_code] - self.n_sft + epoch * self.n_code) % self.code.epoch_size(0)
        return is_code, ids[~is_code], code_ids

    def rows(self, epoch: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        is_code, sft_ids, code_ids = self._split(epoch, ids)
        x = np.empty((len(ids), self.code.block_size), dtype=np.int64)
        y = np.empty_like(x)
        for mask, part, source in ((~is_code, sft_ids, self.sft), (is_code, code_ids, self.code)):
            if len(part):
                x[mask], y[mask] = source.rows(0 if source is self.code else epoch, part)
        return x, y

    def targets(self, epoch: int, ids: np.ndarray) -> int:
        is_code, sft_ids, code_ids = self._split(epoch, ids)
        return (self.sft.targets(epoch, sft_ids) if len(sft_ids) else 0) + len(code_ids) * self.code.block_size


def open_rows(folder: Path, manifest: dict, split: str, block_size: int, seed: int, fim_rate: float = 0.0):
    """The rows of one split; fim_rate > 0 rearranges pretraining documents for fill-in-the-middle."""
    info = manifest["splits"].get(split)
    if info is None:
        raise GptuiError(f"{folder}: no {split!r} split")
    if manifest["kind"] == PRETRAIN:
        sentinels = fim_ids(get_encoding(manifest["encoding"])) if fim_rate > 0 else None
        return TokenWindows([load_array(folder / s["file"]) for s in info["shards"]], block_size, seed, fim_rate,
                            manifest["eot_token"], sentinels)
    return PackedExamples(folder, info, block_size, seed, manifest["eot_token"])


class Sampler:
    """Global sample g of step s is row perm_e[g - start_e] of the epoch e that g falls in.

    A step reads micro_batch * accum * world consecutive samples; micro-step m on rank r reads
    the slice starting at (m * world + r) * micro_batch. The union over ranks and micro-steps
    is the same for any world size with the same global batch, which makes DDP runs match
    single-process ones.
    """

    def __init__(self, rows, seed: int, micro_batch: int, accum: int, world: int):
        self.rows, self.seed = rows, seed
        self.micro_batch, self.accum, self.world = micro_batch, accum, world
        self.per_step = micro_batch * accum * world
        self._epoch_starts = [0]
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.rows.epoch_size(epoch))
        return self._perms[epoch]

    def _locate(self, g: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(epoch, row ids) groups for global sample indices g (ascending)."""
        while self._epoch_starts[-1] <= g[-1]:
            size = self.rows.epoch_size(len(self._epoch_starts) - 1)
            if size == 0:
                raise GptuiError("the training split has no complete rows; prepare more data")
            self._epoch_starts.append(self._epoch_starts[-1] + size)
        starts = np.array(self._epoch_starts)
        epochs = np.searchsorted(starts, g, side="right") - 1
        groups = []
        for epoch in np.unique(epochs):
            local = g[epochs == epoch] - starts[epoch]
            groups.append((int(epoch), self._perm(int(epoch))[local]))
        return groups

    def micro_batch_rows(self, step: int, micro: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
        first = step * self.per_step + (micro * self.world + rank) * self.micro_batch
        parts = [self.rows.rows(e, ids) for e, ids in self._locate(np.arange(first, first + self.micro_batch))]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def step_targets(self, step: int) -> int:
        """Targets in the whole step, over all ranks: the loss is their mean."""
        g = np.arange(step * self.per_step, (step + 1) * self.per_step)
        return sum(self.rows.targets(e, ids) for e, ids in self._locate(g))

    def epochs(self, step: int) -> float:
        """About how many passes over the data `step` steps make (for people reading the logs)."""
        return step * self.per_step / max(1, self.rows.epoch_size(0))


def eval_row_ids(rows, max_rows: int, rank: int, world: int) -> np.ndarray:
    """A fixed, evenly spread set of validation rows (epoch 0, unshuffled), this rank's share."""
    n = rows.epoch_size(0)
    ids = np.unique(np.linspace(0, n - 1, num=min(n, max_rows)).astype(np.int64)) if n else np.array([], np.int64)
    return ids[rank::world]


def to_device(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinned host memory and a non-blocking copy, so the GPU never waits on the transfer."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if device.type == "cuda":
        return xt.pin_memory().to(device, non_blocking=True), yt.pin_memory().to(device, non_blocking=True)
    return xt, yt
