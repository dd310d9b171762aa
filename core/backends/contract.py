"""What a caller hands a backend's loader and what a backend says about itself; torch-free, so the
CLI and the app's picker can use them before any backend module is imported."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoadOptions:
    """Every option any loader reads; each backend takes the ones that apply to it and ignores
    none silently by name: a field no backend reads does not exist."""

    threads: int | None = None  # CPU threads (torch, ONNX Runtime); None: base.cpu_threads()
    progress: Callable[[float, str], None] | None = None  # hears about an ONNX build: (fraction, message)
    onnx_path: Path | None = None  # this exact ONNX file instead of the folder's or the cache's
    spin: bool = True  # ONNX Runtime workers busy-wait between kernels
    cuda_mode: str = "graph"  # cuda: graph, graph-torch, eager, compile, autotune


class State(enum.Enum):
    READY = "ready"
    BUILDS = "builds on first use"  # an ONNX artifact is exported the first time it is chosen
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Status:
    """Whether a backend can run a model here; shown as its text."""

    state: State
    why: str = ""  # UNAVAILABLE: what is missing, in one line

    @property
    def usable(self) -> bool:
        return self.state is not State.UNAVAILABLE

    def __str__(self) -> str:
        return self.why if self.state is State.UNAVAILABLE else self.state.value


READY = Status(State.READY)
BUILDS = Status(State.BUILDS)


def unavailable(why: str) -> Status:
    return Status(State.UNAVAILABLE, why)
