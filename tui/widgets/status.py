"""The live readout: model, backend, time to first token and tokens/s while tokens stream."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Label, ProgressBar

from ...core.generate import DoneEvent, TokenEvent
from ..completion import REASONS


@dataclass
class Readout:
    """Numbers for one generation, updated per token and settled by the DoneEvent."""

    kind: str = ""  # "completion", "chat" or "" before the first
    prompt_tokens: int = 0
    window: int = 0
    tokens: int = 0
    ttft: float | None = None  # seconds
    rate: float | None = None  # tokens/s after the first token
    first_elapsed: float = 0.0
    state: str = ""  # "streaming" or "stopped: <why>"

    def token(self, event: TokenEvent) -> None:
        self.tokens = event.index + 1
        self.state = "streaming"
        if event.index == 0:
            self.ttft = self.first_elapsed = event.elapsed
        elif event.elapsed > self.first_elapsed:
            self.rate = event.index / (event.elapsed - self.first_elapsed)

    def done(self, done: DoneEvent) -> None:
        self.tokens = done.tokens
        self.prompt_tokens = done.prompt_tokens
        if done.tokens:
            self.ttft = done.time_to_first_token
        if done.tokens > 1:
            self.rate = done.decode_tokens_per_s
        self.state = f"stopped: {REASONS.get(done.reason, done.reason)}"


class SpeedBar(Widget):
    """Two lines: what runs (model, backend, sampling) and how fast the latest generation went.

    Repainted several times a second while tokens stream, so it renders itself rather than
    being a Static, whose update() would lay out the whole screen each time.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.engine_line = Text("no model loaded")
        self.readout = Readout()

    def set_engine(self, text: Text | str) -> None:
        self.engine_line = Text(text) if isinstance(text, str) else text
        self.refresh()

    def show(self) -> None:
        self.refresh()

    def render(self) -> Text:
        r = self.readout
        line = Text()
        if not r.kind:
            line.append("type in the editor to get a completion · F1 shows every key", style="dim")
        else:
            line.append(f"{r.kind}: ", style="bold")
            line.append(f"TTFT {r.ttft * 1000:.0f} ms" if r.ttft is not None else "TTFT -")
            line.append(" · ")
            line.append(f"{r.rate:.1f} tok/s" if r.rate is not None else "- tok/s", style="bold green")
            line.append(f" · {r.tokens} tokens · context {min(r.window, r.prompt_tokens + r.tokens)}/{r.window}")
            line.append(f" · {r.state}", style="italic")
        return Text("\n").join([self.engine_line, line])


class BuildBar(Horizontal):
    """Shown while a backend artifact builds in the background."""

    def compose(self):
        yield Label("", id="build-label")
        yield ProgressBar(total=None, show_eta=False, id="build-progress")

    def report(self, fraction: float | None, text: str) -> None:
        self.query_one("#build-label", Label).update(text)
        bar = self.query_one(ProgressBar)
        if fraction is None:
            bar.update(total=None)
        else:
            bar.update(total=100, progress=fraction * 100)
