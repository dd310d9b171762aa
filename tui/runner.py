"""One generation runner for the editor's completions, the chat and the compare screen: it holds
the engine's lock, runs core.generate, and hands the events over in batches, so a worker thread
posts a few UI messages a second rather than one per token."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from ..core.generate import DoneEvent, TokenEvent, generate
from ..core.sampling import SamplingParams
from .catalog import Engine

BATCH_SECONDS = 0.02  # events are handed over at most this far apart


def batched(engine: Engine, ids: list[int], params: SamplingParams, should_cancel: Callable[[], bool], *,
            stop_fn=None, alternatives: int = 0,
            interval: float = BATCH_SECONDS) -> Iterator[list[TokenEvent | DoneEvent]]:
    """The events of one generation in batches: the first token alone (time to first token shows
    at once), then whatever came in each `interval`, and the DoneEvent closing the last batch.
    The previous generation on this engine stops within a token; one cancelled while waiting for
    the lock yields nothing."""
    with engine.lock:
        if should_cancel():
            return
        batch, sent = [], 0.0
        for event in generate(engine.backend, engine.encoding, ids, params, should_cancel=should_cancel,
                              stop_fn=stop_fn, alternatives=alternatives):
            batch.append(event)
            now = time.monotonic()
            if isinstance(event, DoneEvent) or event.index == 0 or now - sent >= interval:
                yield batch
                batch, sent = [], now
