"""Look inside a generation: tokens coloured by the probability the model gave them, and the
most likely alternatives for the token under the inspector's cursor."""

from __future__ import annotations

import math

import tiktoken
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.reactive import reactive
from textual.widget import Widget

from ...core.generate import TokenEvent

# (lowest probability, colour): the first row a token reaches gives its colour.
_SHADES = ((0.9, "green3"), (0.6, "chartreuse3"), (0.3, "yellow3"), (0.1, "dark_orange"), (0.0, "red3"))


def probability_style(p: float) -> Style:
    for floor, colour in _SHADES:
        if p >= floor:
            return Style(color=colour)
    return Style(color=_SHADES[-1][1])


def percent(p: float) -> str:
    """Probabilities span many orders of magnitude: tiny ones in scientific notation."""
    return f"{p:.1%}" if p >= 0.001 else f"{p:.0e}"


def token_label(encoding: tiktoken.Encoding | None, token: int) -> str:
    if encoding is None:
        return str(token)
    try:
        text = encoding.decode([token])
    except (KeyError, ValueError):
        return f"<{token}>"
    return repr(text)


class Inspector(Widget, can_focus=True):
    """Shows one generation's tokens; left/right, a click, or the editor's cursor on completed
    text picks the token to explain."""

    BINDINGS = [
        Binding("left", "move(-1)", "Previous token", id="inspect.previous", show=False),
        Binding("right", "move(1)", "Next token", id="inspect.next", show=False),
        Binding("home", "move(-1000000)", "First token", id="inspect.first", show=False),
        Binding("end", "move(1000000)", "Last token", id="inspect.last", show=False),
    ]

    cursor: reactive[int] = reactive(-1)
    """Index of the token whose alternatives are shown; -1 follows the newest token."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tokens: list[TokenEvent] = []
        self.encoding: tiktoken.Encoding | None = None
        self.title = ""
        self.request = 0  # the generation shown

    def start(self, title: str, request: int, encoding: tiktoken.Encoding) -> None:
        self.title, self.request, self.encoding, self.tokens = title, request, encoding, []
        self.cursor = -1
        self.refresh(layout=True)

    def add(self, event: TokenEvent) -> None:
        self.tokens.append(event)
        self.refresh(layout=True)

    @property
    def selected(self) -> int:
        return len(self.tokens) - 1 if self.cursor < 0 else min(self.cursor, len(self.tokens) - 1)

    def action_move(self, step: int) -> None:
        if self.tokens:
            self.cursor = max(0, min(len(self.tokens) - 1, self.selected + step))

    def on_click(self, event: Click) -> None:
        index = event.style.meta.get("token")
        if index is not None:
            self.cursor = index

    def render(self) -> Text:
        if not self.tokens:
            return Text("Look inside: tokens of the next completion or answer appear here, coloured by "
                        "probability.", style="italic")
        out = Text()
        out.append(f"{self.title} · {len(self.tokens)} tokens · ←/→ or click a token\n", style="bold")
        selected = self.selected
        for i, event in enumerate(self.tokens):
            # The token index rides in the style's meta, so a click can tell which token it hit.
            style = probability_style(math.exp(event.logprob)) + Style(meta={"token": i})
            if i == selected:
                style += Style(reverse=True)
            shown = event.text.replace("\n", "↵\n") if event.text else "·"  # "·": bytes held for later
            out.append(shown, style=style)
        out.append("\n\n")
        out.append_text(self._explain(self.tokens[selected], selected))
        return out

    def _explain(self, event: TokenEvent, index: int) -> Text:
        p = math.exp(event.logprob)
        line = Text()
        line.append(f"token {index + 1}: {token_label(self.encoding, event.token_id)} ", style="bold")
        line.append(f"p={percent(p)}", style=probability_style(p))
        if event.top:
            line.append("   alternatives: ")
            for n, (token, logprob) in enumerate(event.top):
                q = math.exp(logprob)
                mark = "✓" if token == event.token_id else ""
                line.append(f"{mark}{token_label(self.encoding, token)} {percent(q)}", style=probability_style(q))
                if n < len(event.top) - 1:
                    line.append("  ")
        return line
