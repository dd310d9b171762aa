"""What the app can run: models from the registry, backends from core.backends, and loading them.

The app talks to one Catalog, given to `create_app`; tests give it a fake whose backends yield
queued tokens. Everything here may be slow (imports, reading weights, ONNX exports), so the app
only calls it from worker threads.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tiktoken

from ..core import backends as backend_registry
from ..core.backends.base import Backend
from ..core.checkpoint import read_config
from ..core.errors import GptuiError
from ..core.registry import ModelInfo, default_model_name, list_models, resolve
from ..core.registry import inspect as inspect_model
from ..core.tokenizer import get_encoding

# progress(fraction or None, what is happening); fraction in [0, 1] when known.
Progress = Callable[[float | None, str], None]


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
        """'ready', or a short reason it is not (not installed, needs a GPU, builds on first use)."""
        if not model.ok:
            return "model broken"
        try:
            cls = _backend_class(backend)
        except GptuiError as e:
            return str(e)
        for hook in ("status", "availability", "is_ready"):
            check = getattr(cls, hook, None)
            if callable(check):
                try:
                    result = check(model.path)
                except GptuiError as e:
                    return str(e)
                except Exception as e:  # a backend's own probe failing must not take the picker down
                    return f"unavailable ({e})"
                if isinstance(result, bool):
                    return "ready" if result else "builds on first use"
                return str(result)
        return "ready"

    def load(self, model: str | None, backend: str, progress: Progress | None = None) -> Engine:
        folder = resolve(model)
        config, encoding_name, _ = read_config(folder)
        options = {}
        if progress is not None and _accepts(_backend_class(backend).load, "progress"):
            options["progress"] = _adapt_progress(progress)
        loaded = backend_registry.load_backend(backend, folder, **options)
        return Engine(folder.name, folder, loaded, get_encoding(encoding_name), config.num_params())


def _backend_class(name: str) -> type:
    if name not in backend_registry.BACKENDS:
        raise GptuiError(f"unknown backend {name!r}")
    module_name, class_name = backend_registry.BACKENDS[name]
    try:
        module = importlib.import_module(f"{backend_registry.__name__}.{module_name}")
    except ImportError as e:
        raise GptuiError(f"not installed ({e.name or e})") from None
    return getattr(module, class_name)


def _accepts(fn: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _adapt_progress(progress: Progress) -> Callable:
    """Backends report progress as (fraction), (done, total), (message) or (fraction, message)."""

    def report(*args, **kwargs):
        values = list(args) + list(kwargs.values())
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        texts = [v for v in values if isinstance(v, str)]
        fraction = None
        if len(numbers) >= 2 and numbers[1]:
            fraction = numbers[0] / numbers[1]
        elif numbers:
            fraction = float(numbers[0])
        if fraction is not None:
            fraction = min(1.0, max(0.0, fraction))
        progress(fraction, " ".join(texts) or "building")

    return report
