"""Compare backends side by side: the same prompt and seed through each, one after another.

Backends run one at a time, so each gets the whole CPU and its timings are its own. torch-fp32
runs first as the reference; every other backend shows the first token index where its output
departs from it (INT8 rounding shows up here long before it shows up in a loss).
"""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Label, SelectionList, Static
from textual.worker import get_current_worker

from ...core.errors import GptuiError
from ...core.generate import DoneEvent
from ...core.sampling import SamplingParams
from ...core.tokenizer import encode
from ..catalog import Catalog
from ..runner import batched
from ..widgets.status import Readout

REFERENCE = "torch-fp32"
# Fixed widths: cells change many times a second while a backend runs.
COLUMNS = {"Backend": 12, "Status": 24, "TTFT": 8, "Tokens/s": 9, "Tokens": 6, "Diverges at": 11, "Output": 32}


def first_divergence(reference: list[int], ids: list[int]) -> int | None:
    """Index of the first token that differs (or where one output ends first); None if identical."""
    for i, (a, b) in enumerate(zip(reference, ids)):
        if a != b:
            return i
    return None if len(reference) == len(ids) else min(len(reference), len(ids))


def preview(text: str, width: int = COLUMNS["Output"]) -> str:
    flat = text.replace("\n", "⏎")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class RowUpdate(Message):
    def __init__(self, backend: str, **cells: str) -> None:
        super().__init__()
        self.backend = backend
        self.cells = cells


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape", "close", "Back", id="compare.close"),
        Binding("ctrl+r", "run", "Run", id="compare.run"),
    ]

    def __init__(self, catalog: Catalog, model: str, prompt: str, params: SamplingParams, title: str = "") -> None:
        super().__init__()
        self.catalog = catalog
        self.model = model  # what catalog.load takes: a name or a folder
        self.title = title or model
        self.prompt = prompt
        self.params = params
        self.pieces: dict[str, list[str]] = {}  # backend -> text of each generated token
        self.divergence: dict[str, int | None] = {}
        self.errors: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        with Vertical(id="compare-body"):
            yield Label("Compare backends: same prompt, same seed, one backend at a time", classes="dialog-title")
            yield Static(self._describe(), id="compare-info")
            with Horizontal(id="compare-controls"):
                yield SelectionList[str](id="compare-backends")
                yield Button("Run (ctrl+r)", variant="primary", id="compare-run")
            yield DataTable(id="compare-table", cursor_type="row")
            with VerticalScroll(id="compare-output"):
                yield Static("Outputs appear here; text after a backend's first divergence is red.",
                             id="compare-texts")
        yield Footer()

    def _describe(self) -> Text:
        p = self.params
        prompt = self.prompt if len(self.prompt) < 60 else "…" + self.prompt[-59:]
        return Text(f"model {self.title} · seed {p.seed} · temperature {p.temperature} · top-k {p.top_k} · "
                    f"top-p {p.top_p} · {p.max_tokens} new tokens\nprompt (the editor up to the cursor): "
                    f"{prompt!r}")

    def on_mount(self) -> None:
        names = self.catalog.backends()
        backends = self.query_one(SelectionList)
        backends.add_options([(name, name, True) for name in names])
        table = self.query_one(DataTable)
        for column, width in COLUMNS.items():
            table.add_column(column, key=column, width=width)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_run()

    def action_run(self) -> None:
        chosen = list(self.query_one(SelectionList).selected)
        order = [REFERENCE] + [b for b in chosen if b != REFERENCE]
        table = self.query_one(DataTable)
        table.clear()
        self.pieces.clear()
        self.divergence.clear()
        self.errors.clear()
        for name in order:
            table.add_row(name, "waiting", "", "", "", "reference" if name == REFERENCE else "", "", key=name)
        self.run_all(order)

    @work(thread=True, exclusive=True, group="compare")
    def run_all(self, order: list[str]) -> None:
        worker = get_current_worker()
        reference: list[int] | None = None
        for name in order:
            if worker.is_cancelled:
                return
            ids = self._run_one(name, worker)
            if name == REFERENCE:
                reference = ids
            elif ids is not None and reference is not None:
                at = first_divergence(reference, ids)
                self.divergence[name] = at
                self.post_message(RowUpdate(name, **{"Diverges at": "identical" if at is None else f"token {at}"}))

    def _run_one(self, name: str, worker) -> list[int] | None:
        def progress(fraction: float | None, text: str) -> None:
            done = f" {fraction:.0%}" if fraction is not None else ""
            self.post_message(RowUpdate(name, Status=f"{text}{done}"))

        self.post_message(RowUpdate(name, Status="loading"))
        try:
            engine = self.catalog.load(self.model, name, progress)
            prompt = encode(engine.encoding, self.prompt)
            ids, pieces, text, readout = [], [], "", Readout()
            self.post_message(RowUpdate(name, Status="running"))
            # Live numbers ten times a second, without flooding the UI.
            for batch in batched(engine, prompt, self.params, lambda: worker.is_cancelled, interval=0.1):
                for event in batch:
                    if isinstance(event, DoneEvent):
                        text += event.text
                        self.pieces[name] = pieces + ([event.text] if event.text else [])
                        readout.done(event)
                        self.post_message(RowUpdate(name, Status=f"done ({event.reason})",
                                                    **self._cells(readout, text)))
                        return ids
                    ids.append(event.token_id)
                    pieces.append(event.text)
                    text += event.text
                    readout.token(event)
                self.post_message(RowUpdate(name, **self._cells(readout, text)))
        except GptuiError as e:
            self._failed(name, str(e))
        except Exception as e:  # one backend failing must not stop the others or the app
            self._failed(name, f"{type(e).__name__}: {e}")
        return None

    def _failed(self, name: str, error: str) -> None:
        self.errors[name] = error  # in full below the table; the table cell gets the start of it
        self.post_message(RowUpdate(name, Status=preview(f"error: {error}", COLUMNS["Status"])))

    @staticmethod
    def _cells(readout: Readout, text: str) -> dict[str, str]:
        return {
            "TTFT": f"{readout.ttft * 1000:.0f} ms" if readout.ttft is not None else "",
            "Tokens/s": f"{readout.rate:.1f}" if readout.rate is not None else "",
            "Tokens": str(readout.tokens),
            "Output": preview(text),
        }

    def on_row_update(self, message: RowUpdate) -> None:
        if "Status" in message.cells or "Diverges at" in message.cells:
            self.show_outputs()
        table = self.query_one(DataTable)
        if message.backend not in table.rows:
            return
        for column, value in message.cells.items():
            table.update_cell(message.backend, column, value)

    def show_outputs(self) -> None:
        out = Text()
        for name, pieces in self.pieces.items():
            at = self.divergence.get(name)
            label = "reference" if name == REFERENCE else "identical" if at is None else f"diverges at token {at}"
            out.append(f"{name} · {label}\n", style="bold")
            for i, piece in enumerate(pieces):
                out.append(piece, style="red" if at is not None and i >= at else "")
            out.append("\n\n")
        for name, error in self.errors.items():
            out.append(f"{name} · failed\n", style="bold")
            out.append(error + "\n\n", style="red")
        self.query_one("#compare-texts", Static).update(out)

    def action_close(self) -> None:
        self.workers.cancel_group(self, "compare")
        self.app.pop_screen()
