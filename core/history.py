"""The log of every completion and chat answer, in SQLite at $XDG_DATA_HOME/gptui/gptui.db.
The same database keeps the app's named chats (tui/chats.py; schema version 2).

One row per generation, written when it ends; ghost-text rows are updated when the user
accepts (all or part) or dismisses them. WAL mode and a busy timeout let two app instances,
`serve` and the CLI write at once; each write is its own short transaction, so a killed
process loses at most the entry it was writing. A History is used by one thread at a time, not
necessarily the one that opened it (`serve` writes from its generation thread). A database that cannot be read (corrupted,
or written by a newer gptui) turns logging off with one warning line: the app still starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

from .errors import GptuiError
from .paths import data_dir

DB_NAME = "gptui.db"
BUSY_TIMEOUT_S = 5.0  # how long a writer waits for another one before giving up on its entry

# Schema version -> the statements that bring the previous version up to it.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE entries (
            id INTEGER PRIMARY KEY,
            created REAL NOT NULL,          -- unix time the generation ended
            source TEXT NOT NULL,           -- app, cli or serve (SOURCES)
            kind TEXT NOT NULL,             -- completion or chat
            prompt_hash TEXT NOT NULL,      -- sha256 of prompt, context and suffix
            prompt TEXT NOT NULL,           -- the code before the cursor, or the chat instruction
            context TEXT NOT NULL DEFAULT '',  -- chat: the editor selection sent with it (serve: the earlier
                                               -- messages, a JSON list of {role, content})
            suffix TEXT NOT NULL DEFAULT '',   -- fill-in-the-middle: the code after the cursor
            output TEXT NOT NULL,
            model TEXT, backend TEXT, seed INTEGER,
            sampling TEXT,                  -- JSON of the sampling parameters
            prompt_tokens INTEGER, tokens INTEGER,
            ttft_s REAL, tokens_per_s REAL, stop_reason TEXT,
            outcome TEXT,                   -- completion: accepted, partial, dismissed; chat: kept, stopped
            accepted TEXT                   -- the part of a completion that went into the buffer
        )""",
        "CREATE INDEX entries_model ON entries (model, id)",
    ),
    # Named chats (tui/chats.py): what a chat needs to come back as it was on the next start.
    2: (
        """CREATE TABLE chats (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,          -- last turn, rename or settings change
            opened REAL NOT NULL,           -- last time it was the active chat: the next start opens it
            model TEXT, backend TEXT,       -- as the model picker or a chat switch loaded them
            settings TEXT NOT NULL DEFAULT '{}'  -- JSON of the sampling settings
        )""",
        """CREATE TABLE chat_messages (
            chat_id INTEGER NOT NULL,
            position INTEGER NOT NULL,      -- 0, 1, ... in the chat: a user message, then its answer
            role TEXT NOT NULL,             -- user or assistant
            text TEXT NOT NULL,             -- the instruction, or the answer
            input TEXT NOT NULL DEFAULT '',  -- user: the editor selection sent with it
            stats TEXT NOT NULL DEFAULT '',  -- assistant: tokens, speed and why it stopped
            created REAL NOT NULL,
            PRIMARY KEY (chat_id, position)
        )""",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)
SOURCES = ("app", "cli", "serve")  # who wrote an entry: the Textual app, `gptui PROMPT`, `gptui serve`


def db_path() -> Path:
    """$GPTUI_DB, else gptui.db in the data folder ($GPTUI_DATA_DIR or $XDG_DATA_HOME/gptui)."""
    if os.environ.get("GPTUI_DB"):
        return Path(os.environ["GPTUI_DB"]).expanduser()
    return data_dir() / DB_NAME


def prompt_hash(prompt: str, context: str = "", suffix: str = "") -> str:
    return hashlib.sha256("\0".join((prompt, context, suffix)).encode("utf-8")).hexdigest()


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """An open, migrated connection; GptuiError (one line) when the file is not usable."""
    try:
        if readonly:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                                   isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise GptuiError(f"{path}: cannot open the log ({e})") from None
    try:
        conn.row_factory = sqlite3.Row
        if not readonly:
            _retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")  # in WAL: durable against a killed process
            _retry_busy(lambda: _migrate(conn, path))
        else:
            _check_version(conn, path)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise GptuiError(f"{path}: the log database is unreadable ({e})") from None
    except GptuiError:
        conn.close()
        raise
    return conn


def connect_memory() -> sqlite3.Connection:
    """A migrated database that lives as long as its connection: chats when nothing may be written."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    _migrate(conn, Path(":memory:"))
    return conn


def _retry_busy(step):
    """Run step, retrying while another process holds the lock. Switching a new file to WAL (and
    the first migration) can fail with "database is locked" at once, without waiting on the busy
    timeout, when several processes open the same new database together."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return step()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _version(conn: sqlite3.Connection) -> int:
    has = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
    if not has:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0


def _check_version(conn: sqlite3.Connection, path: Path) -> int:
    version = _version(conn)
    if version > SCHEMA_VERSION:
        raise GptuiError(f"{path}: the log was written by a newer gptui (schema {version}; this one reads up to "
                         f"{SCHEMA_VERSION})")
    return version


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    if _check_version(conn, path) == SCHEMA_VERSION:
        return
    # IMMEDIATE takes the write lock first, so two processes starting at once migrate once.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied REAL NOT NULL)")
        version = _check_version(conn, path)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (target, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class History:
    """The log as the app, the CLI and `serve` use it: never raises; the first failure turns it
    off and leaves one line in `warning` for the caller to show. Nothing goes through `logging`:
    with no handler configured, its last-resort handler would print the line a second time."""

    def __init__(self, path: Path | None = None, enabled: bool = True, source: str = "app") -> None:
        self.path = path or db_path()
        self.source = source
        self.warning: str | None = None
        self.conn: sqlite3.Connection | None = None
        if enabled:
            try:
                self.conn = connect(self.path)
            except GptuiError as e:
                self._off(str(e))

    @property
    def enabled(self) -> bool:
        return self.conn is not None

    def _off(self, reason: str) -> None:
        self.warning = f"{reason}; logging is off"
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
        self.conn = None

    def record(self, kind: str, prompt: str, output: str, *, model: str | None, backend: str | None,
               params=None, done=None, context: str = "", suffix: str = "", outcome: str | None = None,
               accepted: str | None = None) -> int | None:
        """Add one entry; its id, or None when logging is off."""
        if self.conn is None:
            return None
        sampling = dataclasses.asdict(params) if params is not None else None
        row = (time.time(), self.source, kind, prompt_hash(prompt, context, suffix), prompt, context, suffix, output,
               model, backend, sampling.get("seed") if sampling else None,
               json.dumps(sampling, default=list) if sampling else None,
               done.prompt_tokens if done else None, done.tokens if done else None,
               done.time_to_first_token if done else None, done.decode_tokens_per_s if done else None,
               done.reason if done else None, outcome, accepted)
        try:
            cursor = self.conn.execute(
                "INSERT INTO entries (created, source, kind, prompt_hash, prompt, context, suffix, output, model, "
                "backend, seed, sampling, prompt_tokens, tokens, ttft_s, tokens_per_s, stop_reason, outcome, accepted)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            return cursor.lastrowid
        except sqlite3.Error as e:
            self._off(f"{self.path}: cannot write the log ({e})")
            return None

    def set_outcome(self, entry: int | None, outcome: str, accepted: str | None = None) -> None:
        if self.conn is None or entry is None:
            return
        try:
            self.conn.execute("UPDATE entries SET outcome = ?, accepted = ? WHERE id = ?", (outcome, accepted, entry))
        except sqlite3.Error as e:
            self._off(f"{self.path}: cannot write the log ({e})")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def recent(path: Path, limit: int = 10, model: str | None = None, source: str | None = None) -> list[dict]:
    """The last `limit` entries (0: all) of a model and source, if given, oldest first; GptuiError
    when the file is unusable."""
    conn = connect(path, readonly=True)
    try:
        filters = [(column, value) for column, value in (("model", model), ("source", source)) if value]
        where = "WHERE " + " AND ".join(f"{column} = ?" for column, _ in filters) if filters else ""
        args = [value for _, value in filters]
        sql = f"SELECT * FROM entries {where} ORDER BY id DESC" + (" LIMIT ?" if limit else "")
        rows = conn.execute(sql, args + ([limit] if limit else [])).fetchall()
    except sqlite3.DatabaseError as e:
        raise GptuiError(f"{path}: the log database is unreadable ({e})") from None
    finally:
        conn.close()
    return [dict(r) for r in reversed(rows)]


def training_rows(path: Path) -> list[dict]:
    """Accepted completions (prompt, suffix: the code after the cursor when the model saw it,
    output: the part accepted) and kept chat answers (instruction, input, output), in
    prepare_sft's schema, oldest first."""
    conn = connect(path, readonly=True)
    try:
        rows = conn.execute(
            "SELECT id, kind, prompt, context, suffix, output, accepted, outcome FROM entries WHERE "
            "(kind = 'completion' AND outcome IN ('accepted', 'partial')) OR (kind = 'chat' AND outcome = 'kept') "
            "ORDER BY id").fetchall()
    except sqlite3.DatabaseError as e:
        raise GptuiError(f"{path}: the log database is unreadable ({e})") from None
    finally:
        conn.close()
    examples = []
    for r in rows:
        if r["kind"] == "chat":
            examples.append({"instruction": r["prompt"], "input": r["context"], "output": r["output"], "prompt": "",
                             "suffix": ""})
        else:
            examples.append({"instruction": "", "input": "", "output": r["accepted"] or r["output"],
                             "prompt": r["prompt"], "suffix": r["suffix"]})
    return [e for e in examples if e["output"].strip()]


def describe(entry: dict) -> str:
    """One entry for people: a header line, then the prompt's last line and the output."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["created"]))
    parts = [f"#{entry['id']} {when} {entry['kind']} {entry['model']} {entry['backend']} seed {entry['seed']}"]
    if entry["tokens"] is not None:
        parts.append(f"{entry['tokens']} tokens · first token {entry['ttft_s'] * 1000:.0f} ms · "
                     f"{entry['tokens_per_s']:.1f} tokens/s · stopped: {entry['stop_reason']}")
    if entry["outcome"]:
        parts.append(entry["outcome"])
    lines = [" · ".join(parts)]
    prompt_lines = entry["prompt"].rstrip("\n").splitlines() or [""]
    lines.append("  prompt: " + _short(prompt_lines[-1]))
    lines.append("  output: " + _short(entry["output"]))
    return "\n".join(lines)


def _short(text: str, width: int = 100) -> str:
    text = json.dumps(text, ensure_ascii=False)[1:-1]  # newlines and tabs visible, on one line
    return text if len(text) <= width else text[: width - 1] + "…"
