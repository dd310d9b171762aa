"""auto: the fastest backend this machine can run, chosen when the model loads."""

from __future__ import annotations

import torch

from .contract import READY, LoadOptions, Status


def resolve_auto() -> str:
    """cuda on an NVIDIA GPU; otherwise torch-fp32, which needs no build step and no extra package."""
    return "cuda" if torch.cuda.is_available() else "torch-fp32"


class AutoBackend:
    """Not a backend of its own: load() returns the backend resolve_auto() names."""

    @classmethod
    def load(cls, folder, name: str = "auto", options: LoadOptions = LoadOptions()):
        from . import load_backend

        return load_backend(resolve_auto(), folder, options)

    @classmethod
    def status(cls, folder) -> Status:
        return READY
