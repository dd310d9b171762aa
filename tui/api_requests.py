"""Reading OpenAI-style (and llama.cpp /infill) request bodies into prompts and SamplingParams.

Everything here is pure: a body dict in, token ids and parameters out, or an ApiError that the
server turns into OpenAI's error JSON. Unknown fields are ignored, as OpenAI's SDKs send many
(user, presence_penalty, stream_options...); a known field of the wrong type is a 400.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import tiktoken

from ..core.errors import GptuiError
from ..core.sampling import SamplingParams
from ..core.tokenizer import encode, fim_ids, sampleable_vocab
from .chat import Turn, build_prompt

MAX_STOPS = 16
MAX_LOGPROBS = 20
# The CLI's defaults where a request leaves a field out (OpenAI's own default temperature is 1).
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
# Like the app's chat: a 12-gram never repeats within one answer (never retracts streamed text).
CHAT_NO_REPEAT_NGRAM = 12


class ApiError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(param: str, message: str, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def get_int(body: dict, name: str, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        # 3.0 from a JSON encoder is still an integer
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _bad(name, f"{name} must be an integer, got {type(value).__name__}", "invalid_type")
    return value


def get_float(body: dict, name: str, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(name, f"{name} must be a finite number, got {value!r:.40}", "invalid_type")
    return float(value)


def get_str(body: dict, name: str, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad(name, f"{name} must be a string, got {type(value).__name__}", "invalid_type")
    return value


def get_bool(body: dict, name: str, default=False):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, f"{name} must be true or false, got {type(value).__name__}", "invalid_type")
    return value


def get_stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad("stop", "stop must be a string or a list of strings", "invalid_type")
    if len(stop) > MAX_STOPS:
        raise _bad("stop", f"at most {MAX_STOPS} stop strings")
    return tuple(stop)


def default_max_tokens(block_size: int) -> int:
    return min(128, max(1, block_size // 2))


def sampling_params(body: dict, block_size: int, *, max_tokens_fields=("max_tokens",),
                    no_repeat_ngram: int = 0) -> SamplingParams:
    """The sampling fields every endpoint shares. max_tokens must leave room in the context window."""
    max_tokens, field = None, max_tokens_fields[0]
    for name in max_tokens_fields:
        if body.get(name) is not None:
            max_tokens, field = get_int(body, name), name
            break
    if max_tokens is None:
        max_tokens = default_max_tokens(block_size)
    if max_tokens == -1 and field == "n_predict":  # llama.cpp's "until the end"
        max_tokens = block_size - 1
    if max_tokens <= 0:
        raise _bad(field, f"{field} must be at least 1, got {max_tokens}")
    if max_tokens >= block_size:
        raise _bad(field, f"{field} {max_tokens} is past the model's context window of {block_size} tokens "
                          f"(at most {block_size - 1})", "context_length_exceeded")
    temperature = get_float(body, "temperature", DEFAULT_TEMPERATURE)
    if not 0 <= temperature <= 2:
        raise _bad("temperature", f"temperature must be between 0 and 2, got {temperature}")
    top_p = get_float(body, "top_p", DEFAULT_TOP_P)
    if not 0 < top_p <= 1:
        raise _bad("top_p", f"top_p must be in (0, 1], got {top_p}")
    top_k = get_int(body, "top_k", 0)
    if top_k < 0:
        raise _bad("top_k", f"top_k must be >= 0, got {top_k}")
    seed = get_int(body, "seed")
    penalty = get_float(body, "repetition_penalty", get_float(body, "repeat_penalty", 1.0))
    ngram = get_int(body, "no_repeat_ngram", no_repeat_ngram)
    repeats = get_int(body, "stop_repeats", 0)
    if get_int(body, "n", 1) != 1 or get_int(body, "best_of", 1) != 1:
        raise _bad("n", "only one choice per request (n=1) is supported", "unsupported_value")
    if get_bool(body, "echo"):
        raise _bad("echo", "echo is not supported", "unsupported_value")
    try:
        return SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, max_tokens=max_tokens,
                              stop=get_stops(body), repetition_penalty=penalty, no_repeat_ngram=ngram,
                              stop_repeats=repeats)
    except GptuiError as e:
        raise _bad(None, str(e)) from None


@dataclass
class Prompt:
    ids: list[int]
    fim: bool = False  # laid out prefix-suffix-middle
    truncated: bool = False  # FIM context cut to fit the window
    warning: str | None = None  # e.g. a suffix given to a model not trained for FIM (and ignored)
    # What the log records (core.history): the kind of answer and the text asked, as the app logs it.
    kind: str = "completion"  # or "chat"
    text: str = ""  # the code before the cursor, or the last user message
    suffix: str = ""  # the code after the cursor, when the model saw it (FIM)
    context: str = ""  # chat: the earlier messages, as JSON


def check_fits(ids: list[int], block_size: int, param: str) -> None:
    if len(ids) >= block_size:
        raise ApiError(400, f"the prompt is {len(ids)} tokens; this model's context window is {block_size} "
                            f"(at most {block_size - 1} prompt tokens)", param=param, code="context_length_exceeded")


def fim_layout(encoding: tiktoken.Encoding, prefix: str, suffix: str, budget: int) -> tuple[list[int], bool]:
    """Prefix-suffix-middle ids in at most `budget` tokens: the prefix keeps its end, the suffix its start.

    Editors send whole files; the code nearest the cursor matters most, so cut far from it. The
    suffix gets at most a quarter of the room when both do not fit (the prefix says more).
    """
    pre, mid, suf = fim_ids(encoding)
    prefix_ids, suffix_ids = encode(encoding, prefix), encode(encoding, suffix)
    room = max(0, budget - 3)
    truncated = len(prefix_ids) + len(suffix_ids) > room
    if truncated:
        keep_suffix = min(len(suffix_ids), max(room // 4, room - len(prefix_ids)))
        suffix_ids = suffix_ids[:keep_suffix]
        keep_prefix = room - len(suffix_ids)
        prefix_ids = prefix_ids[len(prefix_ids) - keep_prefix :] if keep_prefix else []
    return [pre] + prefix_ids + [suf] + suffix_ids + [mid], truncated


def fill_in_middle(encoding: tiktoken.Encoding, prefix: str, suffix: str, model: str, supports_fim: bool,
                   block_size: int, max_tokens: int) -> Prompt:
    """The prompt for text between prefix and suffix; without FIM training, the prefix alone (warned)."""
    if not supports_fim or fim_ids(encoding) is None:
        ids = encode(encoding, prefix)
        check_fits(ids, block_size, "prompt")
        return Prompt(ids, warning=f"model {model} was not trained for fill-in-the-middle; the suffix was "
                                   "ignored and the text completes the prefix only", text=prefix)
    ids, truncated = fim_layout(encoding, prefix, suffix, block_size - max_tokens)
    return Prompt(ids, fim=True, truncated=truncated, text=prefix, suffix=suffix)


def completion_prompt(body: dict, encoding: tiktoken.Encoding, model: str, supports_fim: bool, block_size: int,
                      max_tokens: int) -> Prompt:
    """/v1/completions: prompt (a string, one string in a list, or token ids) and an optional suffix."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    suffix = get_str(body, "suffix")
    if isinstance(prompt, str):
        if suffix is not None:
            return fill_in_middle(encoding, prompt, suffix, model, supports_fim, block_size, max_tokens)
        ids = encode(encoding, prompt)
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        limit = sampleable_vocab(encoding)
        if any(not 0 <= t < limit for t in prompt):
            raise _bad("prompt", f"token ids must be in [0, {limit})")
        if suffix is not None:
            raise _bad("suffix", "suffix needs a text prompt, not token ids", "unsupported_value")
        ids = list(prompt)
    elif isinstance(prompt, list):
        raise _bad("prompt", "one prompt per request: a string, or a list of token ids", "unsupported_value")
    else:
        raise _bad("prompt", f"prompt must be a string or a list of token ids, got {type(prompt).__name__}",
                   "invalid_type")
    check_fits(ids, block_size, "prompt")
    return Prompt(ids, text=prompt if isinstance(prompt, str) else encoding.decode(ids))


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{index}].content", "only text content parts are supported", "unsupported_value")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{index}].content", "content must be a string or a list of text parts", "invalid_type")


def chat_prompt(body: dict, encoding: tiktoken.Encoding, block_size: int, max_tokens: int) -> Prompt:
    """/v1/chat/completions: the turns in the instruction template the model was tuned on (as the app's chat).

    System messages are left out: the model was never tuned with one, and a small model follows
    the instruction better without a preamble it has not seen.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "messages must be a non-empty list", "invalid_type")
    turns: list[tuple[str, str]] = []  # (role, text) with system messages dropped, same roles merged
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}]", "each message must be an object", "invalid_type")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise _bad(f"messages[{i}].role", f"role must be system, developer, user or assistant, got {role!r:.40}")
        text = _content(message, i)
        if role in ("system", "developer"):
            continue
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n\n" + text)
        else:
            turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise _bad("messages", "the last message must come from the user")
    history, question = [], ""
    for role, text in turns:
        if role == "user":
            question = text
        else:
            history.append(Turn(question, "", text))
            question = ""
    prompt = build_prompt(encoding, history, turns[-1][1], "", block_size, max_tokens)
    check_fits(prompt.ids, block_size, "messages")
    earlier = json.dumps([{"role": role, "content": text} for role, text in turns[:-1]], ensure_ascii=False)
    return Prompt(prompt.ids, kind="chat", text=turns[-1][1], context=earlier if len(turns) > 1 else "")
