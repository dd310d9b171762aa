"""Chat history in the SFT template, fitted into the context window; code found in answers.

Each earlier turn is the SFT example it would have been (prompt, answer, <|endoftext|>), so the
model sees exactly the layout it was tuned on. When the turns do not fit, the oldest go first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import tiktoken

from ..core.prompt import format_prompt
from ..core.tokenizer import encode

_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass
class Turn:
    instruction: str
    input: str
    answer: str
    stats: str = ""  # tokens, speed and why it stopped, as the chat pane shows them


@dataclass
class ChatPrompt:
    ids: list[int]
    used: int  # prompt tokens that go to the model
    dropped_turns: int  # earlier turns left out to fit
    dropped_tokens: int  # their tokens
    window: int  # the model's context window


def build_prompt(encoding: tiktoken.Encoding, history: list[Turn], instruction: str, input: str,
                 window: int, reserve: int) -> ChatPrompt:
    """Token ids for `instruction` after as many recent turns as fit in window - reserve tokens.

    `reserve` keeps room for the answer. The new question itself is never dropped; if it alone
    is too long, the sampling loop keeps its last tokens.
    """
    question = encode(encoding, format_prompt(instruction, input))
    budget = max(0, window - reserve - len(question))
    turns = [encode(encoding, format_prompt(t.instruction, t.input) + t.answer) + [encoding.eot_token]
             for t in history]
    kept: list[list[int]] = []
    used = 0
    for ids in reversed(turns):
        if used + len(ids) > budget:
            break
        kept.insert(0, ids)
        used += len(ids)
    dropped = turns[: len(turns) - len(kept)]
    ids = [t for turn in kept for t in turn] + question
    return ChatPrompt(ids, min(len(ids), window), len(dropped), sum(map(len, dropped)), window)


def extract_code(answer: str) -> str:
    """The code in an answer: its fenced blocks joined, or the whole answer when it has none."""
    blocks = [b.strip("\n") for b in _FENCE.findall(answer)]
    blocks = [b for b in blocks if b.strip()]
    return "\n\n".join(blocks) + "\n" if blocks else answer.strip("\n") + "\n"


def as_markdown(answer: str) -> str:
    """Answers without fences are code (the model is a code model): fence them for highlighting."""
    if "```" in answer:
        return answer
    return f"```python\n{answer.rstrip()}\n```" if answer.strip() else ""
