"""Ctrl-C and SIGTERM during training: finish the step, save, exit 130 or 143."""

from __future__ import annotations

import signal
import threading


class StopSignal:
    """Records the first SIGINT/SIGTERM instead of dying, so the loop can stop at a step boundary.

    A second Ctrl-C aborts at once (no checkpoint). A SIGTERM after a Ctrl-C is only noted:
    torchrun answers a Ctrl-C by sending its workers SIGTERM, and that must not cut the save short.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_first=None):
        self.signum: int | None = None
        self.on_first = on_first
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame):
        if self.signum is None:
            self.signum = signum
            if self.on_first:
                self.on_first(signum)
        elif signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number."""
        return 128 + (self.signum or 0)
