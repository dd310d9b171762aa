"""Backend registry: names users type, mapped to loaders imported only when chosen."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GptuiError
from .contract import LoadOptions

if TYPE_CHECKING:  # the names stay importable without torch (the CLI's option choices, completion)
    from .base import Backend

DEFAULT_BACKEND = "torch-fp32"  # what runs when nothing names a backend: every machine has it

# name -> (module, class); modules import lazily so onnxruntime or CUDA are only needed when used.
BACKENDS: dict[str, tuple[str, str]] = {
    "torch-fp32": ("torch_backend", "TorchBackend"),
    "torch-int8": ("torch_int8", "TorchInt8Backend"),
    "onnx-fp32": ("onnx_backend", "OnnxFp32Backend"),
    "onnx-int8": ("onnx_backend", "OnnxInt8Backend"),
    "cuda": ("cuda_backend", "CudaBackend"),
    "auto": ("auto", "AutoBackend"),  # cuda on a GPU, torch-fp32 otherwise
}


def available_backends() -> list[str]:
    return list(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    """The class behind a backend name, its module imported now (onnxruntime, CUDA...)."""
    if name not in BACKENDS:
        raise GptuiError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as e:
        raise GptuiError(f"backend {name} is not installed ({e.name or e})") from None
    return getattr(module, class_name)


def load_backend(name: str, folder: str | Path, options: LoadOptions | None = None) -> Backend:
    """Load the model in `folder` on backend `name`; each loader reads the options that apply to it."""
    return backend_class(name).load(Path(folder), name, options or LoadOptions())
