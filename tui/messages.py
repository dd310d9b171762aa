"""Messages that worker threads post to the app (post_message is thread-safe)."""

from __future__ import annotations

from textual.message import Message

from ..core.generate import DoneEvent, TokenEvent
from .catalog import Engine


class Generated(Message):
    """Tokens (and at the end the DoneEvent) of request `request` of `kind` ("complete" or "chat").

    Workers batch the events of ~20 ms into one message: one message per token would spend the
    UI thread's time (and the GIL) on dispatch instead of on the model.
    """

    def __init__(self, kind: str, request: int, events: list[TokenEvent | DoneEvent]) -> None:
        super().__init__()
        self.kind = kind
        self.request = request
        self.events = events


class GenerationFailed(Message):
    def __init__(self, kind: str, request: int, error: str) -> None:
        super().__init__()
        self.kind = kind
        self.request = request
        self.error = error


class ModelLoaded(Message):
    """`requested`: the model as asked for (name or folder; None: the default), which the chat
    records; `remember_as`: the same when the user picked it, to be the default next time."""

    def __init__(self, engine: Engine, remember_as: str | None = None, requested: str | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.remember_as = remember_as
        self.requested = requested


class ModelFailed(Message):
    def __init__(self, model: str | None, backend: str, error: str) -> None:
        super().__init__()
        self.model = model
        self.backend = backend
        self.error = error


class BuildProgress(Message):
    """A backend artifact (e.g. an ONNX export) is being built; fraction is None when unknown."""

    def __init__(self, fraction: float | None, text: str) -> None:
        super().__init__()
        self.fraction = fraction
        self.text = text
