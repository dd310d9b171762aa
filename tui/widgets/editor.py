"""The code editor: a Python TextArea that draws a streamed completion as dim ghost text.

Textual's TextArea has a one-line `suggestion`; completions run over several lines, so this draws
its own: the first line at the cursor, the rest as extra rows that push the code below down; the
rest of the cursor's line is shifted right to follow the ghost's last line, as editors do.
The editor owns the ghost's life: typing what it shows keeps it (and the generation feeding it),
anything else drops it; the app only starts completions and feeds tokens.
"""

from __future__ import annotations

import math
from collections import deque

from rich.segment import Segment
from rich.style import Style
from textual.actions import SkipAction
from textual.binding import Binding
from textual.document._edit import Edit
from textual.message import Message
from textual.strip import Strip
from textual.timer import Timer
from textual.widgets import TextArea

from ...core.generate import DoneEvent, TokenEvent
from ..ghost import Ghost
from .inspector import probability_style


class GhostEditor(TextArea):
    """TextArea plus ghost-text completions."""

    # Accept keys are priority bindings that stand aside (check_action False) when there is no
    # ghost; the plain bindings after them on the same keys then move the cursor as usual.
    BINDINGS = [
        Binding("tab", "accept", "Accept", id="editor.accept", priority=True),
        Binding("right", "accept", "Accept", id="editor.accept_right", priority=True, show=False),
        Binding("right", "cursor_right", "Cursor right", show=False),
        Binding("ctrl+right", "accept_word", "Accept word", id="editor.accept_word", priority=True),
        Binding("ctrl+right", "cursor_word_right", "Cursor word right", show=False),
        Binding("escape", "dismiss", "Dismiss", id="editor.dismiss", priority=True),
        Binding("ctrl+g", "complete_now", "Complete now", id="editor.complete", show=False),
        Binding("ctrl+home", "document_start", "Start of file", id="editor.start", show=False),
        Binding("ctrl+end", "document_end", "End of file", id="editor.end", show=False),
    ]

    class CompletionWanted(Message):
        """The user paused after an edit: complete at the cursor, between `prefix` and `suffix`."""

        def __init__(self, prefix: str, suffix: str, line_prefix: str) -> None:
            super().__init__()
            self.prefix = prefix  # the text before the cursor
            self.suffix = suffix  # the text after it
            self.line_prefix = line_prefix  # the cursor's line before the cursor

        @property
        def mid_line(self) -> bool:
            """Code follows the cursor on its line."""
            return bool(self.suffix.split("\n", 1)[0].strip())

    class TokenUnderCursor(Message):
        """The cursor sits on text that token `index` of `ghost`'s completion put there."""

        def __init__(self, ghost: Ghost, index: int) -> None:
            super().__init__()
            self.ghost = ghost
            self.index = index

    class GhostDropped(Message):
        """The ghost went away before its generation ended: stop generating it."""

        def __init__(self, request: int, reason: str) -> None:
            super().__init__()
            self.request = request
            self.reason = reason

    def __init__(self, text: str = "", debounce: float = 0.25, **kwargs) -> None:
        super().__init__(text, language="python", theme="monokai", soft_wrap=False, tab_behavior="indent",
                         show_line_numbers=True, **kwargs)
        self.debounce = debounce  # seconds of quiet after an edit before CompletionWanted
        self.inspect = False  # colour ghost tokens by probability instead of dimming them
        self.ghost: Ghost | None = None
        self._anchor: tuple[int, int] | None = None  # where the ghost is drawn (the cursor it follows)
        self._timer: Timer | None = None
        self._edit_kinds: deque[bool] = deque()  # per edit(): did it match the ghost
        self._paint_pending = False  # the ghost grew since the last repaint
        self._rows_cache: tuple[tuple, list] | None = None  # (ghost state, rows) for render_line
        self._origin = 0  # document index where the current ghost starts
        # (document index, ghost) of the latest completion text in the buffer, until another edit
        # moves text around it: what the look-inside view can point at under the cursor.
        self._taken: tuple[int, Ghost] | None = None
        self._hide_cursor = False  # render the cursor's line without the cursor (for the text after a ghost)

    # ---- ghost lifecycle (called by the app) ----

    def start_ghost(self, request: int) -> Ghost:
        self.ghost = Ghost(request)
        self._anchor = self.cursor_location
        self._origin = self.document.get_index_from_location(self._anchor)
        self.refresh_bindings()
        return self.ghost

    def add_token(self, request: int, event: TokenEvent) -> None:
        if self.ghost is not None and self.ghost.request == request:
            shown = bool(self.ghost.visible)
            self.ghost.add(event)
            # Tokens can arrive faster than a screen refresh: repaint on the next tick instead.
            self._paint_pending = True
            if shown != bool(self.ghost.visible):
                self.refresh_bindings()

    def finish_ghost(self, request: int, done: DoneEvent) -> None:
        if self.ghost is not None and self.ghost.request == request:
            self.ghost.finish(done)
            if self.ghost.finished:
                self.ghost = None
                self.refresh_bindings()
            self.refresh()

    def drop_ghost(self, reason: str) -> None:
        ghost, self.ghost = self.ghost, None
        if ghost is None:
            return
        if ghost.done is None:
            self.post_message(self.GhostDropped(ghost.request, reason))
        self.refresh()
        self.refresh_bindings()

    def paint(self) -> None:
        """Redraw if the ghost grew; the app calls this on its repaint tick."""
        if self._paint_pending:
            self._paint_pending = False
            self.refresh()

    # ---- actions ----

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("accept", "accept_word", "dismiss"):
            # False hides the binding and lets the key fall through (Tab indents, Esc moves focus).
            return bool(self.ghost and self.ghost.visible)
        return super().check_action(action, parameters)

    def action_accept(self) -> None:
        self._accept(self.ghost.visible if self.ghost else "")

    def action_accept_word(self) -> None:
        self._accept(self.ghost.next_word() if self.ghost else "")

    def _accept(self, text: str) -> None:
        if not text:
            raise SkipAction()
        self.insert(text)  # goes through edit(), which consumes it from the ghost like typing

    def action_dismiss(self) -> None:
        if not self.ghost:
            raise SkipAction()
        self.drop_ghost("dismissed")

    def action_document_start(self) -> None:
        self.move_cursor((0, 0))

    def action_document_end(self) -> None:
        self.move_cursor(self.document.end)

    def action_complete_now(self) -> None:
        """Complete without waiting for the pause (or start over)."""
        self.drop_ghost("restarted")
        self._want_completion()

    # ---- edits ----

    def edit(self, edit: Edit):
        matched = False
        if self.ghost is not None:
            at_cursor = edit.from_location == edit.to_location == self.cursor_location == self._anchor
            matched = at_cursor and self.ghost.take(edit.text)
            if not matched:
                self.drop_ghost("typed")
        self._edit_kinds.append(matched)
        self._taken = (self._origin, self.ghost) if matched else None
        result = super().edit(edit)
        if matched:
            self._anchor = self.cursor_location
            if self.ghost is not None and self.ghost.finished:
                self.ghost = None
            self.refresh()
        return result

    def _on_text_area_changed(self, event: TextArea.Changed) -> None:
        # edit() recorded what each of its edits was; a change without a record is an undo,
        # a redo or a load, which moves text under the ghost.
        matched = self._edit_kinds.popleft() if self._edit_kinds else None
        if matched is None:
            self._taken = None
            self.drop_ghost("undo")
        elif not matched or self.ghost is None:
            self._schedule()

    def _on_text_area_selection_changed(self, event: TextArea.SelectionChanged) -> None:
        if self.ghost is not None and (not self.selection.is_empty or self.cursor_location != self._anchor):
            self.drop_ghost("cursor moved")
        if self.inspect and self._taken is not None:
            origin, ghost = self._taken
            offset = self.document.get_index_from_location(self.cursor_location) - origin
            if 0 <= offset <= ghost.consumed and ghost.consumed:
                offset = min(offset, ghost.consumed - 1)  # at the end of the text: its last token
                index = max(i for i, (start, _) in enumerate(ghost.tokens) if start <= offset)
                self.post_message(self.TokenUnderCursor(ghost, index))

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(self.debounce, self._want_completion)

    def complete_if_idle(self) -> None:
        """Ask for a completion now if the user is not typing (no pause pending)."""
        if self._timer is None:
            self._want_completion()

    def _want_completion(self) -> None:
        self._timer = None
        if self.ghost is not None or not self.selection.is_empty:
            return
        row, column = self.cursor_location
        prefix = self.get_text_range((0, 0), self.cursor_location)
        suffix = self.get_text_range(self.cursor_location, self.document.end)
        self.post_message(self.CompletionWanted(prefix, suffix, self.document.get_line(row)[:column]))

    async def _on_key(self, event) -> None:
        if event.key == "escape":
            # TextArea hands focus to the next widget on Esc; in a code editor Esc only dismisses
            # (Ctrl+T moves to the chat).
            event.stop()
            event.prevent_default()
            return
        await super()._on_key(event)

    def _on_blur(self, event) -> None:
        self.drop_ghost("focus left")

    # ---- drawing ----

    def _ghost_rows(self) -> list[list[tuple[str, Style]]]:
        """The visible ghost split into rows of (text, style) pieces.

        render_line asks once per screen row; the rows are built once per change of the ghost.
        """
        ghost = self.ghost
        if ghost is None or self.cursor_location != self._anchor:
            return []
        key = (ghost.request, len(ghost.text), ghost.consumed, ghost.done is not None, self.inspect)
        if self._rows_cache is None or self._rows_cache[0] != key:
            self._rows_cache = (key, self._build_rows(ghost))
        return self._rows_cache[1]

    def _build_rows(self, ghost: Ghost) -> list[list[tuple[str, Style]]]:
        if not ghost.visible:
            return []
        dim = self.get_component_rich_style("text-area--suggestion")
        rows: list[list[tuple[str, Style]]] = [[]]
        for text, event in ghost.spans():
            style = dim
            if self.inspect and event is not None:
                style = probability_style(math.exp(event.logprob))
            for i, part in enumerate(text.split("\n")):
                if i:
                    rows.append([])
                if part:
                    rows[-1].append((part.expandtabs(self.indent_width), style))
        return rows

    @property
    def _draw_cursor(self) -> bool:
        return not self._hide_cursor and super()._draw_cursor

    def _after_cursor(self, y: int, x: int) -> Strip:
        """Screen row y (the cursor's) from cell x on, highlighted but without the cursor on it."""
        self._hide_cursor = True
        try:
            return self._render_line(y).crop(x, self.size.width)  # uncached: the cache keeps the cursor
        finally:
            self._hide_cursor = False

    def render_line(self, y: int) -> Strip:
        rows = self._ghost_rows()
        if not rows:
            return super().render_line(y)
        cursor_x, cursor_y = self.wrapped_document.location_to_offset(self.cursor_location)
        scroll_x, scroll_y = self.scroll_offset
        row = cursor_y - scroll_y
        extra = len(rows) - 1
        if y < row:
            return super().render_line(y)
        if y > row + extra:
            return super().render_line(y - extra)
        width = self.size.width
        theme = self._theme
        base = (theme.base_style if theme and theme.base_style else None) or self.rich_style
        x = self.gutter_width + cursor_x - scroll_x
        line_row, column = self.cursor_location
        # The code after the cursor follows the ghost's last row (only when there is some: trailing
        # blanks would carry the cursor line's highlight onto another row).
        has_rest = bool(self.document.get_line(line_row)[column:].strip())
        if y == row:
            line = super().render_line(y)
            pieces = rows[0]
            if not pieces:
                if not has_rest:
                    return line  # the completion starts on the next line
                pieces = [(" ", self.get_component_rich_style("text-area--suggestion"))]  # for the cursor
            if pieces and self._draw_cursor and theme and theme.cursor_style:
                text, style = pieces[0]  # the cursor sits on the ghost's first character
                pieces = [(text[0], style + theme.cursor_style), (text[1:], style)] + pieces[1:]
            background = theme.cursor_line_style if theme and self.highlight_cursor_line else None
            ghost = Strip([Segment(t, _on(base, background, s)) for t, s in pieces])
            rest = self._after_cursor(y, x) if not extra else Strip([])
            return Strip.join([line.crop(0, x), ghost, rest]).extend_cell_length(width, base).crop(0, width)
        gutter = []
        if self.show_line_numbers:
            gutter = [Segment(" " * self.gutter_width, (theme.gutter_style if theme else None) or base)]
        text = Strip([Segment(t, _on(base, None, s)) for t, s in rows[y - row]]).crop(scroll_x, scroll_x + width)
        rest = self._after_cursor(row, x) if y == row + extra and has_rest else Strip([])
        return Strip.join([Strip(gutter), text, rest]).extend_cell_length(width, base).crop(0, width)


def _on(base: Style, background: Style | None, style: Style) -> Style:
    return base + (background or Style()) + style
