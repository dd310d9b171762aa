"""Named chats: their turns, model, backend and sampling settings, in the history database.

The tables come from history's migrations (schema 2). Each finished turn is written at once, in
one short transaction, so a killed app loses at most the answer that was streaming. With nothing
to write to (`--no-log`, `[log] enabled = false`, a damaged or newer database) the same store runs
on an in-memory database: chats work for the session and end with it. A write that fails later
moves the store to memory too (a copy of what it had), with one warning for the app to show.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import GptuiError
from .chat import Turn, as_markdown
from ..core.history import connect, connect_memory
from .settings import SECTIONS

SAMPLING = SECTIONS["sampling"]  # the Settings fields a chat keeps
_DEFAULT_NAME = re.compile(r"Chat \d+")
NAME_LENGTH = 48  # a chat named after its first question keeps this much of it


@dataclass
class Chat:
    id: int
    name: str
    created: float
    updated: float
    model: str | None = None  # name or folder, as the catalog loads it
    backend: str | None = None
    settings: dict = field(default_factory=dict)  # Settings field -> value, for the fields in SAMPLING
    turns: int = 0


class ChatStore:
    """A database that fails moves the store to memory instead of raising; `warning` is the one line
    saying so, for the app to show."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.warning: str | None = None
        self.conn: sqlite3.Connection | None = None
        if path is not None:
            try:
                self.conn = connect(path)
            except GptuiError as e:
                self.warning = f"{e}; chats are kept in memory until the app exits"
        if self.conn is None:
            self.conn = connect_memory()

    @property
    def persistent(self) -> bool:
        return self.path is not None and self.warning is None

    def _run(self, step):
        """step(conn) in one transaction; on a failed write, move to memory and run it there."""
        for attempt in (0, 1):
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    result = step(self.conn)
                    self.conn.execute("COMMIT")
                    return result
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                if attempt or not self.persistent:
                    raise
                self._to_memory(f"{self.path}: cannot save chats ({e}); chats are kept in memory until the app "
                                "exits")

    def _to_memory(self, reason: str) -> None:
        memory = connect_memory()
        try:
            self.conn.backup(memory)
        except sqlite3.Error:
            pass  # nothing could be copied: the migrated empty database stays
        self.conn.close()
        self.conn, self.warning = memory, reason

    # ---- reading ----

    def _chat(self, row: sqlite3.Row) -> Chat:
        try:
            settings = json.loads(row["settings"])
        except ValueError:
            settings = {}
        settings = {k: v for k, v in settings.items() if k in SAMPLING} if isinstance(settings, dict) else {}
        return Chat(row["id"], row["name"], row["created"], row["updated"], row["model"], row["backend"], settings,
                    row["turns"])

    _SELECT = ("SELECT c.*, (SELECT COUNT(*) FROM chat_messages m WHERE m.chat_id = c.id AND m.role = 'user') "
               "AS turns FROM chats c")

    def chats(self) -> list[Chat]:
        """Every chat, the most recently changed first."""
        return [self._chat(r) for r in self.conn.execute(f"{self._SELECT} ORDER BY c.updated DESC, c.id DESC")]

    def get(self, chat_id: int) -> Chat | None:
        row = self.conn.execute(f"{self._SELECT} WHERE c.id = ?", (chat_id,)).fetchone()
        return self._chat(row) if row else None

    def last_opened(self) -> Chat | None:
        row = self.conn.execute(f"{self._SELECT} ORDER BY c.opened DESC, c.id DESC LIMIT 1").fetchone()
        return self._chat(row) if row else None

    def turns(self, chat_id: int) -> list[Turn]:
        rows = self.conn.execute("SELECT role, text, input, stats FROM chat_messages WHERE chat_id = ? "
                                 "ORDER BY position", (chat_id,)).fetchall()
        turns: list[Turn] = []
        for r in rows:
            if r["role"] == "user":
                turns.append(Turn(r["text"], r["input"], ""))
            elif turns:
                turns[-1].answer, turns[-1].stats = r["text"], r["stats"]
        return turns

    # ---- writing ----

    def create(self, model: str | None, backend: str | None, settings: dict, name: str | None = None) -> Chat:
        def step(conn):
            taken = {r[0] for r in conn.execute("SELECT name FROM chats")}
            chosen = name or next(f"Chat {n}" for n in range(1, len(taken) + 2) if f"Chat {n}" not in taken)
            now = time.time()
            cursor = conn.execute("INSERT INTO chats (name, created, updated, opened, model, backend, settings) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  (chosen, now, now, now, model, backend, _settings_json(settings)))
            return cursor.lastrowid

        return self.get(self._run(step))

    def opened(self, chat: Chat) -> None:
        self._run(lambda conn: conn.execute("UPDATE chats SET opened = ? WHERE id = ?", (time.time(), chat.id)))

    def rename(self, chat: Chat, name: str) -> None:
        chat.name, chat.updated = name, time.time()
        self._run(lambda conn: conn.execute("UPDATE chats SET name = ?, updated = ? WHERE id = ?",
                                            (name, chat.updated, chat.id)))

    def delete(self, chat: Chat) -> None:
        def step(conn):
            conn.execute("DELETE FROM chat_messages WHERE chat_id = ?", (chat.id,))
            conn.execute("DELETE FROM chats WHERE id = ?", (chat.id,))

        self._run(step)

    def set_engine(self, chat: Chat, model: str | None, backend: str | None) -> None:
        chat.model, chat.backend = model, backend
        self._run(lambda conn: conn.execute("UPDATE chats SET model = ?, backend = ? WHERE id = ?",
                                            (model, backend, chat.id)))

    def set_settings(self, chat: Chat, settings: dict) -> None:
        chat.settings, chat.updated = {k: v for k, v in settings.items() if k in SAMPLING}, time.time()
        self._run(lambda conn: conn.execute("UPDATE chats SET settings = ?, updated = ? WHERE id = ?",
                                            (_settings_json(chat.settings), chat.updated, chat.id)))

    def add_turn(self, chat: Chat, turn: Turn) -> None:
        """Append a finished turn; a chat still called "Chat N" is named after its first question."""
        if chat.turns == 0 and has_default_name(chat):
            question = " ".join(turn.instruction.split())
            chat.name = question if len(question) <= NAME_LENGTH else question[: NAME_LENGTH - 1] + "…"
        chat.updated = time.time()
        chat.turns += 1

        def step(conn):
            position = conn.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM chat_messages WHERE chat_id = ?",
                                    (chat.id,)).fetchone()[0]
            conn.executemany(
                "INSERT INTO chat_messages (chat_id, position, role, text, input, stats, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(chat.id, position, "user", turn.instruction, turn.input, "", chat.updated),
                 (chat.id, position + 1, "assistant", turn.answer, "", turn.stats, chat.updated)])
            conn.execute("UPDATE chats SET name = ?, updated = ? WHERE id = ?", (chat.name, chat.updated, chat.id))

        self._run(step)

    def close(self) -> None:
        self.conn.close()


def has_default_name(chat: Chat) -> bool:
    """Still called "Chat N", as created."""
    return bool(_DEFAULT_NAME.fullmatch(chat.name))


def _settings_json(settings: dict) -> str:
    return json.dumps({k: v for k, v in settings.items() if k in SAMPLING}, sort_keys=True)


def to_markdown(chat: Chat, turns: list[Turn]) -> str:
    """The chat as a Markdown document: a heading per question, its selection and answer fenced."""
    lines = [f"# {chat.name}", ""]
    s = chat.settings
    about = [f"{chat.model or 'default model'} on {chat.backend or 'default backend'}"]
    about += [f"{label} {s[key]}" for key, label in (("temperature", "temperature"), ("top_k", "top-k"),
                                                     ("top_p", "top-p"), ("seed", "seed")) if s.get(key) is not None]
    about.append("exported " + time.strftime("%Y-%m-%d %H:%M"))
    lines += [" · ".join(about), ""]
    for turn in turns:
        lines += [f"## {' '.join(turn.instruction.split())}", ""]
        if turn.input.strip():
            lines += ["With this code:", "", "```python", turn.input.rstrip("\n"), "```", ""]
        lines += [as_markdown(turn.answer).rstrip("\n"), ""]
        if turn.stats:
            lines += [f"*{turn.stats}*", ""]
    return "\n".join(lines)
