"""`gptui` without the app: complete one prompt and write plain text (or JSONL) to stdout."""

from __future__ import annotations

import dataclasses
import json
from typing import TextIO

from ..core.errors import GptuiError
from ..core.generate import DoneEvent, generate
from ..core.prompt import format_prompt
from ..core.registry import open_for_generation
from ..core.sampling import SamplingParams
from ..core.tokenizer import encode


def read_prompt(argument: str | None, stdin: TextIO | None) -> str:
    """stdin (when piped) first, then the argument. Rejects empty and binary input."""
    parts = []
    if stdin is not None:
        data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode()
        if b"\x00" in data:
            raise GptuiError("stdin looks binary (it contains NUL bytes); pipe text")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GptuiError(f"stdin is not UTF-8 text (byte {e.start}); pipe text") from None
        if text:
            parts.append(text)
    if argument:
        if parts and not parts[0].endswith("\n"):
            parts[0] += "\n"
        parts.append(argument)
    prompt = "".join(parts)
    if not prompt.strip():
        raise GptuiError("empty prompt: pass text as an argument or on stdin")
    return prompt


def stats_line(done: DoneEvent, backend: str) -> str:
    dropped = f" ({done.dropped_prompt_tokens} dropped)" if done.dropped_prompt_tokens else ""
    return (
        f"{backend}: prompt {done.prompt_tokens} tokens{dropped} · first token {done.time_to_first_token * 1000:.0f} ms"
        f" · {done.tokens} tokens · {done.decode_tokens_per_s:.1f} tokens/s · stopped: {done.reason}"
    )


def run_filter(
    prompt: str,
    model: str | None,
    backend_name: str,
    params: SamplingParams,
    out: TextIO,
    err: TextIO,
    fmt: str = "text",
    stats: bool = False,
    instruct: bool = False,
    history=None,
) -> DoneEvent:
    """`history` (a core.history.History): where the finished generation is logged, if anywhere."""
    folder, encoding, backend, _ = open_for_generation(model, backend_name)
    asked = prompt
    if instruct:
        prompt = format_prompt(prompt)
    ids = encode(encoding, prompt)
    done = None
    pieces = []
    for event in generate(backend, encoding, ids, params):
        if isinstance(event, DoneEvent):
            done = event
            if fmt == "jsonl":
                out.write(json.dumps({"done": True, **dataclasses.asdict(event)}) + "\n")
            else:
                out.write(event.text)
            out.flush()
            continue
        pieces.append(event.text)
        if fmt == "jsonl":
            out.write(json.dumps({"text": event.text, "token": event.token_id, "logprob": event.logprob,
                                  "index": event.index, "time": event.elapsed}) + "\n")
        else:
            out.write(event.text)
        out.flush()
    if stats and done is not None:
        err.write(stats_line(done, backend.name) + "\n")
    if history is not None and done is not None:
        history.record("chat" if instruct else "completion", asked, done.answer("".join(pieces)), model=folder.name,
                       backend=backend.name, params=params, done=done)
        if history.warning:
            err.write(f"warning: {history.warning}\n")
    return done
