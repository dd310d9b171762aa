"""The prompt shapes SFT trains on: the instruction template (the app's chat speaks it) and raw
code completion (a signature and docstring, answered by the body, as the editor and funceval ask)."""

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


def format_completion(prompt: str, output: str) -> tuple[str, str]:
    """(prompt, response) of a completion example: raw code, no template.

    The prompt is kept byte for byte (it ends where the model starts writing, usually after the
    docstring's closing line); the response keeps its leading indentation, since the body's first
    line is indented, and ends in exactly one newline.
    """
    return prompt, output.rstrip() + "\n"


def format_example(instruction: str, input: str, output: str, prompt: str = "") -> tuple[str, str]:
    """(prompt, response) of one training example; the trainer appends <|endoftext|> after it.

    A row with a raw `prompt` is a completion example; otherwise the instruction template is used.
    """
    if prompt and prompt.strip():
        return format_completion(prompt, output)
    return format_prompt(instruction, input), output.strip() + "\n"
