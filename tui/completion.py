"""When a code completion should stop: the end of the block it started in, or a blank line; in the
middle of a line, the end of that line.

Stop strings and max tokens are handled by the sampling loop itself (SamplingParams); this is the
part that needs to read Python's layout. It is a `stop_fn` for `core.generate.generate`.
"""

from __future__ import annotations

# Lines that continue a block at the same indentation rather than starting a new statement.
CONTINUATIONS = ("else", "elif", "except", "finally", "case")

# What the status shows for each reason generation ended.
REASONS = {
    "end of block": "end of block",
    "blank line": "blank line",
    "end of line": "end of line",
    "stop": "stop string",
    "length": "max tokens",
    "eos": "end of text",
    "cancelled": "cancelled",
    "repetition": "repeated lines",
}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _continues(line: str) -> bool:
    word = line.strip().split(maxsplit=1)[0].rstrip(":") if line.strip() else ""
    return word in CONTINUATIONS


class BlockStopper:
    """stop_fn(text) -> (cut, reason) or None, for a completion typed after `line_prefix`.

    `line_prefix` is the text of the cursor's line before the cursor. The first line with code
    (the cursor's line, or the first generated line when the cursor's line is empty) sets the
    block: a later line indented less ends it, and so does one at the same indentation when the
    first line opened a block (`def f():` ... `def g():`). A blank line after some code ends the
    completion too. Blank lines before any code are kept, and so is every line inside a
    triple-quoted string (docstrings have blank and dedented lines).
    """

    def __init__(self, line_prefix: str):
        self.line_prefix = line_prefix.rsplit("\n", 1)[-1]

    def __call__(self, text: str) -> tuple[int, str] | None:
        full = self.line_prefix + text
        offset = len(self.line_prefix)  # full[i] is text[i - offset]
        base_indent = None
        opens_block = False
        position = 0  # where the current line starts in `full`
        lines = full.split("\n")
        in_string = False  # inside a triple-quoted string
        for number, line in enumerate(lines):
            complete = number < len(lines) - 1  # followed by a newline
            start = position
            position += len(line) + 1
            started_in_string = in_string
            if (line.count('"""') + line.count("'''")) % 2:
                in_string = not in_string
            if started_in_string:
                continue
            if not line.strip():
                if base_indent is not None and complete:
                    return start - 1 - offset, "blank line"  # cut before the newline ending the code
                continue
            if base_indent is None:
                base_indent = _indent(line)
                opens_block = line.split("#", 1)[0].rstrip().endswith(":")
                continue
            indent = _indent(line)
            if indent < base_indent or indent == base_indent and opens_block and not _continues(line):
                return start - 1 - offset, "end of block"
        return None


def _unbalanced(text: str) -> bool:
    """More closing brackets than opening ones."""
    return sum(text.count(c) for c in ")]}") > sum(text.count(c) for c in "([{")


class LineStopper:
    """stop_fn for a completion in the middle of a line, before `rest_of_line`: the code after the
    cursor closes the line, so the completion stops before its first newline. A model often writes
    the closing part again (`read_lines(` + `path)` before `):`): a tail that repeats the start of
    `rest_of_line` and closes a bracket the completion never opened is cut as well."""

    def __init__(self, rest_of_line: str):
        self.rest = rest_of_line.strip()

    def __call__(self, text: str) -> tuple[int, str] | None:
        cut = text.find("\n")
        if cut < 0:
            return None
        line = text[:cut]
        if _unbalanced(line):
            for k in range(min(len(line), len(self.rest)), 0, -1):
                if line.endswith(self.rest[:k]):
                    return cut - k, "end of line"
        return cut, "end of line"
