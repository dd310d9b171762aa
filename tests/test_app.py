"""The app through Pilot: each flow a person uses, on a fake backend that yields scripted tokens."""

from __future__ import annotations

import os
import re

import pytest
import torch
from textual.widgets import Input

from gptui.core.tokenizer import encode, fim_ids
from gptui.tui.screens.compare import CompareScreen
from gptui.tui.screens.dialogs import AskPath, Confirm
from gptui.tui.screens.help import HelpScreen
from gptui.tui.screens.picker import ModelPicker
from gptui.tui.screens.settings import SettingsScreen
from gptui.tui.settings import load_settings
from gptui.tui.widgets.chat import Answer
from gptui.tui.widgets.inspector import Inspector
from tui_fakes import SIZE, FakeCatalog, make_app, ready, sync, wait_for

BODY = "\n    return a + b\n\n\ndef unused():\n    pass\n"
FAST = "[editor]\ndebounce_ms = 20\n[sampling]\nseed = 7\n"


def fake(**kwargs) -> FakeCatalog:
    return FakeCatalog({"alpha": [BODY], "beta": ["\n    return b + a  # beta\n"]}, **kwargs)


async def type_and_wait_for_ghost(pilot, text: str, done: bool = True) -> None:
    """Enter text as one edit (a paste): pressing keys one by one would make Pilot wait for the
    CPU to go idle after every key while completions run."""
    editor = pilot.app.editor
    editor.insert(text)
    if done:
        await wait_for(pilot, lambda: editor.ghost is not None and editor.ghost.done is not None, what="a completion")
    else:
        await wait_for(pilot, lambda: editor.ghost is not None and editor.ghost.visible, what="ghost text")


@sync
async def test_ghost_appears_after_a_pause_and_stops_at_the_end_of_the_block(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await type_and_wait_for_ghost(pilot, "def add(a, b):")
        assert app.editor.ghost.visible == "\n    return a + b"  # the blank line ended it
        assert app.readout.state == "stopped: blank line"
        assert app.editor.text == "def add(a, b):"  # ghost text is drawn, not inserted


@sync
async def test_tab_accepts_the_whole_completion(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await type_and_wait_for_ghost(pilot, "def add(a, b):")
        request = app.completion_request
        await pilot.press("tab")
        assert app.editor.text == "def add(a, b):\n    return a + b"
        assert app.editor.cursor_location == (1, 16)
        assert app.editor.ghost is None or app.editor.ghost.request != request  # only a next completion


@sync
async def test_right_accepts_and_otherwise_moves_the_cursor(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await type_and_wait_for_ghost(pilot, "def add(a, b):")
        await pilot.press("right")
        assert app.editor.text.endswith("return a + b")
        app.editor.move_cursor((0, 0))
        await pilot.press("right")
        assert app.editor.cursor_location == (0, 1)


@sync
async def test_ctrl_right_accepts_one_word_and_keeps_the_rest(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await type_and_wait_for_ghost(pilot, "def add(a, b):")
        await pilot.press("ctrl+right")
        assert app.editor.text == "def add(a, b):\n    return"
        assert app.editor.ghost.visible == " a + b"
        await pilot.press("ctrl+right")
        assert app.editor.text == "def add(a, b):\n    return a"


@sync
async def test_escape_dismisses_and_tab_then_indents(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await type_and_wait_for_ghost(pilot, "def add(a, b):")
        await pilot.press("escape")
        assert app.editor.ghost is None
        assert app.editor.text == "def add(a, b):"
        await pilot.press("tab")  # no ghost: Tab indents as in any editor
        assert app.editor.text.rstrip(" ") == "def add(a, b):" and app.editor.text.endswith("  ")


MID_FILE = "def add(a, b):\n    return a + \n\n\nprint(add(1, ))\n"


def fim_catalog(tmp_path, script: str) -> FakeCatalog:
    """"fimmy" was trained for fill-in-the-middle (its config says so), "plain" was not."""
    return FakeCatalog({"fimmy": [script], "plain": [script]}, root=tmp_path / "models", fim=("fimmy",))


async def complete_at(pilot, location: tuple[int, int]) -> None:
    pilot.app.editor.move_cursor(location)
    await pilot.press("ctrl+g")


@pytest.mark.parametrize("model", ["fimmy", "plain"])
@sync
async def test_a_mid_file_completion_sends_the_suffix_only_to_a_fim_model(tmp_path, model):
    (tmp_path / "f.py").write_text(MID_FILE)
    app = make_app(tmp_path, fim_catalog(tmp_path, "b\n"), path=tmp_path / "f.py", config=FAST, model=model)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.fim == (model == "fimmy")
        assert ("FIM: no" in app._engine_line().plain) == (model == "plain")
        await complete_at(pilot, (1, 15))  # the end of "    return a + ", code below it
        await wait_for(pilot, lambda: app.editor.ghost is not None and app.editor.ghost.done is not None)
        encoding = app.engine.encoding
        prefix, suffix = "def add(a, b):\n    return a + ", "\n\n\nprint(add(1, ))\n"
        if model == "fimmy":
            pre, mid, suf = fim_ids(encoding)
            expected = [pre] + encode(encoding, prefix) + [suf] + encode(encoding, suffix) + [mid]
        else:
            expected = encode(encoding, prefix)
        assert app.engine.backend.prompts[-1] == expected
        assert app.editor.ghost.visible == "b"



def cursor_line_shown(app) -> str:
    """The cursor's line as the editor draws it (ghost text included)."""
    row = app.editor.cursor_location[0] - app.editor.scroll_offset[1]
    return "".join(segment.text for segment in app.editor.render_line(row))

@sync
async def test_mid_line_ghost_sits_at_the_cursor_and_tab_inserts_it_there(tmp_path):
    (tmp_path / "f.py").write_text(MID_FILE)
    app = make_app(tmp_path, fim_catalog(tmp_path, "2\nprint(3)"), path=tmp_path / "f.py", config=FAST,
                   model="fimmy")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await complete_at(pilot, (4, 13))  # print(add(1, |))
        await wait_for(pilot, lambda: app.editor.ghost is not None and app.editor.ghost.done is not None)
        assert app.editor.ghost.visible == "2"  # the code after the cursor ends the line: so does the ghost
        assert app.readout.state == "stopped: end of line"
        assert "print(add(1, 2))" in cursor_line_shown(app)  # drawn at the cursor, the rest of the line after it
        assert app.editor.text == MID_FILE
        await pilot.press("tab")
        assert app.editor.text == MID_FILE.replace("(1, )", "(1, 2)")
        assert app.editor.cursor_location == (4, 14)


@sync
async def test_escape_dismisses_a_mid_line_ghost(tmp_path):
    (tmp_path / "f.py").write_text(MID_FILE)
    app = make_app(tmp_path, fim_catalog(tmp_path, "2\n"), path=tmp_path / "f.py", config=FAST, model="fimmy")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await complete_at(pilot, (4, 13))
        await wait_for(pilot, lambda: app.editor.ghost is not None and app.editor.ghost.visible == "2")
        await pilot.press("escape")
        assert app.editor.ghost is None
        assert app.editor.text == MID_FILE
        assert "print(add(1, ))" in cursor_line_shown(app)


@sync
async def test_without_fim_there_is_no_completion_in_the_middle_of_a_line(tmp_path):
    (tmp_path / "f.py").write_text(MID_FILE)
    app = make_app(tmp_path, fim_catalog(tmp_path, "2\n"), path=tmp_path / "f.py", config=FAST, model="plain")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await complete_at(pilot, (4, 13))
        await pilot.pause(0.2)
        assert app.editor.ghost is None and app.engine.backend.prefills == 0


@sync
async def test_typing_what_the_ghost_shows_keeps_it_and_its_generation(tmp_path):
    catalog = fake(delay=0.05)  # slow enough to type while it streams
    app = make_app(tmp_path, catalog, config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await type_and_wait_for_ghost(pilot, "def add(a, b):", done=False)
        request, prefills = app.completion_request, catalog.backends_made[0].prefills
        await pilot.press("enter")  # the ghost starts with a newline
        assert app.editor.ghost is not None and app.completion_request == request
        await wait_for(pilot, lambda: app.editor.ghost is None or app.editor.ghost.done is not None)
        assert catalog.backends_made[0].prefills == prefills  # the same generation ran on
        assert app.editor.ghost.visible == "    return a + b"
        await pilot.press("tab")
        assert app.editor.text == "def add(a, b):\n    return a + b"


@sync
async def test_a_diverging_key_cancels_the_generation(tmp_path):
    catalog = FakeCatalog({"alpha": ["\n" + "    x = 1\n" * 100]}, delay=0.03)
    app = make_app(tmp_path, catalog, config="[editor]\ndebounce_ms = 20\n[sampling]\nmax_tokens = 300\n")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await type_and_wait_for_ghost(pilot, "def f():", done=False)
        app.editor.debounce = 30  # no new completion after the keystroke below
        await pilot.press("z")
        assert app.editor.ghost is None
        await wait_for(pilot, lambda: app.readout.state == "stopped: cancelled", what="the cancelled DoneEvent")
        backend = catalog.backends_made[0]
        decodes = backend.decodes
        await pilot.pause(0.2)
        assert backend.decodes == decodes  # nothing runs after cancellation
        assert app.readout.tokens < 300
        assert app.editor.text == "def f():z"


@sync
async def test_a_pause_while_the_model_loads_completes_once_it_is_ready(tmp_path):
    app = make_app(tmp_path, fake(load_delay=0.5), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        app.editor.insert("def add(a, b):")
        await pilot.pause(0.2)
        assert app.engine is None and app.editor.ghost is None
        await wait_for(pilot, lambda: app.editor.ghost is not None and app.editor.ghost.done is not None)
        assert app.editor.ghost.visible == "\n    return a + b"


@sync
async def test_a_new_completion_follows_the_next_pause(tmp_path):
    catalog = fake()
    app = make_app(tmp_path, catalog, config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await type_and_wait_for_ghost(pilot, "def add(a, b):")
        first = app.completion_request
        await pilot.press("backspace")
        await wait_for(pilot, lambda: app.completion_request != first, what="a second completion")


@sync
async def test_chat_streams_an_answer_that_can_be_copied_and_inserted(tmp_path):
    answer = "```python\ndef add(a, b):\n    return a + b\n```\n"
    catalog = FakeCatalog({"alpha": [answer]})
    app = make_app(tmp_path, catalog, config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t")
        assert isinstance(app.focused, Input)
        await pilot.press(*"add two numbers", "enter")
        await wait_for(pilot, lambda: app.history, what="the answer to finish")
        assert app.history[0].instruction == "add two numbers"
        assert app.history[0].answer == answer
        shown = app.query_one(Answer)
        await wait_for(pilot, lambda: shown.show(), what="the Markdown to render")
        assert re.search(r"context: \d+/256 tokens", str(app.chat.query_one("#chat-meter").render()))
        await pilot.press("ctrl+y")
        assert app.clipboard == answer
        await pilot.press("ctrl+r")
        assert app.editor.text == "def add(a, b):\n    return a + b\n"


@sync
async def test_chat_history_keeps_earlier_turns_in_the_prompt(tmp_path):
    catalog = FakeCatalog({"alpha": ["first answer", "second answer"]})
    app = make_app(tmp_path, catalog, config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t", *"one", "enter")
        await wait_for(pilot, lambda: len(app.history) == 1)
        await pilot.press(*"two", "enter")
        await wait_for(pilot, lambda: len(app.history) == 2)
        assert [t.answer for t in app.history] == ["first answer", "second answer"]
        assert len(app.query(Answer)) == 2


@sync
async def test_the_context_meter_shows_turns_dropped_to_fit_the_window(tmp_path):
    catalog = FakeCatalog({"alpha": ["values = [" + "1, " * 60 + "]\n"]})  # ~125 tokens per answer
    app = make_app(tmp_path, catalog, config=FAST + "chat_max_tokens = 200\n")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t")
        for n in range(1, 3):
            app.focused.value = f"question {n}"
            await pilot.press("enter")
            await wait_for(pilot, lambda: len(app.history) == n and not app.chat_request)
        meter = str(app.chat.query_one("#chat-meter").render())
        assert re.search(r"1 earlier turn dropped \(\d+ tokens\)", meter), meter


@sync
async def test_switching_model_and_backend_mid_generation_keeps_buffer_and_chat(tmp_path):
    # Slow tokens: Pilot waits for the CPU to go quiet after each key, and this test presses
    # keys while an answer streams.
    catalog = FakeCatalog({"alpha": ["x = 1\n" * 200], "beta": ["y = 2\n"]}, delay=0.1, load_delay=0.4)
    app = make_app(tmp_path, catalog, config=FAST + "chat_max_tokens = 400\n")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.editor.insert("import os\n")
        await pilot.press("ctrl+t")
        app.focused.value = "count"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.readout.tokens > 3, what="the answer to stream")
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker) and app.screen.models)
        await wait_for(pilot, lambda: app.screen.query_one("#backends").row_count == 3)
        await pilot.press("down", "enter")  # beta
        await wait_for(pilot, lambda: app.screen.query_one("#backends").has_focus)
        await pilot.press("down", "enter")  # fake-int8: builds with progress
        await wait_for(pilot, lambda: app.engine.model == "beta" and app.engine.backend_name == "fake-int8",
                       what="the switch")
        assert ("beta", "fake-int8") in catalog.loads
        assert app.editor.text.startswith("import os\n")  # the buffer survived
        await wait_for(pilot, lambda: app.chat_request == 0, what="the answer to stop")  # stopped, not lost
        assert app.history and app.history[0].answer.startswith("x = 1")
        assert "stopped" in str(app.query_one(".answer-stats").render())
        settings, _ = load_settings(app.config_path)
        assert (settings.model, settings.backend) == ("beta", "fake-int8")  # remembered for next time


@sync
async def test_a_backend_that_fails_to_load_leaves_the_app_running(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.editor.insert("keep me")
        app.load_engine("alpha", "broken", remember=True)
        await wait_for(pilot, lambda: any("broken" in n.message for n in app._notifications))
        assert app.engine.backend_name == "torch-fp32"  # still on the previous one
        assert app.editor.text == "keep me"


@sync
async def test_a_missing_model_at_start_is_a_notification(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST, model="nope")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: any("nope" in n.message for n in app._notifications))
        assert app.engine is None
        await pilot.press(*"x = ")
        await pilot.pause(0.1)  # past the pause: nothing to complete with
        assert app.editor.text == "x = " and app.editor.ghost is None


@sync
async def test_settings_are_validated_saved_and_read_back(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
        screen = app.screen
        screen.query_one("#temperature", Input).value = "-1"
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SettingsScreen)  # refused, with the reason shown
        assert "temperature" in str(screen.query_one("#settings-error").render())
        screen.query_one("#temperature", Input).value = "0.5"
        screen.query_one("#seed", Input).value = "42"
        screen.query_one("#debounce_ms", Input).value = "400"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.editor.debounce == 0.4
    settings, warnings = load_settings(app.config_path)
    assert (settings.temperature, settings.seed, settings.debounce_ms) == (0.5, 42, 400)
    assert not warnings
    again = make_app(tmp_path, fake())
    assert again.settings.temperature == 0.5


@sync
async def test_keys_can_be_remapped_in_the_config(tmp_path):
    config = FAST + '[keys]\n"editor.accept" = "ctrl+l"\n'
    app = make_app(tmp_path, fake(), config=config)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await type_and_wait_for_ghost(pilot, "def add(a, b):")
        await pilot.press("ctrl+l")
        assert app.editor.text == "def add(a, b):\n    return a + b"
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        rows = app.screen.rows
        assert ("Editor", "ctrl+l", "Accept", "editor.accept") in rows
        assert {r[3] for r in rows} >= {"app.quit", "app.save", "app.model", "app.settings", "app.compare",
                                        "app.inspect", "editor.dismiss", "editor.accept_word", "chat.copy"}


@sync
async def test_ctrl_s_saves_atomically_and_keeps_permissions(tmp_path):
    source = tmp_path / "demo.py"
    source.write_text("x = 1\n")
    source.chmod(0o640)
    app = make_app(tmp_path, fake(), path=source, config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.editor.insert("y = 2\n")
        await pilot.pause()
        assert app.modified
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert source.read_text() == "y = 2\nx = 1\n"
        assert not app.modified
        assert oct(source.stat().st_mode & 0o777) == oct(0o640)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".demo")] == []


@sync
async def test_saving_over_a_file_changed_on_disk_asks_first(tmp_path):
    source = tmp_path / "demo.py"
    source.write_text("x = 1\n")
    app = make_app(tmp_path, fake(), path=source, config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        source.write_text("changed elsewhere\n")
        app.editor.insert("mine = 1\n")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("n")
        assert source.read_text() == "changed elsewhere\n"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await pilot.pause()
        assert source.read_text() == "mine = 1\nx = 1\n"


@sync
async def test_a_new_buffer_asks_where_to_save(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.editor.insert("print('hi')\n")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, AskPath))
        app.screen.query_one(Input).value = str(tmp_path / "new.py")
        await pilot.press("enter")
        await wait_for(pilot, lambda: (tmp_path / "new.py").exists())
        assert (tmp_path / "new.py").read_text() == "print('hi')\n"
        assert app.buffer.path == tmp_path / "new.py"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write read-only folders")
@sync
async def test_an_unwritable_file_is_a_notification_and_the_buffer_stays(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    source = folder / "demo.py"
    source.write_text("x = 1\n")
    folder.chmod(0o500)
    try:
        app = make_app(tmp_path, fake(), path=source, config=FAST)
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            app.editor.insert("y = 2\n")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: any("Cannot save" in n.message for n in app._notifications))
            assert app.editor.text == "y = 2\nx = 1\n" and app.modified
    finally:
        folder.chmod(0o700)


@sync
async def test_a_write_error_is_a_notification_and_the_buffer_stays(tmp_path):
    target = tmp_path / "missing-folder" / "demo.py"  # its folder does not exist: writing fails
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.editor.insert("y = 2\n")
        app._save(target)
        await wait_for(pilot, lambda: any("Cannot save" in n.message for n in app._notifications))
        assert app.editor.text == "y = 2\n" and app.modified and app.buffer.path is None


@sync
async def test_a_non_utf8_file_opens_an_empty_buffer_that_never_overwrites_it(tmp_path):
    source = tmp_path / "latin1.py"
    source.write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    app = make_app(tmp_path, fake(), path=source, config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert any("not UTF-8" in n.message for n in app._notifications)
        assert app.buffer.path is None and app.editor.text == ""
        app.editor.insert("x = 1\n")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, AskPath))  # a new name, not the latin-1 file
    assert source.read_bytes() == "caf\xe9 = 1\n".encode("latin-1")


@sync
async def test_a_folder_given_as_the_file_is_a_notification(tmp_path):
    folder = tmp_path / "pkg.py"
    folder.mkdir()
    app = make_app(tmp_path, fake(), path=folder, config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert any("Cannot open" in n.message for n in app._notifications)
        assert app.buffer.path is None


@sync
async def test_look_inside_colours_tokens_and_lists_alternatives(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f5")
        assert app.has_class("-inspect") and app.editor.inspect
        await type_and_wait_for_ghost(pilot, "def add(a, b):")
        inspector = app.query_one(Inspector)
        await wait_for(pilot, lambda: len(inspector.tokens) > 3)
        assert all(len(t.top) == 5 for t in inspector.tokens)
        inspector.focus()
        await pilot.press("home")
        text = inspector.render().plain
        assert "token 1:" in text and "alternatives:" in text
        await pilot.press("right")
        assert inspector.selected == 1


@sync
async def test_compare_runs_every_backend_and_finds_the_divergence(tmp_path):
    catalog = FakeCatalog({"alpha": ["a b c d e f"]}, backend_scripts={"fake-int8": ["a b X d e f"]})
    app = make_app(tmp_path, catalog, config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.editor.insert("# compare\n")
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        await pilot.press("ctrl+r")
        screen = app.screen
        table = screen.query_one("#compare-table")
        await wait_for(pilot, lambda: all(str(table.get_cell(b, "Status")).startswith(("done", "error"))
                                          for b in ("torch-fp32", "fake-int8", "broken")), what="all backends")
        assert table.row_count == 3
        assert str(table.get_cell("torch-fp32", "Diverges at")) == "reference"
        assert str(table.get_cell("fake-int8", "Diverges at")) == "token 2"
        assert "diverges at token 2" in str(screen.query_one("#compare-texts").render())
        assert str(table.get_cell("broken", "Status")).startswith("error")
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen)


@sync
async def test_ctrl_q_quits_at_once_when_saved_and_asks_when_not(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.editor.insert("unsaved = True\n")
        await pilot.pause()
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("n")
        assert app.is_running and app.editor.text == "unsaved = True\n"
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.is_running)


@sync
async def test_a_backend_builds_in_the_background_while_the_editor_keeps_working(tmp_path):
    catalog = fake()
    app = make_app(tmp_path, catalog, config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        catalog.load_delay = 3.0  # the build
        app.load_engine("alpha", "fake-int8")
        await wait_for(pilot, lambda: app.build.has_class("-active"), what="build progress")
        await pilot.press("o")  # the UI answers keys during the build
        assert app.editor.text == "o" and app.engine.backend_name == "torch-fp32"
        await wait_for(pilot, lambda: app.engine.backend_name == "fake-int8")
        assert not app.build.has_class("-active")


async def compare_real_backends(tmp_path, model_dir, backends):
    """The compare screen on the real catalog (no fake): torch-fp32 first, then `backends`."""
    source = tmp_path / "demo.py"
    source.write_text("def add(a, b):\n")
    app = make_app(tmp_path, None, path=source, config="[sampling]\nseed = 0\nmax_tokens = 16\n",
                   model=str(model_dir), backend="torch-fp32")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.editor.move_cursor(app.editor.document.end)
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        choices = app.screen.query_one("#compare-backends")
        choices.deselect_all()
        for name in backends:
            choices.select(name)
        await pilot.press("ctrl+r")
        table = app.screen.query_one("#compare-table")
        await wait_for(pilot, lambda: all(str(table.get_cell(b, "Status")).startswith(("done", "error"))
                                          for b in ["torch-fp32", *backends]), timeout=120, what="the runs")
        return {b: (str(table.get_cell(b, "Status")), str(table.get_cell(b, "Diverges at")))
                for b in ["torch-fp32", *backends]}


@sync
async def test_compare_on_real_backends(tmp_path, tiny_model_dir):
    rows = await compare_real_backends(tmp_path, tiny_model_dir, ["torch-int8"])
    assert rows["torch-fp32"] == ("done (length)", "reference")
    assert rows["torch-int8"][0] == "done (length)"
    assert rows["torch-int8"][1] == "identical" or rows["torch-int8"][1].startswith("token ")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@sync
async def test_compare_cuda_against_fp32(tmp_path, tiny_model_dir):
    rows = await compare_real_backends(tmp_path, tiny_model_dir, ["cuda"])
    assert rows["cuda"][0] == "done (length)", rows


@sync
async def test_look_inside_follows_the_editor_cursor_into_accepted_text(tmp_path):
    app = make_app(tmp_path, fake(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f5")
        await type_and_wait_for_ghost(pilot, "def add(a, b):")
        ghost = app.editor.ghost
        await pilot.press("tab")
        app.editor.debounce = 30  # keep the next completion away
        app.editor.move_cursor((1, 11))  # on the "a" of "    return a + b"
        await pilot.pause()
        start = app.editor.document.get_index_from_location((1, 11)) - len("def add(a, b):")
        expected = max(i for i, (s, _) in enumerate(ghost.tokens) if s <= start)
        assert app.inspector.request == ghost.request and app.inspector.selected == expected
        assert ghost.tokens[expected][1].text.strip() == "a"
