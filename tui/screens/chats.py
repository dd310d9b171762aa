"""The chat list: every named chat, the most recently changed first; the app does what is picked."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from ..chats import Chat


class ChatList(ModalScreen[tuple[str, int | None] | None]):
    """Returns (action, chat id): "switch", "rename", "delete" or "export" the highlighted chat,
    or ("new", None); None when closed."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="chats.close"),
        Binding("n", "act('new')", "New chat", id="chats.new"),
        Binding("r", "act('rename')", "Rename", id="chats.rename"),
        Binding("d,delete", "act('delete')", "Delete (asks first)", id="chats.delete"),
        Binding("e", "act('export')", "Export to Markdown", id="chats.export"),
    ]

    def __init__(self, chats: list[Chat], current: int | None, saved: bool) -> None:
        super().__init__()
        self.chats = chats
        self.current = current
        self.saved = saved  # kept in the database, or in memory for this session only

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="chats-dialog"):
            yield Label("Chats" if self.saved else "Chats (in memory: not saved)", classes="dialog-title")
            yield DataTable(id="chats-table", cursor_type="row")
            yield Label("Enter opens · n new · r rename · d delete · e export to Markdown · Esc closes",
                        classes="dialog-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label, width in (("Name", 40), ("Turns", 5), ("Model", 22), ("Changed", 16)):
            table.add_column(label, width=width)
        for chat in self.chats:
            name = ("● " if chat.id == self.current else "  ") + chat.name
            model = f"{chat.model or '-'} · {chat.backend or '-'}"
            changed = time.strftime("%Y-%m-%d %H:%M", time.localtime(chat.updated))
            table.add_row(name, str(chat.turns), model, changed, key=str(chat.id))
        current = next((i for i, c in enumerate(self.chats) if c.id == self.current), 0)
        table.move_cursor(row=current)
        table.focus()

    def _highlighted(self) -> int | None:
        table = self.query_one(DataTable)
        if not self.chats:
            return None
        return self.chats[min(table.cursor_row, len(self.chats) - 1)].id

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.dismiss(("switch", int(event.row_key.value)))

    def action_act(self, action: str) -> None:
        chat_id = self._highlighted()
        if action == "new" or chat_id is not None:
            self.dismiss((action, None if action == "new" else chat_id))

    def action_close(self) -> None:
        self.dismiss(None)
