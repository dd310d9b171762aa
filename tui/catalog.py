"""What the app can run: models from the registry, backends from core.backends, and loading them.

The app talks to one Catalog, given to `create_app`; tests give it a fake whose backends yield
queued tokens. Everything here may be slow (imports, reading weights, ONNX exports), so the app
only calls it from worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tiktoken

from ..core import backends as backend_registry
from ..core.backends.base import Backend
from ..core.backends.contract import LoadOptions
from ..core.checkpoint import Checkpoint
from ..core.errors import GptuiError
from ..core.registry import ModelInfo, default_model_name, list_models, resolve
from ..core.registry import inspect as inspect_model
from ..core.tokenizer import get_encoding

# progress(fraction done in [0, 1], what is happening), as core.onnx_export reports a build.
Progress = Callable[[float, str], None]


@dataclass
class Engine:
    """A model loaded on one backend. One generation at a time: workers hold `lock` while they run."""

    model: str  # name shown to people (registry name or folder name)
    folder: Path
    backend: Backend
    encoding: tiktoken.Encoding
    params: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def block_size(self) -> int:
        return self.backend.block_size


class Catalog:
    """The real models and backends."""

    def models(self) -> list[ModelInfo]:
        return list_models()

    def describe(self, folder: Path) -> ModelInfo:
        """A model given as a folder rather than found in the registry's folders."""
        return inspect_model(folder, "path")

    def default_model(self) -> str:
        return default_model_name()

    def backends(self) -> list[str]:
        """Read at call time: other backends register themselves in core.backends.BACKENDS."""
        return backend_registry.available_backends()

    def backend_status(self, model: ModelInfo, backend: str) -> str:
        """'ready', 'builds on first use', or why the backend cannot run here (Backend.status)."""
        if not model.ok:
            return "model broken"
        try:
            return str(backend_registry.backend_class(backend).status(model.path))
        except GptuiError as e:
            return str(e)
        except Exception as e:  # one backend's probe failing must not take the picker down
            return f"unavailable ({type(e).__name__}: {e})"

    def load(self, model: str | None, backend: str, progress: Progress | None = None) -> Engine:
        folder = resolve(model)
        ckpt = Checkpoint.open(folder)
        config, encoding_name = ckpt.config, ckpt.encoding
        loaded = backend_registry.load_backend(backend, folder, LoadOptions(progress=progress))
        return Engine(folder.name, folder, loaded, get_encoding(encoding_name), config.num_params())
