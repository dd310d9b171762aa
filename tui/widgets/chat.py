"""The chat pane: instructions in, streamed code answers out, with a context meter."""

from __future__ import annotations

import itertools

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.message import Message
from textual.widgets import Button, Input, Markdown, Static

from ..chat import ChatPrompt, as_markdown


class Answer(Vertical):
    """One exchange: the instruction, the streamed answer as Markdown, and what to do with it."""

    def __init__(self, instruction: str, index: int, text: str = "", stats: str = "") -> None:
        super().__init__(classes="exchange")
        self.instruction = instruction
        self.index = index
        self.text = text
        self.stats = stats
        self._shown = None  # the Markdown source last rendered
        self._rendering = None  # that render, while it runs

    def compose(self) -> ComposeResult:
        yield Static(self.instruction, classes="question", markup=False)
        yield Markdown("", classes="answer")
        with Horizontal(classes="answer-bar"):
            yield Button("Copy", id=f"copy-{self.index}", classes="copy", compact=True)
            yield Button("Insert", id=f"insert-{self.index}", classes="insert", compact=True)
        yield Static(self.stats, classes="answer-stats", markup=False)

    def add(self, text: str) -> None:
        self.text += text

    def show(self) -> bool:
        """Render the answer so far, unless a render is still running; True once up to date.

        Called on a timer while streaming, not per token. Markdown.update picks the blocks it
        replaces when called, so overlapping updates would leave stale blocks behind.
        """
        source = as_markdown(self.text)
        if source == self._shown:
            return self._rendering is None or self._rendering.is_done
        if self._rendering is not None and not self._rendering.is_done:
            return False
        try:
            markdown = self.query_one(Markdown)
        except NoMatches:  # a restored answer not mounted yet
            return False
        self._shown = source
        self._rendering = markdown.update(source)
        return False

    def set_stats(self, stats: str) -> None:
        self.stats = stats
        self.query_one(".answer-stats", Static).update(stats)


class ChatPane(Vertical):
    BINDINGS = [
        Binding("ctrl+y", "copy_answer", "Copy answer", id="chat.copy"),
        Binding("ctrl+r", "insert_answer", "Insert code", id="chat.insert"),
        Binding("escape", "stop", "Stop answer", id="chat.stop"),
    ]

    class Ask(Message):
        def __init__(self, instruction: str) -> None:
            super().__init__()
            self.instruction = instruction

    class Stop(Message):
        pass

    class Use(Message):
        """Copy or insert an answer (action is "copy" or "insert")."""

        def __init__(self, action: str, text: str) -> None:
            super().__init__()
            self.action = action
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._numbers = itertools.count()  # answer indices, never reused: buttons find their answer by them

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="chat-log")
        yield Static("context: -", id="chat-meter")
        yield Input(placeholder="Ask for code (Enter); an editor selection goes along", id="chat-input")

    @property
    def answers(self) -> list[Answer]:
        return list(self.query(Answer))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if text:
            event.input.clear()
            self.post_message(self.Ask(text))

    def new_answer(self, instruction: str, text: str = "", stats: str = "") -> Answer:
        answer = Answer(instruction, next(self._numbers), text, stats)
        log = self.query_one("#chat-log", VerticalScroll)
        log.mount(answer)
        log.anchor()
        return answer

    def clear(self) -> None:
        """Empty the log for another chat."""
        self.query_one("#chat-log", VerticalScroll).remove_children()
        self.query_one("#chat-meter", Static).update("context: -")

    def show_meter(self, prompt: ChatPrompt, generated: int = 0) -> None:
        used = min(prompt.window, prompt.used + generated)
        text = f"context: {used}/{prompt.window} tokens"
        if prompt.dropped_turns:
            turns = "turn" if prompt.dropped_turns == 1 else "turns"
            text += f" · {prompt.dropped_turns} earlier {turns} dropped ({prompt.dropped_tokens} tokens)"
        self.query_one("#chat-meter", Static).update(text)

    def _last(self) -> Answer | None:
        answers = [a for a in self.answers if a.text]
        return answers[-1] if answers else None

    def action_copy_answer(self) -> None:
        if answer := self._last():
            self.post_message(self.Use("copy", answer.text))

    def action_insert_answer(self) -> None:
        if answer := self._last():
            self.post_message(self.Use("insert", answer.text))

    def action_stop(self) -> None:
        self.post_message(self.Stop())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        for answer in self.answers:
            if event.button.id in (f"copy-{answer.index}", f"insert-{answer.index}"):
                self.post_message(self.Use("copy" if "copy" in event.button.classes else "insert", answer.text))
