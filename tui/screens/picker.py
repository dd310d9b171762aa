"""Pick a model and a backend: each model's size, and which backends can run it right now."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label
from textual.worker import get_current_worker

from ...core.registry import ModelInfo
from ..catalog import Catalog


def human_params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}K" if n else "?"


def human_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n else "?"


class ModelPicker(ModalScreen[tuple[str, str] | None]):
    """Returns (model name or folder, backend), or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="picker.cancel")]

    def __init__(self, catalog: Catalog, folder: Path | None, backend: str | None) -> None:
        super().__init__()
        self.catalog = catalog
        self.current_folder = folder
        self.current_backend = backend
        self.models: list[ModelInfo] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="picker-dialog"):
            yield Label("Model and backend", classes="dialog-title")
            with Horizontal(id="picker-tables"):
                yield DataTable(id="models", cursor_type="row")
                yield DataTable(id="backends", cursor_type="row")
            yield Label("Enter on a model, then on a backend, to switch · Esc cancels · "
                        "the editor and chat stay as they are", classes="dialog-hint")

    def on_mount(self) -> None:
        models = self.query_one("#models", DataTable)
        models.add_columns("Model", "Params", "Size", "Where", "Status")
        models.loading = True
        self.query_one("#backends", DataTable).add_columns("Backend", "Ready")
        self.list_models()

    @work(thread=True, exclusive=True, group="picker-models")
    def list_models(self) -> None:
        found = self.catalog.models()
        if self.current_folder is not None and all(m.path.resolve() != self.current_folder.resolve() for m in found):
            found.append(self.catalog.describe(self.current_folder))
        self.app.call_from_thread(self._show_models, found)

    def _show_models(self, found: list[ModelInfo]) -> None:
        self.models = found
        table = self.query_one("#models", DataTable)
        table.loading = False
        current = 0
        for i, m in enumerate(found):
            status = "ok" if m.ok else f"broken: {m.error}"
            table.add_row(m.name, human_params(m.params), human_bytes(m.bytes), m.where, status, key=str(i))
            if self.current_folder is not None and m.path.resolve() == self.current_folder.resolve():
                current = i
        if found:
            table.move_cursor(row=current)
            self.list_backends(found[current])
        else:
            table.add_row("no models found", "", "", "", "see `gptui-train init`")
        table.focus()

    @work(thread=True, exclusive=True, group="picker-backends")
    def list_backends(self, model: ModelInfo) -> None:
        worker = get_current_worker()
        rows = []
        for name in self.catalog.backends():
            if worker.is_cancelled:
                return
            rows.append((name, self.catalog.backend_status(model, name)))
        self.app.call_from_thread(self._show_backends, rows)

    def _show_backends(self, rows: list[tuple[str, str]]) -> None:
        table = self.query_one("#backends", DataTable)
        table.clear()
        current = 0
        for i, (name, status) in enumerate(rows):
            table.add_row(name, status, key=name)
            if name == self.current_backend:
                current = i
        table.move_cursor(row=current)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "models" and event.row_key.value is not None and self.models:
            index = int(event.row_key.value)
            if index < len(self.models):
                self.list_backends(self.models[index])

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        models = self.query_one("#models", DataTable)
        if event.data_table.id == "models":
            self.query_one("#backends", DataTable).focus()
        elif self.models and event.row_key.value is not None:
            model = self.models[models.cursor_row]
            chosen = model.name if model.where != "path" else str(model.path)
            self.dismiss((chosen, event.row_key.value))

    def action_cancel(self) -> None:
        self.dismiss(None)
