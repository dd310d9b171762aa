"""A streamed completion shown after the cursor, and how much of it the user already took.

Pure state, no widgets: the editor draws it, the app feeds it tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..core.generate import DoneEvent, TokenEvent

_WORD = re.compile(r"\s*(\w+|[^\w\s]+)")


@dataclass
class Ghost:
    request: int  # the completion request this belongs to; stale tokens are ignored
    text: str = ""  # everything generated so far (after any stop cut)
    consumed: int = 0  # leading characters of `text` already in the buffer (typed or accepted)
    tokens: list[tuple[int, TokenEvent]] = field(default_factory=list)  # (start in text, event)
    done: DoneEvent | None = None

    def add(self, event: TokenEvent) -> None:
        self.tokens.append((len(self.text), event))
        self.text += event.text

    def finish(self, done: DoneEvent) -> None:
        self.text += done.text
        if done.retract:
            self.text = self.text[: len(self.text) - done.retract]
            self.consumed = min(self.consumed, len(self.text))
        self.done = done

    @property
    def pending(self) -> str:
        """What the model wrote that is not in the buffer yet."""
        return self.text[self.consumed :]

    @property
    def visible(self) -> str:
        """What is drawn and what accepting inserts: pending text without trailing whitespace.

        Trailing whitespace stays pending, so a newline the stop rule may still cut is never
        inserted, and accepting mid-stream keeps the rest of the stream lined up.
        """
        return self.pending.rstrip()

    @property
    def finished(self) -> bool:
        """Generation ended and nothing is left to show."""
        return self.done is not None and not self.visible

    def take(self, typed: str) -> bool:
        """The user inserted `typed` at the cursor: keep the ghost if it matches what comes next."""
        if typed and self.pending.startswith(typed):
            self.consumed += len(typed)
            return True
        return False

    def next_word(self) -> str:
        """Visible text up to the end of the next word (or run of punctuation), with its leading space."""
        match = _WORD.match(self.visible)
        return match.group(0) if match else self.visible

    def spans(self) -> list[tuple[str, TokenEvent | None]]:
        """The visible text cut at token boundaries, each piece with the token that produced it."""
        start, end = self.consumed, self.consumed + len(self.visible)
        pieces = []
        bounds = [(s, s + len(e.text), e) for s, e in self.tokens]
        covered = start
        for s, e, event in bounds:
            lo, hi = max(s, start), min(e, end)
            if lo < hi:
                pieces.append((self.text[lo:hi], event))
                covered = hi
        if covered < end:  # text released at the end (done.text) belongs to no single token
            pieces.append((self.text[covered:end], None))
        return pieces
