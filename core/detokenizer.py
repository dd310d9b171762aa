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


class RepeatedLines:
    """Finds a run of `times` identical copies of the same 1..`max_lines` non-blank lines in a growing text.

    Greedy decoding loops in cycles of a line or a few (`if a: return x` / `if b: return x` / ...).
    Blank lines neither count nor break a cycle. Each call scans only the lines completed since
    the last one and compares at most times * max_lines**2 lines per new line.
    """

    def __init__(self, times: int, max_lines: int = 4):
        self.times = times
        self.max_lines = max_lines
        self.scanned = 0  # text[:scanned] has been split into complete lines
        self.lines: list[str] = []  # the last times * max_lines non-blank complete lines
        self.ends: list[int] = []  # where each of them ends in the text, after its newline

    def check(self, text: str) -> int | None:
        """Where to cut `text` (after the cycle's first copy) once it has come `times` times in a row, else None."""
        while (end := text.find("\n", self.scanned)) >= 0:
            line = text[self.scanned : end]
            self.scanned = end + 1
            if not line.strip():
                continue
            self.lines.append(line)
            self.ends.append(end + 1)
            keep = self.times * self.max_lines
            if len(self.lines) > keep:
                del self.lines[:-keep], self.ends[:-keep]
            for period in range(1, self.max_lines + 1):
                span = self.times * period
                tail = self.lines[-span:]
                if len(tail) == span and all(tail[i] == tail[i + period] for i in range(span - period)):
                    return self.ends[-span + period - 1]
        return None
