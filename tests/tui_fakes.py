"""A fake catalog for app tests: backends that yield scripted tokens with small delays.

The fake goes through the real sampling loop (core.generate): its logits put almost all the
probability on the next scripted token, so greedy and seeded sampling both follow the script.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from pathlib import Path

import torch

from gptui.core.backends.base import Backend
from gptui.core.errors import GptuiError
from gptui.core.registry import ModelInfo
from gptui.core.tokenizer import encode, get_encoding
from gptui.tui.catalog import Catalog, Engine

ENCODING = "gpt2-code"


class ScriptedBackend(Backend):
    """Each prefill starts the next script (the last one repeats); decode steps through it."""

    def __init__(self, scripts: list[str], name: str = "torch-fp32", delay: float = 0.005, block_size: int = 256):
        self.encoding = get_encoding(ENCODING)
        self.scripts = [encode(self.encoding, s) for s in scripts]
        self.name = name
        self.delay = delay  # seconds per decode step
        self.block_size = block_size
        self.position = 0
        self.current: list[int] = []
        self.step = 0
        self.prefills = 0
        self.decodes = 0
        self.prompts: list[list[int]] = []  # what each prefill was given

    def _logits(self) -> torch.Tensor:
        logits = torch.full((self.encoding.n_vocab,), -20.0)
        token = self.current[self.step] if self.step < len(self.current) else self.encoding.eot_token
        logits[token] = 20.0
        logits[(token + 1) % self.encoding.n_vocab] = 17.0  # a runner-up, so alternatives show something
        return logits

    def prefill(self, ids: list[int]) -> torch.Tensor:
        self.prompts.append(list(ids))
        self.current = self.scripts[min(self.prefills, len(self.scripts) - 1)]
        self.prefills += 1
        self.step = 0
        self.position = len(ids)
        return self._logits()

    def decode(self, token: int) -> torch.Tensor:
        time.sleep(self.delay)
        self.step += 1
        self.decodes += 1
        self.position += 1
        return self._logits()

    @property
    def nbytes(self) -> int:
        return 1234


class FakeCatalog(Catalog):
    """Models named by `scripts`' keys; backends "torch-fp32" (the app's default and the compare
    reference), "fake-int8" and "broken", which fails to load.

    `scripts[model]` is what that model writes (`backend_scripts[backend]` overrides it, to make
    a backend diverge); `load_delay` makes loading slow enough to switch mid-generation, and a
    slow fake-int8 load reports build progress; `loads` records every (model, backend) loaded.
    The models named in `fim` get a config.json under `root` whose provenance says FIM-trained.
    """

    BACKENDS = ("torch-fp32", "fake-int8", "broken")

    def __init__(self, scripts: dict[str, list[str]], delay: float = 0.005, load_delay: float = 0.0,
                 root: Path = Path("/nonexistent/models"), backend_scripts: dict[str, list[str]] | None = None,
                 fim: tuple[str, ...] = ()):
        self.scripts = scripts
        self.backend_scripts = backend_scripts or {}  # backend -> scripts, overriding the model's
        self.delay = delay
        self.load_delay = load_delay
        self.root = root
        self.loads: list[tuple[str, str]] = []
        self.backends_made: list[ScriptedBackend] = []
        self.lock = threading.Lock()
        for name in fim:
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / "config.json").write_text(json.dumps(
                {"format_version": 1, "encoding": ENCODING, "model": {},
                 "provenance": {"training": {"task": "pretrain", "fim_rate": 0.5}}}))

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(name, self.root / name, "user", params=123_456, bytes=5 * 2**20, encoding=ENCODING)
                for name in sorted(self.scripts)]

    def describe(self, folder: Path) -> ModelInfo:
        return ModelInfo(folder.name, folder, "path", params=123_456, bytes=5 * 2**20, encoding=ENCODING)

    def default_model(self) -> str:
        return sorted(self.scripts)[0]

    def backends(self) -> list[str]:
        return list(self.BACKENDS)

    def backend_status(self, model: ModelInfo, backend: str) -> str:
        return {"fake-int8": "builds on first use", "broken": "not installed (fakelib)"}.get(backend, "ready")

    def load(self, model, backend, progress=None) -> Engine:
        model = Path(model).name if model else self.default_model()  # the compare screen passes folders
        if self.load_delay:
            if progress is not None and backend == "fake-int8":
                for i in range(4):
                    progress(i / 4, "building fake-int8")
                    time.sleep(self.load_delay / 4)
            else:
                time.sleep(self.load_delay)
        if backend == "broken":
            raise GptuiError("backend broken is not installed (No module named 'fakelib')")
        if backend not in self.BACKENDS:
            raise GptuiError(f"unknown backend {backend!r}")
        if model not in self.scripts:
            raise GptuiError(f"unknown model {model!r}")
        fake = ScriptedBackend(self.backend_scripts.get(backend, self.scripts[model]), name=backend, delay=self.delay)
        with self.lock:
            self.loads.append((model, backend))
            self.backends_made.append(fake)
        return Engine(model, self.root / model, fake, fake.encoding, 123_456)


# ---- helpers for Pilot tests ----


def sync(test):
    """Run an async test with asyncio.run, so no async pytest plugin is needed."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run

SIZE = (120, 36)  # the terminal size every app test and snapshot uses


def make_app(tmp_path: Path, catalog: FakeCatalog | None, path=None, config: str | None = None, model=None,
             backend=None):
    """The app as the CLI builds it, with a config file under tmp_path and the fake catalog
    (None: the real one)."""
    from gptui.tui.app import create_app

    config_path = tmp_path / "config" / "config.toml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    if config is not None:
        config_path.write_text(config)
    return create_app(path, model, backend, catalog=catalog, config_path=config_path)


async def wait_for(pilot, condition, timeout: float = 10.0, what: str = "condition") -> None:
    """Let the app run until condition() holds; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def ready(pilot) -> None:
    await wait_for(pilot, lambda: pilot.app.engine is not None, what="the model to load")
