"""The sampling loop, written once above every backend: prefill, then one token per step.

It owns the context window: a prompt longer than the window keeps its last tokens, and
generation that reaches the end of the window slides it (re-prefilling the newest tokens).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import tiktoken
import torch

from .backends.base import Backend
from .detokenizer import IncrementalDetokenizer, RepeatedLines, StopMatcher
from .sampling import Sampler, SamplingParams
from .tokenizer import sampleable_vocab


@dataclass
class TokenEvent:
    """One generated token."""

    text: str  # text this token completes ("" while UTF-8 bytes or a possible stop string are held)
    token_id: int
    logprob: float  # natural log-probability the model gave this token
    index: int  # 0 for the first generated token
    elapsed: float  # seconds since generation started
    top: list[tuple[int, float]] = field(default_factory=list)  # most likely alternatives, if asked


@dataclass
class DoneEvent:
    """The end of a generation, with its timings."""

    text: str  # any held-back text released at the end
    reason: str  # "length", "stop", "eos", "cancelled", "repetition" (params.stop_repeats), or a stop_fn's reason
    prompt_tokens: int  # after left truncation
    dropped_prompt_tokens: int  # cut from the left to fit the window
    tokens: int  # generated tokens
    time_to_first_token: float  # seconds: prefill plus the first sample
    decode_tokens_per_s: float  # tokens after the first, over the time they took
    total_time: float
    retract: int = 0  # characters already streamed that a stop_fn cut off; consumers drop them

    def answer(self, streamed: str) -> str:
        """The whole answer, given the text streamed before this event: less what was retracted,
        plus what was held back until the end."""
        return streamed[: len(streamed) - self.retract] + self.text


class ContextWindow:
    """Feeds a backend token by token and slides the window when it is full."""

    def __init__(self, backend: Backend, slide: int | None = None):
        self.backend = backend
        self.block_size = backend.block_size
        # How far to slide at once: re-prefilling costs a forward over the kept tokens, so
        # slide by an eighth of the window rather than one token per step.
        self.slide = slide or max(1, self.block_size // 8)
        self.ids: list[int] = []  # the tokens the backend's cache currently holds

    def start(self, prompt: list[int]) -> torch.Tensor:
        self.ids = list(prompt[-self.block_size :])
        return self.backend.prefill(self.ids)

    def launch(self, token: torch.Tensor) -> bool:
        """Queue the decode of a token still on the device, unless pushing it will slide the window."""
        return len(self.ids) < self.block_size and self.backend.launch(token)

    def push(self, token: int) -> torch.Tensor:
        if len(self.ids) >= self.block_size:
            self.ids = self.ids[self.slide :] + [token]
            return self.backend.prefill(self.ids)
        self.ids.append(token)
        return self.backend.decode(token)


def generate(
    backend: Backend,
    encoding: tiktoken.Encoding,
    prompt: list[int],
    params: SamplingParams,
    should_cancel: Callable[[], bool] | None = None,
    stop_fn: Callable[[str], tuple[int, str] | None] | None = None,
    alternatives: int = 0,
    stop_at_eos: bool = True,
) -> Iterator[TokenEvent | DoneEvent]:
    """Stream TokenEvents, then exactly one DoneEvent.

    stop_fn sees all text generated so far and may return (cut, reason): the output ends at
    character `cut` and generation stops with that reason; text already streamed past the cut
    is reported in DoneEvent.retract.
    """
    if not prompt:
        prompt = [encoding.eot_token]  # an empty prompt means "start of a document"
    start = time.perf_counter()
    window = ContextWindow(backend)
    dropped = max(0, len(prompt) - (backend.block_size - 1))
    sampler = Sampler(params, sampleable_vocab(encoding), prompt_tokens=len(prompt), end_token=encoding.eot_token)
    repeats = RepeatedLines(params.stop_repeats) if params.stop_repeats else None
    detok = IncrementalDetokenizer(encoding)
    stops = StopMatcher(params.stop)
    history = list(prompt)
    text = ""
    first_time = None
    reason = "length"
    retract = 0
    n = 0
    if params.max_tokens > 0:
        logits = window.start(prompt[dropped:])
        while True:
            if should_cancel is not None and should_cancel():
                reason = "cancelled"
                break
            launch = window.launch if n + 1 < params.max_tokens else None  # another step may follow
            token, logprob, top = sampler(logits, history, alternatives, launch)
            now = time.perf_counter()
            first_time = first_time or now
            if stop_at_eos and token == encoding.eot_token:
                reason = "eos"
                break
            history.append(token)
            delta, hit = stops.push(detok.feed(token))
            n += 1
            if stop_fn is not None:
                cut = stop_fn(text + delta)
                if cut is not None:
                    retract = max(0, len(text) - cut[0])
                    delta = (text + delta)[len(text) : max(cut[0], len(text))]
                    hit, reason = True, cut[1]
            if repeats is not None and not hit:
                cut = repeats.check(text + delta)
                if cut is not None:
                    retract = max(0, len(text) - cut)
                    delta = (text + delta)[len(text) : max(cut, len(text))]
                    hit, reason = True, "repetition"
            text += delta
            yield TokenEvent(delta, token, logprob, n - 1, now - start, top)
            if hit:
                reason = reason if reason != "length" else "stop"
                break
            if n >= params.max_tokens:
                break
            logits = window.push(token)
    tail = ""
    if reason in ("length", "eos", "cancelled"):
        tail, _ = stops.push(detok.flush())
        tail += stops.flush()
    end = time.perf_counter()
    ttft = (first_time - start) if first_time else end - start
    rate = (n - 1) / (end - first_time) if first_time and n > 1 and end > first_time else 0.0
    yield DoneEvent(tail, reason, len(prompt) - dropped, dropped, n, ttft, rate, end - start, retract)
