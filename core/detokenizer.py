"""Turn a stream of token ids into a stream of text that never splits a UTF-8 character."""

from __future__ import annotations

import codecs

import tiktoken


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back only text whose bytes are complete.

    Invalid byte sequences become U+FFFD exactly as `Encoding.decode(ids)` renders them, so the
    deltas joined (plus `flush()`) always equal the decode of the whole sequence.
    """

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._decoder.decode(self.encoding.decode_single_token_bytes(token))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Holds back text that could still grow into a stop string; reports where one matched."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was hit)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
