"""Screenshots of the main screens at a fixed terminal size (pytest-textual-snapshot).

Regenerate after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`
and look at the report before committing. Timings are pinned in run_before: they are the one
thing that changes from run to run.
"""

from __future__ import annotations

from textual.widgets import DataTable

from gptui.tui.screens.compare import CompareScreen
from gptui.tui.screens.help import HelpScreen
from gptui.tui.screens.picker import ModelPicker
from gptui.tui.screens.settings import SettingsScreen
from gptui.tui.widgets.chat import Answer
from gptui.tui.widgets.status import Readout
from tui_fakes import SIZE, FakeCatalog, make_app, ready, wait_for

CONFIG = "[editor]\ndebounce_ms = 20\n[sampling]\nseed = 7\n"
SOURCE = "import math\n\n\ndef area(r):\n    return math.pi * r * r\n\n\n"
COMPLETION = "\n    return 2 * math.pi * r\n\n\ndef volume(r):\n"
ANSWER = "```python\ndef circumference(r):\n    return 2 * math.pi * r\n```\n"


def snapshot_app(tmp_path, **scripts):
    catalog = FakeCatalog({"alpha": [COMPLETION], "beta": ["x"]}, backend_scripts=scripts)
    source = tmp_path / "circles.py"
    source.write_text(SOURCE)
    return make_app(tmp_path, catalog, path=source, config=CONFIG)


async def started(pilot) -> None:
    # Blink off before anything is drawn: TextArea caches lines drawn in the blink's off phase.
    pilot.app.editor.cursor_blink = False
    await ready(pilot)
    pilot.app.clear_notifications()  # "alpha on torch-fp32: ready"
    await pilot.pause()


async def settle(pilot) -> None:
    """Pin what varies between runs: timings, notifications, blinking cursors."""
    app = pilot.app
    for widget in app.query("TextArea, Input"):
        widget.cursor_blink = False
    app.readout = Readout(app.readout.kind or "completion", app.readout.prompt_tokens, app.readout.window,
                          app.readout.tokens, 0.012, 250.0, state=app.readout.state)
    app._dirty = True
    app.clear_notifications()
    await pilot.pause(0.15)


async def with_completion(pilot) -> None:
    app = pilot.app
    await started(pilot)
    app.editor.move_cursor(app.editor.document.end)
    app.editor.insert("def circumference(r):")
    await wait_for(pilot, lambda: app.editor.ghost is not None and app.editor.ghost.done is not None)
    await settle(pilot)


def test_editor_with_a_multiline_ghost_completion(snap_compare, tmp_path):
    assert snap_compare(snapshot_app(tmp_path), terminal_size=SIZE, run_before=with_completion)


def test_look_inside_colours_tokens_by_probability(snap_compare, tmp_path):
    async def run_before(pilot):
        pilot.app.editor.cursor_blink = False
        await pilot.press("f5")
        await with_completion(pilot)

    assert snap_compare(snapshot_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_chat_answer_rendered_as_code(snap_compare, tmp_path):
    async def run_before(pilot):
        app = pilot.app
        app.catalog.scripts["alpha"] = [ANSWER]
        await started(pilot)
        await pilot.press("ctrl+t")
        app.focused.value = "a function for the circumference of a circle"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.history)
        answer = app.query_one(Answer)
        await wait_for(pilot, answer.show)
        answer.set_stats(f"{app.readout.tokens} tokens · 250.0 tok/s · stopped: end of text")
        await settle(pilot)

    assert snap_compare(snapshot_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_model_and_backend_picker(snap_compare, tmp_path):
    async def run_before(pilot):
        app = pilot.app
        await started(pilot)
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker)
                       and app.screen.query_one("#backends", DataTable).row_count == 3)
        await settle(pilot)

    assert snap_compare(snapshot_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_settings_modal(snap_compare, tmp_path):
    async def run_before(pilot):
        app = pilot.app
        await started(pilot)
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
        for label in app.screen.query(".dialog-hint"):  # the real path differs per run
            label.update("Saved to ~/.config/gptui/config.toml; remap keys in its [keys] table.")
        await settle(pilot)

    assert snap_compare(snapshot_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_help_lists_every_binding(snap_compare, tmp_path):
    async def run_before(pilot):
        app = pilot.app
        await started(pilot)
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        for label in app.screen.query(".dialog-hint"):
            label.update('Remap a key in ~/.config/gptui/config.toml, e.g. [keys] "editor.accept" = "ctrl+l".')
        await settle(pilot)

    assert snap_compare(snapshot_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_compare_backends(snap_compare, tmp_path):
    async def run_before(pilot):
        app = pilot.app
        await started(pilot)
        app.editor.move_cursor(app.editor.document.end)
        app.editor.insert("def circumference(r):")
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        await pilot.press("ctrl+r")
        table = app.screen.query_one("#compare-table", DataTable)
        await wait_for(pilot, lambda: all(str(table.get_cell(b, "Status")).startswith(("done", "error"))
                                          for b in ("torch-fp32", "fake-int8", "broken")))
        for backend in ("torch-fp32", "fake-int8"):
            table.update_cell(backend, "TTFT", "12 ms")
            table.update_cell(backend, "Tokens/s", "250.0")
        await settle(pilot)

    app = snapshot_app(tmp_path, **{"fake-int8": ["\n    return 2 * 3.14159 * r\n"]})
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
