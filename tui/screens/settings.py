"""The settings modal: sampling and the completion pause; saved to config.toml by the app."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from ...core.errors import GptuiError
from ..settings import Settings

# (field, label, input type, help)
FIELDS = (
    ("temperature", "Temperature", "number", "0 is greedy"),
    ("top_k", "Top-k", "integer", "0 keeps every token"),
    ("top_p", "Top-p", "number", "in (0, 1]"),
    ("max_tokens", "Max tokens (completion)", "integer", "per completion"),
    ("chat_max_tokens", "Max tokens (chat)", "integer", "per answer"),
    ("seed", "Seed", "integer", "empty: a new random seed each time"),
    ("debounce_ms", "Pause before completing (ms)", "integer", "idle time after typing"),
)


class SettingsScreen(ModalScreen[Settings | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="settings.cancel"),
        Binding("ctrl+s", "save", "Save", id="settings.save"),
    ]

    def __init__(self, settings: Settings, path: Path) -> None:
        super().__init__()
        self.settings = settings
        self.path = path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="settings-dialog"):
            yield Label("Settings", classes="dialog-title")
            with Grid(id="settings-grid"):
                for name, label, kind, hint in FIELDS:
                    value = getattr(self.settings, name)
                    yield Label(label)
                    yield Input("" if value is None else str(value), type=kind, id=name, placeholder=hint,
                                compact=True)
            yield Label("", id="settings-error")
            yield Label(f"Saved to {self.path}; remap keys in its [keys] table (F1 lists binding ids).",
                        classes="dialog-hint", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def read(self) -> Settings:
        values = {}
        for name, label, kind, _ in FIELDS:
            raw = self.query_one(f"#{name}", Input).value.strip()
            if not raw:
                if name != "seed":
                    raise GptuiError(f"{label.lower()} needs a value")
                values[name] = None
                continue
            try:
                values[name] = float(raw) if kind == "number" else int(raw)
            except ValueError:
                raise GptuiError(f"{label.lower()}: {raw!r} is not a number") from None
        settings = dataclasses.replace(self.settings, **values)
        settings.validate()
        return settings

    def action_save(self) -> None:
        try:
            self.dismiss(self.read())
        except GptuiError as e:
            self.query_one("#settings-error", Label).update(Text(str(e), style="bold red"))

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_save() if event.button.id == "save" else self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_save()
