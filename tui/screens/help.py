"""Every key binding, where it works, and the id to remap it with in config.toml."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.dom import DOMNode
from textual.keys import format_key
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label


def binding_rows(areas: list[tuple[str, type[DOMNode]]], keymap: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(where, keys, what, id) for each binding of each class, after the keymap is applied."""
    rows = []
    for area, cls in areas:
        bindings = cls._merge_bindings()
        bindings.apply_keymap(keymap)
        by_action: dict[tuple[str, str], list[str]] = {}
        described: dict[tuple[str, str], Binding] = {}
        for key, key_bindings in bindings.key_to_bindings.items():
            for binding in key_bindings:
                ident = (binding.action, binding.id or "")
                by_action.setdefault(ident, []).append(format_key(key))
                described[ident] = binding
        for ident, keys in by_action.items():
            binding = described[ident]
            what = binding.description or binding.tooltip or binding.action.replace("_", " ")
            rows.append((area, ", ".join(keys), what, binding.id or ""))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "close", "Close", id="help.close")]

    def __init__(self, rows: list[tuple[str, str, str, str]], config_path: str) -> None:
        super().__init__()
        self.rows = rows
        self.config_path = config_path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="help-dialog"):
            yield Label("Keys", classes="dialog-title")
            yield DataTable(id="help-table", cursor_type="row", zebra_stripes=True)
            yield Label(f'Remap a key in {self.config_path}, e.g. [keys] "editor.accept" = "tab,ctrl+l". '
                        "Esc closes.", classes="dialog-hint", markup=False)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label, width in (("Where", 12), ("Keys", 26), ("Does", 32), ("Id", 24)):
            table.add_column(label, width=width)
        table.add_rows(self.rows)
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
