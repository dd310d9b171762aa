"""The HTTP API of `gptui serve`: OpenAI's /v1/models, /v1/completions, /v1/chat/completions and
llama.cpp's /infill, as a Starlette (ASGI) app over one model on one backend.

A backend holds one KV cache, so generations run one at a time on a single worker thread; the
requests waiting for it form a bounded queue (429 when full). Tokens cross from that thread to
the event loop through an asyncio queue; a client that disconnects sets its cancel flag, which the
sampling loop reads before every token. That thread also logs each answer (core.history, source
`serve`) once its end is handed to the event loop, so no request waits on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import tiktoken
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..core.backends.base import Backend
from ..core.generate import DoneEvent, TokenEvent, generate
from ..core.history import History
from ..core.registry import open_for_generation
from ..core.sampling import SamplingParams
from .api_requests import (
    CHAT_NO_REPEAT_NGRAM,
    MAX_LOGPROBS,
    ApiError,
    Prompt,
    chat_prompt,
    completion_prompt,
    fill_in_middle,
    get_bool,
    get_int,
    get_str,
    sampling_params,
)
from .fim import supports_fim

log = logging.getLogger("gptui.serve")

MAX_BODY_BYTES = 8 * 2**20  # a whole source file and then some
DEFAULT_QUEUE = 16  # requests that may wait behind the running one before new ones get 429


@dataclass
class ServedModel:
    name: str  # the id clients send as "model"
    backend: Backend
    encoding: tiktoken.Encoding
    supports_fim: bool  # trained with FIM and its tokenizer has the sentinels
    created: int  # unix time of its config.json, for /v1/models

    @property
    def block_size(self) -> int:
        return self.backend.block_size

    @classmethod
    def load(cls, model: str | None, backend_name: str) -> ServedModel:
        folder, encoding, backend, meta = open_for_generation(model, backend_name)
        return cls(folder.name, backend, encoding, supports_fim(meta, encoding), int((folder / "config.json").stat().st_mtime))

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "gptui",
                "context_length": self.block_size, "backend": self.backend.name, "encoding": self.encoding.name,
                "fim": self.supports_fim}


class Engine:
    """One generation at a time on one backend, with at most `queue_size` requests waiting.

    With a `history`, every generation that ends (cancelled ones too) is logged; a write that
    fails turns logging off and hands its one line to `warn`. The engine closes the history.
    """

    def __init__(self, model: ServedModel, queue_size: int = DEFAULT_QUEUE, history: History | None = None,
                 warn: Callable[[str], None] = log.warning):
        self.model = model
        self.limit = 1 + max(0, queue_size)
        self.pending = 0  # admitted and not finished (running or queued); touched on the event loop only
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptui-generate")
        self.last_done: DoneEvent | None = None  # the most recent generation's end (tests, logs)
        self.history, self.warn = history, warn
        self.closed = False

    def admit(self) -> None:
        if self.closed:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
        if self.pending >= self.limit:
            raise ApiError(429, f"the server is busy ({self.pending} requests running or queued, at most "
                                f"{self.limit}); retry shortly", type="rate_limit_error", code="queue_full")
        self.pending += 1

    def _release(self) -> None:
        self.pending -= 1

    def submit(self, prompt: Prompt, params: SamplingParams, cancel: threading.Event,
               alternatives: int = 0) -> AsyncIterator[TokenEvent | DoneEvent | float]:
        """Admit a generation (or raise 429) and queue it now; iterate the result for its events.

        The events are the time the generation started (a float), its TokenEvents, then one
        DoneEvent. Leaving the iteration early (a disconnect) cancels the generation; the slot is
        freed when the worker thread is done with it, whether or not anyone iterates.
        """
        self.admit()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under a forced shutdown
                loop.call_soon_threadsafe(events.put_nowait, item)

        released = False

        def release_then_put(item) -> None:
            # One callback, so the slot is free before the client can see the end of its answer
            # and send its next request.
            self._release()
            events.put_nowait(item)

        def work() -> None:
            nonlocal released
            pieces = []
            try:
                put(time.perf_counter())
                for event in generate(self.model.backend, self.model.encoding, prompt.ids, params,
                                      should_cancel=cancel.is_set, alternatives=alternatives):
                    if isinstance(event, DoneEvent):  # the last event: the backend is done with
                        self.last_done, released = event, True
                        with contextlib.suppress(RuntimeError):
                            loop.call_soon_threadsafe(release_then_put, event)
                        self._record(prompt, params, pieces, event)  # the answer's end is on its way
                    else:
                        pieces.append(event.text)
                        put(event)
            except Exception as e:  # a bug, not bad input: the request gets a 500, the server goes on
                log.exception("generation failed")
                put(e)
            finally:
                if not released:
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(self._release)

        try:
            loop.run_in_executor(self.executor, work)
        except RuntimeError:  # executor shut down
            self._release()
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down") from None
        return self._events(events, cancel)

    def _record(self, prompt: Prompt, params: SamplingParams, pieces: list[str], done: DoneEvent) -> None:
        if self.history is None or not self.history.enabled:
            return
        self.history.record(prompt.kind, prompt.text, done.answer("".join(pieces)), model=self.model.name, backend=self.model.backend.name,
                            params=params, done=done, context=prompt.context, suffix=prompt.suffix)
        if not self.history.enabled:  # this write failed: logging is off from now on
            self.warn(self.history.warning)

    @staticmethod
    async def _events(events: asyncio.Queue, cancel: threading.Event):
        try:
            while True:
                item = await events.get()
                if isinstance(item, Exception):
                    raise ApiError(500, f"generation failed: {item}", type="server_error", code="internal_error")
                yield item
                if isinstance(item, DoneEvent):
                    return
        finally:
            cancel.set()  # a no-op after the DoneEvent; otherwise the consumer left early

    def close(self) -> None:
        self.closed = True
        self.executor.shutdown(wait=True, cancel_futures=False)
        if self.history is not None:
            self.history.close()


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set cancel when the client goes away (the ASGI server reports http.disconnect)."""
    while not cancel.is_set():
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


FINISH = {"length": "length", "cancelled": "stop"}  # everything else (eos, stop, repetition) is "stop"


@dataclass
class Outcome:
    text: str
    done: DoneEvent
    tokens: list[TokenEvent]
    queued: float  # seconds between admission and the start of generation


def _usage(done: DoneEvent) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.tokens,
            "total_tokens": done.prompt_tokens + done.tokens}


def _timings(done: DoneEvent, queued: float) -> dict:
    return {"time_to_first_token_ms": round(done.time_to_first_token * 1000, 2),
            "tokens_per_second": round(done.decode_tokens_per_s, 2),
            "generation_ms": round(done.total_time * 1000, 2), "queued_ms": round(queued * 1000, 2)}


class Api:
    """The routes, bound to one Engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.model = engine.model

    # ---- shared plumbing -------------------------------------------------------------------
    async def body(self, request: Request) -> dict:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise ApiError(400, f"could not parse the JSON body ({e})", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the JSON body must be an object", code="invalid_json")
        return body

    def check_model(self, body: dict, required: bool = True) -> None:
        name = get_str(body, "model")
        if name is None:
            if required:
                raise ApiError(400, "you must provide a model parameter", param="model", code="missing_model")
            return
        if name != self.model.name:
            raise ApiError(404, f"the model {name!r} does not exist; this server has {self.model.name!r}",
                           param="model", code="model_not_found")

    def token_text(self, token: int) -> str:
        return self.model.encoding.decode_single_token_bytes(token).decode("utf-8", errors="replace")

    async def collect(self, request: Request, prompt: Prompt, params: SamplingParams, alternatives: int) -> Outcome:
        cancel = threading.Event()
        admitted = time.perf_counter()
        events = self.engine.submit(prompt, params, cancel, alternatives)
        watcher = asyncio.ensure_future(_watch_disconnect(request, cancel))
        parts, tokens, started = [], [], admitted
        try:
            async for event in events:
                if isinstance(event, float):
                    started = event
                elif isinstance(event, TokenEvent):
                    parts.append(event.text)
                    tokens.append(event)
                else:
                    return Outcome(event.answer("".join(parts)), event, tokens, max(0.0, started - admitted))
        finally:
            watcher.cancel()
            await events.aclose()  # sets cancel if we left before the end (the request task was cancelled)
        raise AssertionError("generation ended without a DoneEvent")

    def stream(self, request: Request, prompt: Prompt, params: SamplingParams, alternatives: int,
               chunk, final) -> StreamingResponse:
        """Server-sent events: chunk(event) per token with text, final(done, queued) at the end, then [DONE]."""
        cancel = threading.Event()
        admitted = time.perf_counter()
        events = self.engine.submit(prompt, params, cancel, alternatives)  # 429 here, before any byte

        async def body():
            watcher = asyncio.ensure_future(_watch_disconnect(request, cancel))
            started = admitted
            try:
                async for event in events:
                    if isinstance(event, float):
                        started = event
                    elif isinstance(event, TokenEvent):
                        if event.text or alternatives:
                            yield _sse(chunk(event))
                    else:
                        yield _sse(final(event, max(0.0, started - admitted)))
                yield "data: [DONE]\n\n"
            except ApiError as e:
                yield _sse(e.body())
            finally:
                watcher.cancel()
                cancel.set()
                await events.aclose()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if prompt.warning:
            headers["X-Gptui-Warning"] = prompt.warning
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    # ---- routes ----------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self.model.card()]})

    async def model_card(self, request: Request) -> Response:
        if request.path_params["name"] != self.model.name:
            raise ApiError(404, f"the model {request.path_params['name']!r} does not exist", param="model",
                           code="model_not_found")
        return JSONResponse(self.model.card())

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model.name, "pending": self.engine.pending})

    async def completions(self, request: Request) -> Response:
        body = await self.body(request)
        self.check_model(body)
        params = sampling_params(body, self.model.block_size)
        logprobs = get_int(body, "logprobs")
        if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
            raise ApiError(400, f"logprobs must be between 0 and {MAX_LOGPROBS}", param="logprobs",
                           code="invalid_value")
        prompt = completion_prompt(body, self.model.encoding, self.model.name, self.model.supports_fim,
                                   self.model.block_size, params.max_tokens)
        stream = get_bool(body, "stream")
        alternatives = logprobs or 0
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def envelope(choice: dict) -> dict:
            return {"id": ident, "object": "text_completion", "created": created, "model": self.model.name,
                    "choices": [{"index": 0, **choice}]}

        def token_logprobs(tokens: list[TokenEvent], offset: int = 0) -> dict:
            texts = [self.token_text(t.token_id) for t in tokens]
            starts, at = [], offset
            for text in texts:
                starts.append(at)
                at += len(text)
            return {"tokens": texts, "token_logprobs": [t.logprob for t in tokens],
                    "top_logprobs": [{self.token_text(i): lp for i, lp in t.top} for t in tokens],
                    "text_offset": starts}

        if stream:
            def chunk(event: TokenEvent) -> dict:
                lp = token_logprobs([event]) if logprobs is not None else None
                return envelope({"text": event.text, "logprobs": lp, "finish_reason": None})

            def final(done: DoneEvent, queued: float) -> dict:
                out = envelope({"text": done.text, "logprobs": None, "finish_reason": FINISH.get(done.reason, "stop")})
                out.update(usage=_usage(done), timings=_timings(done, queued))
                if prompt.warning:
                    out["warning"] = prompt.warning
                return out

            return self.stream(request, prompt, params, alternatives, chunk, final)
        result = await self.collect(request, prompt, params, alternatives)
        out = envelope({"text": result.text, "finish_reason": FINISH.get(result.done.reason, "stop"),
                        "logprobs": token_logprobs(result.tokens) if logprobs is not None else None})
        out.update(usage=_usage(result.done), timings=_timings(result.done, result.queued))
        if prompt.warning:
            out["warning"] = prompt.warning
        return JSONResponse(out)

    async def chat_completions(self, request: Request) -> Response:
        body = await self.body(request)
        self.check_model(body)
        params = sampling_params(body, self.model.block_size, max_tokens_fields=("max_completion_tokens", "max_tokens"),
                                 no_repeat_ngram=CHAT_NO_REPEAT_NGRAM)
        want_logprobs = get_bool(body, "logprobs")
        top = get_int(body, "top_logprobs", 0)
        if not 0 <= top <= MAX_LOGPROBS or top and not want_logprobs:
            raise ApiError(400, f"top_logprobs must be between 0 and {MAX_LOGPROBS}, with logprobs true",
                           param="top_logprobs", code="invalid_value")
        prompt = chat_prompt(body, self.model.encoding, self.model.block_size, params.max_tokens)
        stream = get_bool(body, "stream")
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def envelope(choice: dict, kind: str) -> dict:
            return {"id": ident, "object": kind, "created": created, "model": self.model.name,
                    "system_fingerprint": None, "choices": [{"index": 0, **choice}]}

        def content_logprobs(tokens: list[TokenEvent]) -> dict:
            def entry(token: int, logprob: float) -> dict:
                raw = self.model.encoding.decode_single_token_bytes(token)
                return {"token": self.token_text(token), "logprob": logprob, "bytes": list(raw)}
            return {"content": [{**entry(t.token_id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
                                for t in tokens]}

        if stream:
            sent_role = False

            def chunk(event: TokenEvent) -> dict:
                nonlocal sent_role
                delta = {"content": event.text}
                if not sent_role:
                    delta, sent_role = {"role": "assistant", **delta}, True
                lp = content_logprobs([event]) if want_logprobs else None
                return envelope({"delta": delta, "logprobs": lp, "finish_reason": None}, "chat.completion.chunk")

            def final(done: DoneEvent, queued: float) -> dict:
                delta = {"content": done.text} if done.text else {}
                if not sent_role:
                    delta = {"role": "assistant", "content": done.text}
                out = envelope({"delta": delta, "logprobs": None, "finish_reason": FINISH.get(done.reason, "stop")},
                               "chat.completion.chunk")
                out.update(usage=_usage(done), timings=_timings(done, queued))
                return out

            return self.stream(request, prompt, params, top, chunk, final)
        result = await self.collect(request, prompt, params, top)
        out = envelope({"message": {"role": "assistant", "content": result.text},
                        "logprobs": content_logprobs(result.tokens) if want_logprobs else None,
                        "finish_reason": FINISH.get(result.done.reason, "stop")}, "chat.completion")
        out.update(usage=_usage(result.done), timings=_timings(result.done, result.queued))
        return JSONResponse(out)

    async def infill(self, request: Request) -> Response:
        """llama.cpp's /infill: input_prefix + prompt before the cursor, input_suffix after it."""
        body = await self.body(request)
        self.check_model(body, required=False)
        params = sampling_params(body, self.model.block_size, max_tokens_fields=("n_predict", "max_tokens"))
        prefix = get_str(body, "input_prefix", "") + get_str(body, "prompt", "")
        suffix = get_str(body, "input_suffix", "")
        prompt = fill_in_middle(self.model.encoding, prefix, suffix, self.model.name, self.model.supports_fim,
                                self.model.block_size, params.max_tokens)
        stream = get_bool(body, "stream")

        def final_fields(done: DoneEvent, queued: float) -> dict:
            out = {"model": self.model.name, "stop": True, "stop_type": done.reason, "tokens_predicted": done.tokens,
                   "tokens_evaluated": done.prompt_tokens, "truncated": prompt.truncated, "fim": prompt.fim,
                   "timings": _timings(done, queued), "usage": _usage(done)}
            if prompt.warning:
                out["warning"] = prompt.warning
            return out

        if stream:
            return self.stream(request, prompt, params, 0, lambda e: {"content": e.text, "stop": False},
                               lambda d, q: {"content": d.text, **final_fields(d, q)})
        result = await self.collect(request, prompt, params, 0)
        return JSONResponse({"content": result.text, **final_fields(result.done, result.queued)})


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def error_response(error: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 429 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = exc.detail if exc.status_code not in (404, 405) else f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(ApiError(exc.status_code, message, code=kind))


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error",
                                   code="internal_error"))


class ApiKeyCheck:
    """ASGI middleware: every HTTP request needs `Authorization: Bearer KEY` (or `X-Api-Key: KEY`)."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"")
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self.key):
                error = ApiError(401, "incorrect or missing API key: send Authorization: Bearer KEY",
                                 type="invalid_request_error", code="invalid_api_key")
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_api(engine: Engine, api_key: str | None = None):
    """The ASGI app for one Engine; with api_key, every request must carry it."""
    api = Api(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()  # after the server drained its connections: waits for the running generation

    routes = [
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{name:path}", api.model_card, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/infill", api.infill, methods=["POST"]),
        Route("/health", api.health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        ApiError: _api_error, HTTPException: _http_error, Exception: _server_error})
    app.state.engine = engine
    return ApiKeyCheck(app, api_key) if api_key else app
