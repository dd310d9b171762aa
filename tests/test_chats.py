"""Named chats: the store (schema 2, migrating a version-1 log, a damaged database, Markdown) and
the chat list in the app through Pilot (new, switch, rename, delete, export, restore on restart)."""

from __future__ import annotations

import sqlite3

import pytest

from gptui.tui.chat import Turn
from gptui.tui.chats import ChatStore, to_markdown
from gptui.tui.history import MIGRATIONS, SCHEMA_VERSION, History, recent


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
