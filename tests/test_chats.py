"""Named chats: the store (schema 2, migrating a version-1 log, a damaged database, Markdown) and
the chat list in the app through Pilot (new, switch, rename, delete, export, restore on restart)."""

from __future__ import annotations

import sqlite3

import pytest
from textual.widgets import Input
from tui_fakes import SIZE, FakeCatalog, make_app, ready, sync, wait_for

from gptui.tui.chat import Turn
from gptui.tui.chats import ChatStore, to_markdown
from gptui.core.history import MIGRATIONS, SCHEMA_VERSION, History, recent
from gptui.tui.screens.chats import ChatList
from gptui.tui.screens.dialogs import AskPath, AskText, Confirm
from gptui.tui.widgets.chat import Answer


@pytest.fixture
def db(tmp_path):
    return tmp_path / "log" / "gptui.db"


def write_v1(path):
    """A log as gptui wrote it before chats: schema 1 and one entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied REAL NOT NULL)")
    for statement in MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, 0)")
    conn.execute("INSERT INTO entries (created, source, kind, prompt_hash, prompt, output, model, outcome) "
                 "VALUES (1, 'app', 'chat', 'h', 'old question', 'old answer', 'alpha', 'kept')")
    conn.commit()
    conn.close()


def test_a_version_1_log_migrates_in_place_and_keeps_its_entries(db):
    write_v1(db)
    store = ChatStore(db)
    assert store.persistent and store.warning is None
    chat = store.create("alpha", "torch-fp32", {"temperature": 0.5})
    store.add_turn(chat, Turn("q", "", "a"))
    store.close()
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")] == [1, 2]
    assert SCHEMA_VERSION == 2
    [entry] = recent(db)
    assert (entry["prompt"], entry["output"]) == ("old question", "old answer")
    assert conn.execute("SELECT role, text FROM chat_messages ORDER BY position").fetchall() == [
        ("user", "q"), ("assistant", "a")]
    assert History(db).enabled  # the log opens the migrated file as it is


def test_chats_round_trip_and_are_named_after_their_first_question(db):
    store = ChatStore(db)
    first = store.create("alpha", "torch-fp32", {"temperature": 0.5, "seed": 7, "debounce_ms": 1})
    second = store.create(None, None, {})
    assert (first.name, second.name) == ("Chat 1", "Chat 2")
    assert first.settings == {"temperature": 0.5, "seed": 7}  # only sampling settings belong to a chat
    store.add_turn(first, Turn("reverse  a\nlist", "xs = [1]", "xs[::-1]", "3 tokens"))
    store.add_turn(first, Turn("again", "", "ys"))
    store.rename(second, "mine")
    store.add_turn(second, Turn("kept name", "", "x"))
    store.opened(first)
    store.close()
    again = ChatStore(db)
    assert again.last_opened().id == first.id
    [chat, other] = sorted(again.chats(), key=lambda c: c.id)
    assert (chat.name, chat.turns, chat.model, chat.settings) == ("reverse a list", 2, "alpha",
                                                                  {"temperature": 0.5, "seed": 7})
    assert other.name == "mine"
    assert again.turns(chat.id) == [Turn("reverse  a\nlist", "xs = [1]", "xs[::-1]", "3 tokens"),
                                    Turn("again", "", "ys")]
    again.delete(chat)
    assert [c.id for c in again.chats()] == [other.id] and again.turns(chat.id) == []


def test_a_damaged_database_keeps_chats_in_memory_with_one_warning(db):
    db.parent.mkdir(parents=True)
    db.write_bytes(b"not a database\n" * 300)
    store = ChatStore(db)
    assert not store.persistent and "unreadable" in store.warning and "\n" not in store.warning
    chat = store.create("alpha", "torch-fp32", {})
    store.add_turn(chat, Turn("q", "", "a"))
    assert store.turns(chat.id) == [Turn("q", "", "a")]
    assert db.read_bytes().startswith(b"not a database")  # left as it was


def test_a_write_that_fails_later_moves_the_chats_to_memory(db):
    store = ChatStore(db)
    chat = store.create("alpha", "torch-fp32", {})
    store.add_turn(chat, Turn("q", "", "a"))
    store.conn.execute("PRAGMA query_only = ON")  # every write from here fails, as on a full disk
    store.add_turn(chat, Turn("q2", "", "a2"))
    assert not store.persistent and "cannot save chats" in store.warning
    assert [t.answer for t in store.turns(chat.id)] == ["a", "a2"]  # the copy in memory has both


def test_markdown_has_a_heading_per_question_and_fences_code():
    from gptui.tui.chats import Chat

    chat = Chat(1, "Lists", 0, 0, "alpha", "torch-fp32", {"temperature": 0.2, "seed": 7})
    text = to_markdown(chat, [Turn("reverse a list", "xs = [1, 2]\n", "xs[::-1]", "4 tokens · stopped: end"),
                              Turn("explain", "", "```python\nx = 1\n```\nDone.")])
    assert text.startswith("# Lists\n\nalpha on torch-fp32 · temperature 0.2 · seed 7 · exported ")
    assert ("## reverse a list\n\nWith this code:\n\n```python\nxs = [1, 2]\n```\n\n```python\nxs[::-1]\n```\n\n"
            "*4 tokens · stopped: end*\n\n## explain\n\n```python\nx = 1\n```\nDone.\n") in text


# ---- the app ----

FAST = "[editor]\ndebounce_ms = 20\n[sampling]\nseed = 7\n"


def catalog() -> FakeCatalog:
    return FakeCatalog({"alpha": ["use a loop\n"], "beta": ["beta says hi\n"]})


async def ask(pilot, question: str) -> None:
    app = pilot.app
    turns = len(app.history)
    app.query_one("#chat-input", Input).value = question
    app.query_one("#chat-input", Input).focus()
    await pilot.press("enter")
    await wait_for(pilot, lambda: len(app.history) == turns + 1 and not app.chat_request, what="the answer")


async def chat_list(pilot) -> ChatList:
    await pilot.press("f8")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ChatList), what="the chat list")
    return pilot.app.screen


def names(screen: ChatList) -> list[str]:
    return [c.name for c in screen.chats]


@sync
async def test_new_switch_and_restore_with_model_backend_and_settings(tmp_path):
    app = make_app(tmp_path, catalog(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "add two numbers")
        first = app.active_chat
        assert first.name == "add two numbers" and app.chat.border_title == "Chat · add two numbers"
        assert ChatStore(app.chats.path).turns(first.id) == app.history  # on disk as soon as it ended
        await pilot.press("ctrl+n")
        assert app.active_chat.id != first.id and app.history == [] and not app.query(Answer)
        app.load_engine("beta", "fake-int8", remember=True)  # as the model picker does
        await wait_for(pilot, lambda: app.engine.model == "beta", what="beta")
        app.settings.temperature = 0.9
        app.chats.set_settings(app.active_chat, app._sampling())  # as the settings screen does
        await ask(pilot, "say hi")
        screen = await chat_list(pilot)
        assert names(screen) == ["say hi", "add two numbers"]  # the most recently changed first
        await pilot.press("down", "enter")  # the cursor starts on the chat in use: "say hi"
        await wait_for(pilot, lambda: app.engine.model == "alpha" and app.active_chat.id == first.id,
                       what="the switch back to alpha")
        assert [t.answer for t in app.history] == ["use a loop\n"] and len(app.query(Answer)) == 1
        assert app.settings.temperature == 0.2 and app.engine.backend_name == "torch-fp32"
        screen = await chat_list(pilot)
        assert screen.query_one("#chats-table").cursor_row == 1  # on the chat in use
        await pilot.press("up", "enter")  # the beta chat, once more: the last one opened
        await wait_for(pilot, lambda: app.engine.model == "beta", what="the switch to beta")
    # beta stays the settings file's model; the second start opens the chat last opened
    again = make_app(tmp_path, catalog(), config=FAST)
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert again.active_chat.name == "say hi"
        assert (again.engine.model, again.engine.backend_name) == ("beta", "fake-int8")
        assert again.settings.temperature == 0.9
        assert [(t.instruction, t.answer) for t in again.history] == [("say hi", "beta says hi\n")]
        shown = again.query_one(Answer)
        await wait_for(pilot, lambda: shown.show(), what="the restored answer")
        assert shown.text == "beta says hi\n" and "stopped" in str(shown.query_one(".answer-stats").render())


@sync
async def test_a_chat_whose_model_is_gone_falls_back_to_the_default(tmp_path):
    from gptui.core.paths import data_dir

    store = ChatStore(data_dir() / "gptui.db")
    store.create("vanished", "torch-fp32", {"temperature": 0.4}, name="old chat")
    store.close()
    app = make_app(tmp_path, catalog(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.engine.model == "alpha" and app.active_chat.name == "old chat"
        assert any("vanished" in n.message and "default model" in n.message for n in app._notifications)
        assert app.settings.temperature == 0.4
        assert app.chats.get(app.active_chat.id).model == "alpha"  # next time: no second notice


@sync
async def test_rename_and_delete_from_the_chat_list(tmp_path):
    app = make_app(tmp_path, catalog(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "first question")
        await pilot.press("ctrl+n")
        await ask(pilot, "second question")
        await chat_list(pilot)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, AskText))
        app.screen.query_one(Input).value = "renamed"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatList))  # back in the list
        assert names(app.screen) == ["renamed", "first question"]
        assert app.chat.border_title == "Chat · renamed"
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        assert "renamed" in app.screen.question and "1 turn" in app.screen.question
        await pilot.press("n")  # kept
        await wait_for(pilot, lambda: isinstance(app.screen, ChatList))
        assert names(app.screen) == ["renamed", "first question"]
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatList))
        assert names(app.screen) == ["first question"]
        assert app.active_chat.name == "first question" and [t.instruction for t in app.history] == ["first question"]
        await pilot.press("escape")
    assert [c.name for c in ChatStore(app.chats.path).chats()] == ["first question"]


@sync
async def test_export_writes_markdown_and_asks_before_overwriting(tmp_path):
    app = make_app(tmp_path, FakeCatalog({"alpha": ["def add(a, b):\n    return a + b\n"]}), config=FAST)
    target = tmp_path / "out.md"
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.editor.insert("x = 1")
        app.editor.select_all()
        await ask(pilot, "add two numbers")
        for attempt in range(2):
            await chat_list(pilot)
            await pilot.press("e")
            await wait_for(pilot, lambda: isinstance(app.screen, AskPath))
            assert app.screen.query_one(Input).value == "add-two-numbers.md"  # named after the chat
            app.screen.query_one(Input).value = str(target)
            await pilot.press("enter")
            if attempt == 0:
                await wait_for(pilot, lambda: target.exists(), what="the export")
                written = target.read_text()
                target.write_text("mine")
            else:
                await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
                await pilot.press("n")
                assert target.read_text() == "mine"  # refused: the file stays
    assert written.startswith("# add two numbers\n\nalpha on torch-fp32 · temperature 0.2 · top-k 50 · top-p 1.0 · "
                              "seed 7 · exported ")
    assert ("\n## add two numbers\n\nWith this code:\n\n```python\nx = 1\n```\n\n"
            "```python\ndef add(a, b):\n    return a + b\n```\n\n*") in written
    assert written.endswith("stopped: end of text*\n")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temp file left


@sync
async def test_no_log_keeps_chats_in_memory_and_says_so_once(tmp_path):
    from gptui.tui.app import create_app

    app = create_app(None, catalog=catalog(), config_path=tmp_path / "c.toml", log=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await ask(pilot, "q")
        await pilot.press("ctrl+n")
        screen = await chat_list(pilot)
        assert names(screen) == ["Chat 1", "q"] and "not saved" in str(screen.query_one(".dialog-title").render())
        notes = [n.message for n in app._notifications if "memory" in n.message]
        assert notes == ["Logging is off: chats are kept in memory until the app exits"]
    assert not app.chats.persistent and not list(tmp_path.rglob("*.db"))


@sync
async def test_a_damaged_database_starts_with_chats_in_memory_and_one_warning(tmp_path):
    from gptui.core.paths import data_dir

    db = data_dir() / "gptui.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"garbage" * 1000)
    app = make_app(tmp_path, catalog(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        warnings = [n.message for n in app._notifications if n.severity == "warning"]
        assert len(warnings) == 1 and "logging is off" in warnings[0] and "chats are kept in memory" in warnings[0]
        await ask(pilot, "still works")
        assert app.active_chat.name == "still works" and app.active_chat.turns == 1
    assert db.read_bytes() == b"garbage" * 1000


@sync
async def test_the_chat_keys_are_listed_and_clash_with_nothing_on_the_main_screen(tmp_path):
    from gptui.tui.screens.help import HelpScreen

    app = make_app(tmp_path, catalog(), config=FAST)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        rows = app.screen.rows
    assert ("App", "f8", "Chats", "app.chats") in rows and ("App", "ctrl+n", "New chat", "app.new_chat") in rows
    assert {r[3] for r in rows} >= {"chats.new", "chats.rename", "chats.delete", "chats.export", "chats.close"}
    main_screen = [r for r in rows if r[0] in ("App", "Editor", "Chat", "Chat input")]
    for key, ident in (("f8", "app.chats"), ("ctrl+n", "app.new_chat")):
        assert [r[3] for r in main_screen if key in r[1].split(", ")] == [ident]
