"""The gptui app: a Python editor with ghost-text completions, an instruction chat, a live speed
readout, and model/backend switching. `create_app` builds it for the CLI and for the tests.

Every generation runs in a thread worker that holds its engine's lock (one generation per
backend at a time), checks cancellation before each token, and posts its tokens as messages
in small batches; the UI redraws streaming views on a fixed tick.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Footer, Input
from textual.worker import get_current_worker

from ..core.backends import DEFAULT_BACKEND
from ..core.errors import GptuiError
from ..core.generate import DoneEvent, TokenEvent
from ..core.history import History
from ..core.sampling import SamplingParams
from ..core.tokenizer import encode
from .api_requests import fim_layout
from .buffer import Buffer
from .catalog import Catalog, Engine
from .chat import ChatPrompt, Turn, build_prompt, extract_code
from .chat_actions import ChatActions
from .chats import Chat, ChatStore
from .completion import REASONS, BlockStopper, LineStopper
from .fim import folder_supports_fim
from .ghost import Ghost
from .messages import BuildProgress, Generated, GenerationFailed, ModelFailed, ModelLoaded
from .runner import batched
from .screens.chats import ChatList
from .screens.compare import CompareScreen
from .screens.dialogs import AskPath, AskText, Confirm
from .screens.help import HelpScreen, binding_rows
from .screens.picker import ModelPicker, human_params
from .screens.settings import SettingsScreen
from .settings import Settings, load_settings, save_settings, settings_path
from .widgets.chat import Answer, ChatPane
from .widgets.editor import GhostEditor
from .widgets.inspector import Inspector
from .widgets.status import BuildBar, Readout, SpeedBar

ALTERNATIVES = 5  # top tokens recorded per step for the look-inside view
REPAINT_HZ = 12  # streaming text and numbers redraw this often: smooth to the eye, cheap for the UI


@dataclasses.dataclass
class StreamingTurn:
    """The chat answer streaming now: what was asked, about which selection, where it shows, the
    prompt it fitted into the context and the sampling it runs with."""

    instruction: str
    selection: str
    answer: Answer
    prompt: ChatPrompt
    params: SamplingParams


class GptuiApp(ChatActions, App):
    CSS_PATH = "gptui.tcss"
    TITLE = "gptui"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True),
        Binding("ctrl+s", "save", "Save", id="app.save"),
        Binding("f1", "help", "Keys", id="app.help"),
        Binding("f2", "pick_model", "Model", id="app.model"),
        Binding("f3", "settings", "Settings", id="app.settings"),
        Binding("f4", "compare", "Compare", id="app.compare"),
        Binding("f5", "toggle_inspect", "Look inside", id="app.inspect"),
        Binding("ctrl+t", "toggle_focus", "Editor/chat", id="app.focus"),
        Binding("f8", "chats", "Chats", id="app.chats"),
        Binding("ctrl+n", "new_chat", "New chat", id="app.new_chat", show=False),
    ]

    inspect: reactive[bool] = reactive(False)
    """Colour generated tokens by probability and show the look-inside panel."""

    modified: reactive[bool] = reactive(False)
    """The buffer differs from what was last read from or written to its file."""

    def __init__(self, *, text: str, buffer: Buffer, open_error: str | None,
                 model: str | None, backend: str | None, catalog: Catalog, settings: Settings,
                 config_path: Path, warnings: list[str], history: History | None = None,
                 chats: ChatStore | None = None) -> None:
        super().__init__()
        self.log_book = history or History(enabled=False)
        """Where completions and chat answers are recorded (disabled: records nothing)."""
        self.chats = chats or ChatStore(None)
        """The named chats: in the log's database, or in memory when nothing may be written there."""
        # The completion on show: its ghost, what produced it and its log entry, until the user
        # accepts, partly accepts or dismisses it.
        self._logged_ghost: dict | None = None
        self.catalog = catalog
        self.settings = settings
        self.config_path = config_path
        self.buffer = buffer  # the file the editor shows: its path, and what it held when last read or written
        self.engine: Engine | None = None
        self.fim = False  # the engine's model fills in the middle: completions see the code after the cursor
        self._text = text
        notes = [(w, "warning") for w in warnings]
        if self.log_book.warning:  # one line for the log and the chats that live in it
            notes.append((self.log_book.warning + "; chats are kept in memory until the app exits", "warning"))
        elif self.chats.warning:
            notes.append((self.chats.warning, "warning"))
        elif not self.chats.persistent:
            notes.append(("Logging is off: chats are kept in memory until the app exits", "information"))
        self._chats_warned = self.chats.warning
        self._startup_notes = notes + ([(open_error, "error")] if open_error else [])
        # The last chat opened comes back with its model, backend and sampling; the command line
        # wins over the chat, the chat over the settings file.
        self.active_chat: Chat = self.chats.last_opened() or self.chats.create(None, None, self._sampling())
        if problem := self._apply_chat_settings(self.active_chat):
            self._startup_notes.append((problem, "warning"))
        self._chat_model: tuple[str, str] | None = None  # a chat's model being loaded: on failure, the default
        if model or backend or not self.active_chat.model:
            self._first_model = (model or settings.model, backend or settings.backend or DEFAULT_BACKEND)
        else:
            self._first_model = self._chat_model = (self.active_chat.model,
                                                     self.active_chat.backend or DEFAULT_BACKEND)
        self.engine_model: str | None = None  # the loaded model as the catalog was asked for it
        self._requests = itertools.count(1)
        self.completion_request = 0  # the completion whose tokens the editor shows
        self.chat_request = 0  # the chat answer streaming now (0: none)
        self.chat_turn: StreamingTurn | None = None
        self.history: list[Turn] = self.chats.turns(self.active_chat.id)  # the active chat's turns
        self.readout = Readout()
        self.last_seed: int | None = None
        self.loading: str | None = None  # what is loading in the background, for the status line
        self._missed_completion = False  # a pause in typing came while no model was loaded
        self._dirty = False  # streaming views need a repaint on the next tick
        self._stale_answers: set[Answer] = set()  # chat answers whose Markdown is behind their text

    # ---- layout ----

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="editor-column"):
                yield GhostEditor(self._text, debounce=self.settings.debounce_ms / 1000, id="editor")
                with VerticalScroll(id="inspector-box"):
                    yield Inspector(id="inspector")
            yield ChatPane(id="chat")
        yield BuildBar(id="build")
        yield SpeedBar(id="speed")
        yield Footer()

    def on_mount(self) -> None:
        # Kept rather than queried: worker messages can still arrive while the app shuts down.
        self.editor = self.query_one("#editor", GhostEditor)
        self.chat = self.query_one("#chat", ChatPane)
        self.speed = self.query_one("#speed", SpeedBar)
        self.inspector = self.query_one("#inspector", Inspector)
        self.build = self.query_one("#build", BuildBar)
        self.set_keymap(self.settings.keys)
        for note, severity in self._startup_notes:
            self.tell(note, severity)
        self._show_title()
        self._show_chat()
        self._show_turns()
        self.query_one("#inspector-box").border_title = "Look inside"
        self.speed.show()
        self.editor.focus()
        self.set_interval(1 / REPAINT_HZ, self._repaint)
        self.load_engine(*self._first_model)

    def tell(self, message: str, severity: str = "information") -> None:
        self.notify(message, severity=severity, markup=False, timeout=6 if severity == "information" else 10)

    def _show_title(self) -> None:
        self.editor.border_title = self.buffer.name + (" ●" if self.modified else "")

    def watch_modified(self) -> None:
        self._show_title()

    def _engine_line(self) -> Text:
        s = self.settings
        line = Text()
        if self.engine is None:
            line.append(self.loading or "no model loaded", style="italic" if self.loading else "bold red")
            line.append("" if self.loading else " · F2 picks one")
            return line
        if self.loading:  # the current model serves completions until the new one is ready
            line.append(self.loading + " ", style="italic yellow")
        e = self.engine
        line.append(e.model, style="bold")
        line.append(f" ({human_params(e.params)}) · ")
        line.append(e.backend_name, style="bold cyan")
        line.append(" · FIM" if self.fim else " · FIM: no")
        seed = s.seed if s.seed is not None else self.last_seed
        line.append(f" · temperature {s.temperature} · top-k {s.top_k} · top-p {s.top_p} · "
                    f"max {s.max_tokens}/{s.chat_max_tokens} tokens · seed {seed if seed is not None else 'random'}")
        return line

    def _repaint(self) -> None:
        """Streaming views repaint together on one tick rather than once per token: every
        repaint is a compositor pass on the UI thread, time the generating thread then waits
        for the GIL."""
        self.editor.paint()
        self._settle_ghost()
        for answer in list(self._stale_answers):
            if answer.show():
                self._stale_answers.discard(answer)
        if not self._dirty:
            return
        self._dirty = False
        self.speed.readout = self.readout
        self.speed.set_engine(self._engine_line())
        if self.chat_turn is not None:
            self.chat.show_meter(self.chat_turn.prompt, self.readout.tokens)
        if self.inspect:  # its height follows its text, so it needs a layout pass
            self.inspector.refresh(layout=True)

    # ---- models ----

    @work(thread=True, exclusive=True, group="load")
    def load_engine(self, model: str | None, backend: str, remember: bool = False) -> None:
        self.call_from_thread(self._loading, model, backend)

        def progress(fraction: float | None, text: str) -> None:
            self.post_message(BuildProgress(fraction, text))

        try:
            engine = self.catalog.load(model, backend, progress)
        except GptuiError as e:
            self.post_message(ModelFailed(model, backend, str(e)))
            return
        except Exception as e:  # a broken model or backend must not take the app (and the buffer) down
            self.post_message(ModelFailed(model, backend, f"{type(e).__name__}: {e}"))
            return
        if not get_current_worker().is_cancelled:
            self.post_message(ModelLoaded(engine, model if remember else None, model))

    def _loading(self, model: str | None, backend: str) -> None:
        self.loading = f"loading {model or 'the default model'} on {backend}…"
        self.speed.set_engine(self._engine_line())

    def on_build_progress(self, message: BuildProgress) -> None:
        self.build.add_class("-active")
        self.build.report(message.fraction, message.text)

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.loading = None
        self.build.remove_class("-active")
        self._stop_generations()
        engine = message.engine
        self.engine = engine
        self.engine_model = message.requested or engine.model
        self._chat_model = None
        self.chats.set_engine(self.active_chat, self.engine_model, engine.backend_name)
        self._check_chats()
        self.fim = folder_supports_fim(engine.folder, engine.encoding)
        self.speed.set_engine(self._engine_line())
        if self._missed_completion:  # the user typed while the first model loaded
            self._missed_completion = False
            self.editor.complete_if_idle()
        self.tell(f"{engine.model} on {engine.backend_name}: ready")
        if message.remember_as is not None:
            self.settings.model = message.remember_as
            self.settings.backend = engine.backend_name
            self._save_settings()

    def on_model_failed(self, message: ModelFailed) -> None:
        self.loading = None
        self.build.remove_class("-active")
        self.speed.set_engine(self._engine_line())
        what = f"{message.model or 'default model'} on {message.backend}"
        if self._chat_model == (message.model, message.backend):  # a model the chat had is gone
            self._chat_model = None
            if self.engine is None:
                self.tell(f"This chat's model, {what}, is not available ({message.error}); using the default "
                          "model", "warning")
                self.load_engine(None, DEFAULT_BACKEND)
            else:
                self.tell(f"This chat's model, {what}, is not available ({message.error}); it goes on with "
                          f"{self.engine.model} on {self.engine.backend_name}", "warning")
                self.chats.set_engine(self.active_chat, self.engine_model, self.engine.backend_name)
            return
        kept = f"; still using {self.engine.model} on {self.engine.backend_name}" if self.engine else ""
        self.tell(f"Could not load {what}: {message.error}{kept}", "error")

    def action_pick_model(self) -> None:
        folder = self.engine.folder if self.engine else None
        backend = self.engine.backend_name if self.engine else self._first_model[1]

        def chosen(choice: tuple[str, str] | None) -> None:
            if choice:
                self.load_engine(choice[0], choice[1], remember=True)

        self.push_screen(ModelPicker(self.catalog, folder, backend), chosen)

    def _stop_generations(self) -> None:
        self.editor.drop_ghost("model switched")
        self.workers.cancel_group(self, "complete")
        self.workers.cancel_group(self, "chat")

    # ---- generation ----

    def _seed(self) -> int:
        self.last_seed = self.settings.seed if self.settings.seed is not None else random.randrange(2**31)
        return self.last_seed

    def _start_readout(self, kind: str, request: int, prompt_tokens: int) -> None:
        self.readout = Readout(kind, min(prompt_tokens, self.engine.block_size), self.engine.block_size,
                               state="waiting for first token")
        self.inspector.start(kind, request, self.engine.encoding)
        self._dirty = True

    def on_ghost_editor_completion_wanted(self, message: GhostEditor.CompletionWanted) -> None:
        if self.engine is None or self.chat_request:
            self._missed_completion = self.engine is None  # ask again once a model is loaded
            return
        if message.mid_line and not self.fim:
            return  # without the suffix, a completion would ignore the code after the cursor
        request = next(self._requests)
        self.completion_request = request
        self._settle_ghost(replaced=True)
        ghost = self.editor.start_ghost(request)
        # Encoding all of a large file is wasted work: only the window's worth is used.
        block_size = self.engine.block_size
        prefix = message.prefix[-block_size * 16 :]
        if self.fim and message.suffix.strip():  # prefix-suffix-middle, cut far from the cursor
            budget = max(block_size // 2, block_size - self.settings.max_tokens)
            ids, _ = fim_layout(self.engine.encoding, prefix, message.suffix[: block_size * 16], budget)
        else:
            ids = encode(self.engine.encoding, prefix)
        # In the middle of a line, the code after the cursor ends the line: fill up to it.
        rest_of_line = message.suffix.split("\n", 1)[0]
        stop_fn = LineStopper(rest_of_line) if message.mid_line else BlockStopper(message.line_prefix)
        params = self.settings.sampling(self.settings.max_tokens, self._seed(), tuple(self.settings.stop))
        self._logged_ghost = {"ghost": ghost, "prompt": prefix, "params": params, "entry": None, "outcome": None,
                              "suffix": message.suffix[: block_size * 16] if self.fim else "",
                              "model": self.engine.model, "backend": self.engine.backend_name}
        self._start_readout("completion", request, len(ids))
        self.run_generation("complete", request, self.engine, ids, params, stop_fn)

    def on_ghost_editor_ghost_dropped(self, message: GhostEditor.GhostDropped) -> None:
        if message.request == self.completion_request:
            self.workers.cancel_group(self, "complete")
            self.readout.state = f"stopped: {message.reason}"
            self._dirty = True

    def on_ghost_editor_token_under_cursor(self, message: GhostEditor.TokenUnderCursor) -> None:
        ghost = message.ghost
        if self.engine is not None and self.inspector.request != ghost.request:
            # A later completion may be on show: bring back the one the cursor is in.
            self.inspector.start("accepted completion", ghost.request, self.engine.encoding)
            self.inspector.tokens = [event for _, event in ghost.tokens]
        self.inspector.cursor = message.index
        self.inspector.refresh(layout=True)

    def run_generation(self, kind: str, request: int, engine: Engine, ids: list[int], params: SamplingParams,
                       stop_fn=None) -> None:
        # One exclusive group per kind: a new completion cancels the last one, not a chat answer.
        self.run_worker(lambda: self._generate(kind, request, engine, ids, params, stop_fn), thread=True,
                        exclusive=True, group=kind, name=f"{kind}-{request}")

    def _generate(self, kind: str, request: int, engine: Engine, ids: list[int], params: SamplingParams,
                  stop_fn) -> None:
        worker = get_current_worker()
        try:
            for batch in batched(engine, ids, params, lambda: worker.is_cancelled, stop_fn=stop_fn,
                                 alternatives=ALTERNATIVES):
                self.post_message(Generated(kind, request, batch))
        except Exception as e:  # a backend failing mid-stream: report it, keep the app
            self.post_message(GenerationFailed(kind, request, f"{type(e).__name__}: {e}"))

    def on_generated(self, message: Generated) -> None:
        if message.request != (self.completion_request if message.kind == "complete" else self.chat_request):
            return  # a generation that was replaced or cancelled
        for event in message.events:
            self._take(message.kind, message.request, event)
        self._dirty = True

    def _take(self, kind: str, request: int, event: TokenEvent | DoneEvent) -> None:
        if isinstance(event, TokenEvent):
            self.readout.token(event)
            self.inspector.tokens.append(event)
        else:
            self.readout.done(event)
        if kind == "complete":
            if isinstance(event, TokenEvent):
                self.editor.add_token(request, event)
            else:
                self.editor.finish_ghost(request, event)
                self._log_completion(event)
        elif self.chat_turn is not None:
            answer = self.chat_turn.answer
            if isinstance(event, TokenEvent):
                answer.add(event.text)
                self._stale_answers.add(answer)
            else:
                self._finish_chat(event)

    # ---- the log ----

    def _log_completion(self, done: DoneEvent | None) -> None:
        """Write the completion on show once it ended (with the user's verdict if already given)."""
        logged = self._logged_ghost
        if logged is None or logged["entry"] is not None:
            return
        ghost: Ghost = logged["ghost"]
        logged["entry"] = self.log_book.record(
            "completion", logged["prompt"], ghost.text, model=logged["model"], backend=logged["backend"],
            params=logged["params"], done=done, suffix=logged["suffix"], outcome=logged["outcome"],
            accepted=ghost.text[: ghost.consumed] if logged["outcome"] else None) or -1
        self._settle_ghost()

    def _settle_ghost(self, replaced: bool = False) -> None:
        """Once the ghost left the editor, record what the user did with it: accepted (all of
        it went into the buffer, by Tab or by typing it), partial, or dismissed."""
        logged = self._logged_ghost
        if logged is None or not hasattr(self, "editor"):
            return
        ghost: Ghost = logged["ghost"]
        if logged["outcome"] is None and (replaced or self.editor.ghost is not ghost):
            whole = len(ghost.text.rstrip())
            logged["outcome"] = ("dismissed" if not ghost.consumed else
                                 "accepted" if ghost.consumed >= whole else "partial")
            if logged["entry"] is not None:
                self.log_book.set_outcome(logged["entry"], logged["outcome"], ghost.text[: ghost.consumed])
        if replaced and logged["entry"] is None:  # ended without a DoneEvent reaching the UI
            self._log_completion(None)
        if logged["outcome"] is not None and logged["entry"] is not None:
            self._logged_ghost = None

    def on_unmount(self) -> None:
        self._settle_ghost(replaced=True)
        self.log_book.close()
        self.chats.close()

    def on_generation_failed(self, message: GenerationFailed) -> None:
        if message.kind == "chat" and message.request == self.chat_request:
            self._finish_chat(None)
        elif message.kind == "complete" and message.request == self.completion_request:
            self.editor.drop_ghost("failed")
        self.tell(f"Generation failed: {message.error}", "error")

    # ---- chat ----

    def on_chat_pane_ask(self, message: ChatPane.Ask) -> None:
        if self.engine is None:
            self.tell("No model loaded: pick one with F2", "warning")
            return
        self.editor.drop_ghost("chat")
        self._stop_chat()
        selection = self.editor.selected_text
        reserve = min(self.settings.chat_max_tokens, self.engine.block_size // 2)
        prompt = build_prompt(self.engine.encoding, self.history, message.instruction, selection,
                              self.engine.block_size, reserve)
        answer = self.chat.new_answer(message.instruction)
        self.chat.show_meter(prompt)
        request = next(self._requests)
        self.chat_request = request
        params = self.settings.sampling(self.settings.chat_max_tokens, self._seed())
        self.chat_turn = StreamingTurn(message.instruction, selection, answer, prompt, params)
        self._start_readout("chat", request, prompt.used)
        self.run_generation("chat", request, self.engine, prompt.ids, params)

    def _finish_chat(self, done: DoneEvent | None) -> None:
        turn = self.chat_turn
        answer = turn.answer
        if done is not None:
            answer.add(done.text)
            if done.retract:  # the repeats a "repetition" stop cut off
                answer.text = answer.text[: len(answer.text) - done.retract]
            rate = f" · {done.decode_tokens_per_s:.1f} tok/s" if done.tokens > 1 else ""
            answer.set_stats(f"{done.tokens} tokens{rate} · stopped: {REASONS.get(done.reason, done.reason)}")
        else:
            answer.set_stats("stopped")
        self._stale_answers.add(answer)
        if answer.text.strip():  # saved as it ends: a killed app loses at most the answer streaming
            kept_turn = Turn(turn.instruction, turn.selection, answer.text, answer.stats)
            self.history.append(kept_turn)
            self.chats.add_turn(self.active_chat, kept_turn)
            self._show_chat()
            self._check_chats()
        kept = done is not None and done.reason != "cancelled" and bool(answer.text.strip())
        self.log_book.record("chat", turn.instruction, answer.text, model=self.engine.model if self.engine else None,
                             backend=self.engine.backend_name if self.engine else None, params=turn.params,
                             done=done, context=turn.selection, outcome="kept" if kept else "stopped")
        self.chat.show_meter(turn.prompt, done.tokens if done else 0)
        self.chat_request = 0
        self.chat_turn = None

    def _stop_chat(self) -> None:
        """End the answer streaming now, keeping what came so far."""
        if self.chat_turn is not None:
            self.workers.cancel_group(self, "chat")
            self._finish_chat(None)

    def on_chat_pane_stop(self, message: ChatPane.Stop) -> None:
        self.workers.cancel_group(self, "chat")

    def on_chat_pane_use(self, message: ChatPane.Use) -> None:
        if message.action == "copy":
            self.copy_to_clipboard(message.text)
            self.tell("Answer copied to the clipboard")
            return
        code = extract_code(message.text)
        editor = self.editor
        start, end = editor.selection
        editor.replace(code, start, end) if start != end else editor.insert(code)
        editor.focus()
        self.tell(f"Inserted {code.count(chr(10))} lines into the editor")

    # ---- editor and files ----

    def on_text_area_changed(self, event) -> None:
        self.modified = self.buffer.modified(self.editor.text)

    def action_save(self) -> None:
        if self.buffer.path is None:
            self.push_screen(AskPath("Save as:"), lambda p: p and self._save(Path(p).expanduser(), new_name=True))
        else:
            self._save(self.buffer.path)

    def _save(self, path: Path, new_name: bool = False) -> None:
        try:
            question = self.buffer.overwrite_question(path, new_name)
        except OSError as e:
            self.tell(f"Cannot save {path}: {e.strerror or e}", "error")
            return
        if question:
            self.push_screen(Confirm(question, yes="Overwrite", no="Cancel"), lambda ok: ok and self._write(path))
        else:
            self._write(path)

    def _write(self, path: Path) -> None:
        try:
            self.buffer.write(path, self.editor.text)
        except OSError as e:
            self.tell(f"Cannot save {path}: {e.strerror or e}; the buffer is unchanged", "error")
            return
        self.modified = False
        self._show_title()
        self.tell(f"Saved {path}")

    async def action_quit(self) -> None:
        if not self.modified:
            self.exit()
            return
        name = self.buffer.path.name if self.buffer.path else "the untitled buffer"
        self.push_screen(Confirm(f"Quit without saving {name}?", yes="Quit", no="Stay"),
                         lambda ok: ok and self.exit())

    # ---- screens ----

    def action_help(self) -> None:
        areas = [("App", GptuiApp), ("Editor", GhostEditor), ("Chat", ChatPane), ("Chat input", Input),
                 ("Chat list", ChatList), ("Look inside", Inspector), ("Model picker", ModelPicker),
                 ("Settings", SettingsScreen), ("Compare", CompareScreen), ("Dialogs", Confirm),
                 ("Text prompt", AskText), ("Help", HelpScreen)]
        self.push_screen(HelpScreen(binding_rows(areas, self.settings.keys), str(self.config_path)))

    def action_settings(self) -> None:
        def saved(settings: Settings | None) -> None:
            if settings is None:
                return
            self.settings = settings
            self.editor.debounce = settings.debounce_ms / 1000
            self._save_settings()
            self.chats.set_settings(self.active_chat, self._sampling())
            self._check_chats()
            self._dirty = True

        self.push_screen(SettingsScreen(self.settings, self.config_path), saved)

    def _save_settings(self) -> None:
        try:
            save_settings(self.settings, self.config_path)
        except GptuiError as e:
            self.tell(f"Settings not saved: {e}", "error")

    def action_compare(self) -> None:
        if isinstance(self.screen, CompareScreen):
            return
        if self.engine is None:
            self.tell("No model loaded: pick one with F2", "warning")
            return
        seed = self.settings.seed if self.settings.seed is not None else 0
        params = self.settings.sampling(self.settings.max_tokens, seed)
        prefix = self.editor.get_text_range((0, 0), self.editor.cursor_location)
        self.editor.drop_ghost("compare")
        self.push_screen(CompareScreen(self.catalog, str(self.engine.folder), prefix, params, self.engine.model))

    def action_toggle_inspect(self) -> None:
        self.inspect = not self.inspect

    def watch_inspect(self, inspect: bool) -> None:
        self.set_class(inspect, "-inspect")
        self.query_one("#inspector", Inspector).refresh(layout=True)
        editor = self.query_one("#editor", GhostEditor)
        editor.inspect = inspect
        editor.refresh()

    def action_toggle_focus(self) -> None:
        if self.editor.has_focus:
            self.query_one("#chat-input", Input).focus()
        else:
            self.editor.focus()


def create_app(path: str | Path | None = None, model: str | None = None, backend: str | None = None, *,
               catalog: Catalog | None = None, config_path: Path | None = None, log: bool = True,
               db_path: Path | None = None) -> GptuiApp:
    """The one way to build the app: the CLI passes its arguments, tests pass a fake catalog.
    `log` False (`--no-log`) or `[log] enabled = false` keeps no history, and chats in memory only;
    `db_path` overrides where both go."""
    config_path = config_path or settings_path()
    settings, warnings = load_settings(config_path)
    buffer, text, error = Buffer.open(path)
    history = History(db_path, enabled=log and settings.log_enabled, source="app")
    chats = ChatStore(history.path if history.enabled else None)
    return GptuiApp(text=text, buffer=buffer, open_error=error, model=model, backend=backend,
                    catalog=catalog or Catalog(), settings=settings, config_path=config_path, warnings=warnings,
                    history=history, chats=chats)


def run_app(path: str | None = None, model: str | None = None, backend: str | None = None, log: bool = True) -> None:
    create_app(path, model, backend, log=log).run()
