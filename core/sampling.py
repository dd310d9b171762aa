"""Choosing the next token from logits. Knows nothing about models or backends."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import GptuiError


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0 means greedy (argmax)
    top_k: int = 0  # keep only the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # nucleus: smallest set whose probability reaches top_p, in (0, 1]
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the context (CTRL-style)
    # n > 0: never generate the same n tokens twice (Hugging Face's no_repeat_ngram_size), counting
    # only generated tokens: code rightly repeats the prompt's names, and the prompt is not a loop.
    no_repeat_ngram: int = 0
    # K > 0: stop ("repetition") once the same non-blank line comes K times in a row; the repeats
    # after its first copy are cut. Ends the runaway output a block cannot (lines shorter than n).
    stop_repeats: int = 0
    seed: int | None = None  # same seed, same prompt, same backend: same output
    max_tokens: int = 128  # new tokens at most
    stop: tuple[str, ...] = field(default_factory=tuple)  # generation ends before any of these

    def __post_init__(self) -> None:
        self.stop = tuple(s for s in self.stop if s)
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise GptuiError(f"temperature must be >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise GptuiError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise GptuiError(f"top-k must be >= 0, got {self.top_k}")
        if not (self.repetition_penalty > 0):
            raise GptuiError(f"repetition penalty must be > 0, got {self.repetition_penalty}")
        if self.no_repeat_ngram < 0:
            raise GptuiError(f"no-repeat n-gram size must be >= 0 (0 disables), got {self.no_repeat_ngram}")
        if self.stop_repeats < 0 or self.stop_repeats == 1:
            raise GptuiError(f"stop-repeats must be 0 (off) or >= 2, got {self.stop_repeats}")
        if self.max_tokens < 0:
            raise GptuiError(f"max tokens must be >= 0, got {self.max_tokens}")


class NgramBlock:
    """The tokens that would complete an n-gram already pushed: O(n) per token, not a rescan.

    Keeps a map from each (n-1)-token prefix seen to the tokens that followed it, so the tokens to
    forbid next are one lookup of the last n-1 tokens.
    """

    def __init__(self, n: int):
        self.n = n
        self.recent: deque[int] = deque(maxlen=n)  # the last n tokens pushed
        self.followers: dict[tuple[int, ...], set[int]] = {}

    def push(self, token: int) -> None:
        self.recent.append(token)
        if len(self.recent) == self.n:
            *prefix, last = self.recent
            self.followers.setdefault(tuple(prefix), set()).add(last)

    def banned(self) -> set[int]:
        if len(self.recent) < self.n - 1:
            return set()
        prefix = tuple(self.recent)[len(self.recent) - (self.n - 1) :]
        return self.followers.get(prefix, set())


class Sampler:
    """Stateful only in its random generator and n-gram index, so a seed fixes the whole sequence.

    Works on the device the logits live on: a GPU backend hands over GPU logits, and only the
    chosen token and its log-prob cross to the host (one synchronisation per token).
    """

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_tokens: int | None = None,
                 end_token: int | None = None):
        self.params = params
        self.vocab_size = vocab_size  # real tokens; logits beyond it are padding and never chosen
        # history[:prompt_tokens] is the prompt, which the n-gram block ignores; None: the history
        # of the first call is the prompt.
        self.prompt_tokens = prompt_tokens
        self.end_token = end_token  # never blocked: ending is always a way out of a loop
        self.block = NgramBlock(params.no_repeat_ngram) if params.no_repeat_ngram else None
        self._indexed = 0  # history tokens the block has seen (or skipped as prompt)
        self.generator: torch.Generator | None = None  # made on the logits' device at first use
        self._pinned: torch.Tensor | None = None  # page-locked host slot the chosen id is copied to
        self._copied: torch.cuda.Event | None = None  # recorded after that copy, each token

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator(device=device)
            if self.params.seed is not None:
                self.generator.manual_seed(self.params.seed)
            else:
                self.generator.seed()
        return self.generator

    def __call__(self, logits: torch.Tensor, history: list[int], alternatives: int = 0,
                 launch: Callable[[torch.Tensor], bool] | None = None):
        """(token id, its log-prob under the model, top alternatives as [(id, log-prob)]).

        launch, if given, gets the chosen id as a device tensor before the host reads it (see
        Backend.launch): on a GPU the next decode step then runs while this one is read back.
        """
        logits = logits[: self.vocab_size].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        token = self._choose(logits, history)
        pair = torch.stack([token.to(logprobs.dtype), logprobs[token]])
        if launch is not None and pair.is_cuda:
            if self._pinned is None:
                self._pinned, self._copied = torch.empty(2, dtype=pair.dtype, pin_memory=True), torch.cuda.Event()
            self._pinned.copy_(pair, non_blocking=True)
            self._copied.record()
            launch(token)  # queued behind the copy, so reading the copy does not wait for it
            self._copied.synchronize()
            pair = self._pinned
        elif launch is not None:
            launch(token)
        token_id, logprob = pair.tolist()
        top = []
        if alternatives:
            values, ids = torch.topk(logprobs, alternatives)
            top = list(zip(ids.tolist(), values.tolist()))
        return int(token_id), logprob, top

    def _choose(self, logits: torch.Tensor, history: list[int]) -> torch.Tensor:
        """The chosen token id as a 0-d tensor on the logits' device (no host sync here)."""
        p = self.params
        if self.block is not None:
            if self.prompt_tokens is None:
                self.prompt_tokens = len(history)
            for token in history[max(self._indexed, self.prompt_tokens) :]:
                self.block.push(token)
            self._indexed = len(history)
            banned = [t for t in self.block.banned() if t != self.end_token and t < self.vocab_size]
            if banned:
                logits = logits.clone()
                logits[torch.tensor(banned, dtype=torch.long, device=logits.device)] = -math.inf
        if p.repetition_penalty != 1.0 and history:
            seen = torch.tensor(sorted(set(history)), dtype=torch.long, device=logits.device)
            seen = seen[seen < self.vocab_size]
            vals = logits[seen]
            logits = logits.clone()
            logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.temperature == 0:
            return torch.argmax(logits)
        logits = logits / p.temperature
        vocab = logits.numel()
        if p.top_k and p.top_k < vocab:
            top_logits, ids = torch.topk(logits, p.top_k)  # sorted, most likely first
            probs = torch.softmax(top_logits, dim=-1)  # renormalised over the k kept
        elif p.top_p < 1.0:
            # The nucleus nearly always lies among the few hundred likeliest tokens: take those
            # with topk, and sort the whole vocabulary only when they fall short of top_p.
            full = torch.softmax(logits, dim=-1)
            probs, ids = torch.topk(full, min(256, vocab))
            if probs.sum() < p.top_p:
                probs, ids = torch.sort(full, descending=True)
        else:
            probs, ids = torch.softmax(logits, dim=-1), None
        if p.top_p < 1.0:
            keep = probs.cumsum(-1) - probs < p.top_p  # the smallest prefix reaching top_p
            probs, ids = probs[keep], ids[keep]
        choice = torch.multinomial(probs, 1, generator=self._generator(logits.device))[0]
        return choice if ids is None else ids[choice]
