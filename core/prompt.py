"""The one instruction template: SFT trains on it and the app's chat speaks it."""

from __future__ import annotations

INSTRUCTION_HEADER = "### Instruction:\n"
INPUT_HEADER = "### Input:\n"
RESPONSE_HEADER = "### Response:\n"


def format_prompt(instruction: str, input: str = "") -> str:
    """Everything the model sees before it answers (python-codes-25k's instruction/input columns)."""
    text = INSTRUCTION_HEADER + instruction.strip() + "\n\n"
    if input and input.strip():
        text += INPUT_HEADER + input.strip() + "\n\n"
    return text + RESPONSE_HEADER


def format_example(instruction: str, input: str, output: str) -> tuple[str, str]:
    """(prompt, response) of one training example; the trainer appends <|endoftext|> after it."""
    return format_prompt(instruction, input), output.strip() + "\n"
