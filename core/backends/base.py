"""The interface every inference backend implements; the sampling loop sits above it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from .contract import READY, LoadOptions, Status


def cpu_threads(threads: int | None = None) -> int:
    """The CPU threads a backend computes with: `threads` when given, else torch's own count (the
    cores this process may use, or OMP_NUM_THREADS).

    Every path resolves it here (the CLI, the app and the server pass nothing; `gptui bench`
    passes --threads after giving torch the same number), so ONNX Runtime and torch agree on it
    and an ONNX session never falls back to its own default: left at 0, ONNX Runtime pins one
    worker to each core, where a busy neighbour on that core stalls every kernel.
    """
    return threads or torch.get_num_threads()


class Backend(ABC):
    """A model ready to run: prefill a prompt, then decode one token at a time.

    Backends hold their own KV cache and position. Logits come back as a 1-D float32 tensor
    over the padded vocabulary (the sampler ignores padding), on the backend's device: a GPU
    backend's stay on the GPU and the sampler works there.
    """

    name: str = ""
    block_size: int = 0  # context window; the generation loop slides it, backends never overflow
    position: int = 0  # tokens currently in the cache

    @abstractmethod
    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Start a new sequence from ids (1 <= len <= block_size); logits after its last token."""

    @abstractmethod
    def decode(self, token: int) -> torch.Tensor:
        """Append one token (position < block_size); logits after it."""

    def launch(self, token: torch.Tensor) -> bool:
        """Start decoding a token the sampler chose on the device, before the host has read it.

        token is a 0-d id tensor whose value may still be in flight on a GPU. A backend that can
        queue the decode step behind it returns True, and its next decode() must be called with
        that token's value: it then returns the logits already computed. The GPU works on the
        next step while the host reads, streams and checks the token. Others return False.
        """
        return False

    def reset(self) -> None:
        """Forget the sequence (prefill also does this)."""
        self.position = 0

    def logits_all(self, ids: list[int]) -> torch.Tensor:
        """Logits after every token of ids, (len(ids), V): what a loss needs. Leaves ids in the cache.

        This fallback feeds one token at a time; backends override it with one forward pass.
        """
        rows = [self.prefill(ids[:1])] + [self.decode(token) for token in ids[1:]]
        return torch.stack(rows)

    @classmethod
    def load(cls, folder: Path, name: str, options: LoadOptions) -> Backend:
        """The model in `folder`, ready to run; GptuiError (one line) when it cannot be. Registered
        backends implement it (tests' scripted backends are built directly)."""
        raise NotImplementedError(f"{cls.__name__} is not loaded from a folder")

    @classmethod
    def status(cls, folder: Path) -> Status:
        """Ready, builds on first use, or unavailable here and why."""
        return READY

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of weights this backend holds (its size on disk where it has a file)."""
