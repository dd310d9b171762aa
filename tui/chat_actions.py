"""The app's named chats: new, switch, rename, delete and export, and bringing a chat's model,
backend and sampling back (a mixin of GptuiApp; the store is tui/chats.py, the list screen
tui/screens/chats.py)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ..core.atomic import write_bytes_atomic
from ..core.backends import DEFAULT_BACKEND
from ..core.errors import GptuiError
from .chats import SAMPLING, Chat, has_default_name, to_markdown
from .screens.chats import ChatList
from .screens.dialogs import AskPath, AskText, Confirm


class ChatActions:
    """Needs from the app: chats, active_chat, history, settings, engine, engine_model, loading,
    chat (the pane), load_engine, tell, push_screen and _stop_chat."""

    def _sampling(self) -> dict:
        return {name: getattr(self.settings, name) for name in SAMPLING}

    def _apply_chat_settings(self, chat: Chat) -> str | None:
        """Use the chat's sampling settings; a problem with them, in one line, when they cannot be used."""
        try:
            settings = dataclasses.replace(self.settings, **chat.settings)
            settings.validate()
        except (GptuiError, TypeError, ValueError) as e:
            return f"Chat {chat.name!r} has unusable settings ({e}); using the current ones"
        self.settings = settings
        return None

    def _show_chat(self) -> None:
        name = self.active_chat.name
        self.chat.border_title = name if has_default_name(self.active_chat) else f"Chat · {name}"

    def _check_chats(self) -> None:
        """Say once that the chats moved to memory after a write failed."""
        if self.chats.warning != self._chats_warned:
            self._chats_warned = self.chats.warning
            self.tell(self.chats.warning, "warning")

    def _show_turns(self) -> None:
        for turn in self.history:
            self._stale_answers.add(self.chat.new_answer(turn.instruction, turn.answer, turn.stats))

    def _open_chat(self, chat: Chat) -> None:
        """Make `chat` the active one: its turns, its settings, and its model once loaded."""
        self._stop_chat()
        self.active_chat = chat
        self.chats.opened(chat)
        if problem := self._apply_chat_settings(chat):
            self.tell(problem, "warning")
        self.history = self.chats.turns(chat.id)
        self._stale_answers.clear()
        self.chat.clear()
        self._show_turns()
        self._show_chat()
        current = (self.engine_model, self.engine.backend_name) if self.engine else None
        if chat.model and ((chat.model, chat.backend or DEFAULT_BACKEND) != current or self.loading):
            self._chat_model = (chat.model, chat.backend or DEFAULT_BACKEND)
            self.load_engine(*self._chat_model)
        elif self.engine is not None and not chat.model:
            self.chats.set_engine(chat, self.engine_model, self.engine.backend_name)
        self._check_chats()
        self._dirty = True

    def action_new_chat(self) -> None:
        """A new chat with the model, backend and settings in use now."""
        backend = self.engine.backend_name if self.engine else None
        self._open_chat(self.chats.create(self.engine_model, backend, self._sampling()))
        self.tell(f"New chat: {self.active_chat.name}")

    def action_chats(self) -> None:
        if isinstance(self.screen, ChatList):
            return
        self.push_screen(ChatList(self.chats.chats(), self.active_chat.id, self.chats.persistent), self._chat_chosen)

    def _chat_chosen(self, choice: tuple[str, int | None] | None) -> None:
        if choice is None:
            return
        action, chat_id = choice
        if action == "new":
            self.action_new_chat()
            return
        chat = self.active_chat if chat_id == self.active_chat.id else self.chats.get(chat_id)
        if chat is None:  # deleted by another gptui meanwhile
            self.action_chats()
        elif action == "switch":
            if chat is not self.active_chat:
                self._open_chat(chat)
        elif action == "rename":
            self.push_screen(AskText("Rename the chat:", chat.name, placeholder="chat name",
                                     hint="Enter to rename, Esc to cancel"), lambda name: self._rename(chat, name))
        elif action == "delete":
            turns = f"its {chat.turns} turn{'s' if chat.turns != 1 else ''}" if chat.turns else "it"
            self.push_screen(Confirm(f"Delete the chat {chat.name!r} and {turns}?", yes="Delete", no="Keep"),
                             lambda ok: self._delete(chat) if ok else self.action_chats())
        elif action == "export":
            self.push_screen(AskPath("Export the chat to Markdown:", _file_name(chat.name) + ".md",
                                     placeholder="chat.md", hint="Enter to write, Esc to cancel"),
                             lambda path: path and self._export(chat, Path(path).expanduser()))

    def _rename(self, chat: Chat, name: str | None) -> None:
        if name:
            self.chats.rename(chat, name)
            self._show_chat()
            self._check_chats()
        self.action_chats()

    def _delete(self, chat: Chat) -> None:
        if chat is self.active_chat:
            self._stop_chat()
        self.chats.delete(chat)
        if chat is self.active_chat:
            following = self.chats.last_opened()
            if following is None:
                backend = self.engine.backend_name if self.engine else None
                following = self.chats.create(self.engine_model, backend, self._sampling())
            self._open_chat(following)
        self.tell(f"Deleted the chat {chat.name!r}")
        self.action_chats()

    def _export(self, chat: Chat, path: Path) -> None:
        """Asks before replacing a file, as saving the buffer under a new name does."""
        turns = self.history if chat is self.active_chat else self.chats.turns(chat.id)
        text = to_markdown(chat, turns)

        def write(ok: bool = True) -> None:
            if not ok:
                return
            try:
                write_bytes_atomic(path, text.encode("utf-8"))
            except OSError as e:
                self.tell(f"Cannot export to {path}: {e.strerror or e}", "error")
                return
            self.tell(f"Exported {chat.name!r} to {path}")

        if path.exists():
            self.push_screen(Confirm(f"{path} already exists. Overwrite it?", yes="Overwrite", no="Cancel"), write)
        else:
            write()


def _file_name(name: str) -> str:
    """A chat name as a file name: letters, digits, dots and dashes."""
    return re.sub(r"[^\w.-]+", "-", name).strip("-.")[:60] or "chat"
