"""`gptui serve`: every endpoint through httpx's ASGI transport on the tiny model, bad input, the queue,
disconnects, the history log, and real server processes (the OpenAI client, log switches, a damaged
database, another process writing the log at the same time)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

from gptui.core.checkpoint import save_checkpoint
from gptui.core.history import History, prompt_hash, recent
from gptui.core.tokenizer import encode, fim_ids, get_encoding
from gptui.tui.api_requests import fim_layout
from gptui.tui.fim import trained_for_fim
from gptui.tui.openai_api import Engine, ServedModel, create_api

from conftest import make_tiny

FIM_PROVENANCE = {"init": {"from": "runs/base", "provenance": {"training": {"task": "pretrain", "fim_rate": 0.5}}},
                  "training": {"task": "sft", "fim_rate": 0.0}}


@pytest.fixture(scope="module")
def fim_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-fim"
    save_checkpoint(folder, make_tiny(seed=1), "gpt2-code", provenance=FIM_PROVENANCE)
    return folder


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    return ServedModel.load(str(tiny_model_dir), "torch-fp32")


@pytest.fixture(scope="module")
def served_fim(fim_model_dir):
    return ServedModel.load(str(fim_model_dir), "torch-fp32")


def run(coro):
    return asyncio.run(coro)


def client_for(engine: Engine, api_key: str | None = None, **headers) -> httpx.AsyncClient:
    app = create_api(engine, api_key=api_key)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers,
                             timeout=30)


def call(served_model, method: str, path: str, queue: int = 4, api_key=None, headers=None, history=None,
         **kwargs) -> httpx.Response:
    engine = Engine(served_model, queue_size=queue, history=history)

    async def go():
        async with client_for(engine, api_key, **(headers or {})) as client:
            return await client.request(method, path, **kwargs)

    try:
        return run(go())
    finally:
        engine.close()


async def settled(engine: Engine) -> None:
    """Wait for the worker to free its slots: it does so through the event loop, just after the answer."""
    for _ in range(200):
        if engine.pending == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{engine.pending} generations still pending")


def sse_events(response: httpx.Response) -> list:
    lines = [line[len("data: "):] for line in response.text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# ---- pure parts -------------------------------------------------------------------------------

def test_fim_support_is_read_from_the_whole_provenance_chain():
    assert trained_for_fim(FIM_PROVENANCE)
    assert trained_for_fim({"training": {"fim_rate": 0.5}})
    assert not trained_for_fim({"test": True})
    assert not trained_for_fim({"training": {"fim_rate": 0.0}, "init": {"preset": "tiny"}})
    assert not trained_for_fim({"training": {"fim_rate": "0.5"}})  # not a number: not trusted


def test_fim_layout_is_prefix_suffix_middle_and_cuts_far_from_the_cursor():
    enc = get_encoding("gpt2-code")
    pre, mid, suf = fim_ids(enc)
    ids, truncated = fim_layout(enc, "def f(x):\n    return ", "\n\nprint(f(2))\n", 200)
    prefix, suffix = encode(enc, "def f(x):\n    return "), encode(enc, "\n\nprint(f(2))\n")
    assert ids == [pre, *prefix, suf, *suffix, mid] and not truncated
    long_prefix, long_suffix = "a = 1\n" * 100, "b = 2\n" * 100
    ids, truncated = fim_layout(enc, long_prefix, long_suffix, 40)
    assert truncated and len(ids) == 40 and ids[0] == pre and ids[-1] == mid
    cut = ids.index(suf)
    assert enc.decode(ids[1:cut]) in long_prefix and long_prefix.endswith(enc.decode(ids[1:cut]))
    assert long_suffix.startswith(enc.decode(ids[cut + 1 : -1]))
    assert len(ids[cut + 1 : -1]) == (40 - 3) // 4  # the suffix gets a quarter of the room


# ---- endpoints ----------------------------------------------------------------------------------

def test_models_lists_the_model_with_its_window_and_fim_support(served, served_fim):
    data = call(served, "GET", "/v1/models").json()["data"]
    assert [(m["id"], m["context_length"], m["fim"]) for m in data] == [("tiny", 64, False)]
    card = call(served_fim, "GET", "/v1/models/tiny-fim").json()
    assert card["fim"] is True and card["backend"] == "torch-fp32"
    assert call(served, "GET", "/v1/models/other").status_code == 404


def test_completion_reports_usage_and_timings(served):
    body = {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0}
    out = call(served, "POST", "/v1/completions", json=body).json()
    choice = out["choices"][0]
    assert out["object"] == "text_completion" and choice["finish_reason"] in ("length", "stop")
    assert out["usage"]["prompt_tokens"] == len(encode(get_encoding("gpt2-code"), "def add(a, b):"))
    assert 1 <= out["usage"]["completion_tokens"] <= 8
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    assert set(out["timings"]) >= {"time_to_first_token_ms", "tokens_per_second"}


def test_streamed_chunks_rejoin_to_the_unstreamed_text(served):
    body = {"model": "tiny", "prompt": "import os\n", "max_tokens": 24, "temperature": 1.0, "seed": 7}
    whole = call(served, "POST", "/v1/completions", json=body).json()
    streamed = call(served, "POST", "/v1/completions", json={**body, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = sse_events(streamed)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["usage"] == whole["usage"] and chunks[-1]["choices"][0]["finish_reason"]


def test_chat_streams_the_same_answer_it_returns_whole(served):
    body = {"model": "tiny", "messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "Reverse a string"}],
            "max_tokens": 20, "temperature": 0.9, "seed": 3}
    whole = call(served, "POST", "/v1/chat/completions", json=body).json()
    message = whole["choices"][0]["message"]
    assert whole["object"] == "chat.completion" and message["role"] == "assistant"
    chunks = sse_events(call(served, "POST", "/v1/chat/completions", json={**body, "stream": True}))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == message["content"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_logprobs_for_completions_and_chat(served):
    out = call(served, "POST", "/v1/completions",
               json={"model": "tiny", "prompt": "x = ", "max_tokens": 5, "temperature": 0, "logprobs": 2}).json()
    lp = out["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == out["usage"]["completion_tokens"]
    assert all(len(top) <= 2 for top in lp["top_logprobs"]) and all(v <= 0 for v in lp["token_logprobs"])
    out = call(served, "POST", "/v1/chat/completions",
               json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                     "logprobs": True, "top_logprobs": 3}).json()
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == out["usage"]["completion_tokens"] and all(len(c["top_logprobs"]) == 3 for c in content)


def test_suffix_uses_fim_when_trained_and_warns_when_not(served, served_fim):
    body = {"prompt": "def f(x):\n    return ", "suffix": "\n\nprint(f(1))\n", "max_tokens": 6, "temperature": 0}
    plain = call(served, "POST", "/v1/completions", json={**body, "model": "tiny"})
    assert plain.status_code == 200 and "not trained for fill-in-the-middle" in plain.json()["warning"]
    assert plain.json()["usage"]["prompt_tokens"] == len(encode(get_encoding("gpt2-code"), body["prompt"]))
    fim = call(served_fim, "POST", "/v1/completions", json={**body, "model": "tiny-fim"})
    assert fim.status_code == 200 and "warning" not in fim.json()
    assert fim.json()["usage"]["prompt_tokens"] == len(fim_layout(get_encoding("gpt2-code"), body["prompt"],
                                                                  body["suffix"], 64 - 6)[0])
    streamed = call(served, "POST", "/v1/completions", json={**body, "model": "tiny", "stream": True})
    assert "fill-in-the-middle" in streamed.headers["x-gptui-warning"]
    assert "warning" in sse_events(streamed)[-1]


def test_infill_is_llama_cpp_shaped(served, served_fim):
    body = {"input_prefix": "def f(x):\n", "prompt": "    return ", "input_suffix": "\n", "n_predict": 5,
            "temperature": 0}
    out = call(served_fim, "POST", "/infill", json=body).json()
    assert out["fim"] is True and out["stop"] is True and isinstance(out["content"], str)
    assert out["tokens_predicted"] <= 5 and "warning" not in out
    assert "warning" in call(served, "POST", "/infill", json=body).json()
    long = call(served_fim, "POST", "/infill", json={**body, "input_prefix": "x = 1\n" * 200}).json()
    assert long["truncated"] is True and long["tokens_evaluated"] <= 64 - 5
    chunks = sse_events(call(served_fim, "POST", "/infill", json={**body, "stream": True, "seed": 1}))
    assert "".join(c["content"] for c in chunks) == out["content"] and chunks[-1]["stop"] is True


# ---- the history log ----------------------------------------------------------------------------

CHAT_TURNS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Reverse a string"},
              {"role": "assistant", "content": "s[::-1]"}, {"role": "user", "content": "Now a list"}]
# endpoint, body, what the entry records: (kind, prompt, suffix, context)
LOGGED = {
    "completion": ("/v1/completions", {"model": "tiny", "prompt": "def add(a, b):"},
                   ("completion", "def add(a, b):", "", "")),
    "fim": ("/v1/completions", {"model": "tiny-fim", "prompt": "def f(x):\n    return ", "suffix": "\n\nprint(f(1))\n"},
            ("completion", "def f(x):\n    return ", "\n\nprint(f(1))\n", "")),
    "chat": ("/v1/chat/completions", {"model": "tiny", "messages": CHAT_TURNS},
             ("chat", "Now a list", "", json.dumps(
                 [{"role": "user", "content": "Reverse a string"}, {"role": "assistant", "content": "s[::-1]"}]))),
    "infill": ("/infill", {"input_prefix": "def f(x):\n", "prompt": "    return ", "input_suffix": "\n"},
               ("completion", "def f(x):\n    return ", "\n", "")),
}


def answer_of(path: str, response: httpx.Response, stream: bool) -> tuple[str, dict, dict]:
    """(text, usage, timings) of any endpoint's answer, streamed or not."""
    if stream:
        chunks = sse_events(response)
        pieces = {"/v1/completions": lambda c: c["choices"][0]["text"],
                  "/v1/chat/completions": lambda c: c["choices"][0]["delta"].get("content", ""),
                  "/infill": lambda c: c["content"]}[path]
        return "".join(map(pieces, chunks)), chunks[-1]["usage"], chunks[-1]["timings"]
    out = response.json()
    text = {"/v1/completions": lambda: out["choices"][0]["text"],
            "/v1/chat/completions": lambda: out["choices"][0]["message"]["content"],
            "/infill": lambda: out["content"]}[path]()
    return text, out["usage"], out["timings"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", LOGGED)
def test_every_endpoint_logs_its_answer_with_source_serve(served, served_fim, tmp_path, case, stream):
    path, body, (kind, prompt, suffix, context) = LOGGED[case]
    model = served_fim if case in ("fim", "infill") else served
    db = tmp_path / "gptui.db"
    body = {**body, "max_tokens": 6, "temperature": 0.7, "top_k": 5, "seed": 3, "stream": stream}
    response = call(model, "POST", path, json=body, history=History(db, source="serve"))
    assert response.status_code == 200, response.text
    text, usage, timings = answer_of(path, response, stream)
    [entry] = recent(db, 0)  # written by the time the engine closed
    assert (entry["source"], entry["kind"], entry["prompt"], entry["suffix"], entry["context"]) == (
        "serve", kind, prompt, suffix, context)
    assert entry["prompt_hash"] == prompt_hash(prompt, context, suffix)
    assert entry["output"] == text and (entry["model"], entry["backend"]) == (model.name, "torch-fp32")
    assert entry["seed"] == 3 and json.loads(entry["sampling"])["top_k"] == 5
    assert (entry["prompt_tokens"], entry["tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert entry["ttft_s"] * 1000 == pytest.approx(timings["time_to_first_token_ms"], abs=0.01)
    assert entry["tokens_per_s"] == pytest.approx(timings["tokens_per_second"], abs=0.01)
    assert entry["stop_reason"] in ("length", "eos", "stop") and entry["outcome"] is None


# ---- bad input ---------------------------------------------------------------------------------

BAD = [
    ("malformed json", "/v1/completions", b"{\"prompt\": ", 400, "invalid_json"),
    ("not an object", "/v1/completions", b"[1, 2]", 400, "invalid_json"),
    ("not utf-8", "/v1/completions", b"\xff\xfe{}", 400, "invalid_json"),
    ("max_tokens string", "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": "5"}, 400, "invalid_type"),
    ("temperature string", "/v1/completions", {"model": "tiny", "prompt": "a", "temperature": "hot"}, 400,
     "invalid_type"),
    ("stream not bool", "/v1/completions", {"model": "tiny", "prompt": "a", "stream": "yes"}, 400, "invalid_type"),
    ("stop not strings", "/v1/completions", {"model": "tiny", "prompt": "a", "stop": [1]}, 400, "invalid_type"),
    ("prompt object", "/v1/completions", {"model": "tiny", "prompt": {"a": 1}}, 400, "invalid_type"),
    ("token id out of range", "/v1/completions", {"model": "tiny", "prompt": [1, 10**9]}, 400, "invalid_value"),
    ("max_tokens zero", "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 0}, 400, "invalid_value"),
    ("max_tokens negative", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": "a"}], "max_tokens": -3}, 400, "invalid_value"),
    ("max_tokens past context", "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 64}, 400,
     "context_length_exceeded"),
    ("prompt past context", "/v1/completions", {"model": "tiny", "prompt": "x = 1\n" * 100}, 400,
     "context_length_exceeded"),
    ("chat past context", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": "word " * 200}]}, 400, "context_length_exceeded"),
    ("unknown model", "/v1/completions", {"model": "gpt-4", "prompt": "a"}, 404, "model_not_found"),
    ("no model", "/v1/completions", {"prompt": "a"}, 400, "missing_model"),
    ("messages missing", "/v1/chat/completions", {"model": "tiny"}, 400, "invalid_type"),
    ("last message not user", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "assistant", "content": "a"}]}, 400, "invalid_value"),
    ("bad role", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "a"}]}, 400,
     "invalid_value"),
    ("n > 1", "/v1/completions", {"model": "tiny", "prompt": "a", "n": 2}, 400, "unsupported_value"),
    ("top_p zero", "/v1/completions", {"model": "tiny", "prompt": "a", "top_p": 0}, 400, "invalid_value"),
    ("infill prefix number", "/infill", {"input_prefix": 3}, 400, "invalid_type"),
]


def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(served):
    engine = Engine(served)

    async def go():
        async with client_for(engine) as client:
            for name, path, body, status, code in BAD:
                kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
                response = await client.post(path, **kwargs)
                assert response.status_code == status, (name, response.text)
                error = response.json()["error"]
                assert error["code"] == code and error["message"] and error["type"], name
            for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/completions", 405)):
                response = await client.request(method, path)
                assert response.status_code == status and "error" in response.json()
            ok = await client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2})
            assert ok.status_code == 200
            await settled(engine)

    try:
        run(go())
    finally:
        engine.close()


def test_api_key_is_checked_on_every_request(served):
    for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                            ({"Authorization": "Bearer s3cret"}, 200), ({"X-Api-Key": "s3cret"}, 200)):
        response = call(served, "GET", "/v1/models", api_key="s3cret", headers=headers)
        assert response.status_code == status
        if status == 401:
            assert response.json()["error"]["code"] == "invalid_api_key"


# ---- concurrency ----------------------------------------------------------------------------

def test_a_full_queue_gives_429_and_frees_up(served):
    engine = Engine(served, queue_size=0)  # one running, none waiting
    gate = threading.Event()
    engine.executor.submit(gate.wait)  # hold the worker so the first request stays admitted

    async def go():
        async with client_for(engine) as client:
            body = {"model": "tiny", "prompt": "a", "max_tokens": 3}
            first = asyncio.create_task(client.post("/v1/completions", json=body))
            for _ in range(200):
                if engine.pending:
                    break
                await asyncio.sleep(0.01)
            busy = await client.post("/v1/completions", json={**body, "stream": True})
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["code"] == "queue_full"
            gate.set()
            assert (await first).status_code == 200
            await settled(engine)
            assert (await client.post("/v1/completions", json=body)).status_code == 200

    try:
        run(go())
    finally:
        gate.set()
        engine.close()


class SlowBackend:
    """The tiny backend, 10 ms per decode step, so a test can disconnect mid-generation."""

    def __init__(self, backend):
        self.inner = backend

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, token):
        time.sleep(0.01)
        return self.inner.decode(token)


async def asgi_request(app, path: str, body: dict, disconnect_after_first_chunk: bool) -> list[dict]:
    """Call the ASGI app directly; the client goes away right after the body (or the first streamed chunk)."""
    sent: list[dict] = []
    first_chunk = asyncio.Event()
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        if disconnect_after_first_chunk:
            await first_chunk.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_chunk.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8080)}
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_disconnect_cancels_its_generation_and_is_logged_so(served, stream, tmp_path):
    slow = ServedModel(served.name, SlowBackend(served.backend), served.encoding, False, served.created)
    engine = Engine(slow, history=History(tmp_path / "gptui.db", source="serve"))
    body = {"model": "tiny", "prompt": "def f():", "max_tokens": 60, "temperature": 1.0, "seed": 0, "stream": stream}

    async def go():
        app = create_api(engine)
        await asgi_request(app, "/v1/completions", body, disconnect_after_first_chunk=stream)
        await settled(engine)

    try:
        run(go())
        done = engine.last_done
        assert done.reason == "cancelled" and done.tokens < 10, done
        assert engine.pending == 0
    finally:
        engine.close()
    [entry] = recent(tmp_path / "gptui.db", 0)
    assert entry["stop_reason"] == "cancelled" and entry["tokens"] == done.tokens and entry["source"] == "serve"


# ---- the real server ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealServer:
    """`gptui serve` in its own process on a free port (the tiny models load in a few seconds)."""

    def __init__(self, model_dir, *args: str, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "gptui.tui.cli", "serve", "--model", str(model_dir),
                                      "--port", str(self.port), "--log-level", "warning", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env},
                                     text=True)

    def wait_ready(self, **headers) -> RealServer:
        deadline = time.monotonic() + 45
        while True:
            try:
                if httpx.get(f"{self.url}/health", headers=headers).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.proc.communicate()[1]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)

    def stop(self) -> str:
        """SIGTERM, check it exits 0, and return its stderr."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def servers():
    started: list[RealServer] = []

    def start(*args, **kwargs) -> RealServer:
        started.append(RealServer(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.kill()


def test_real_server_with_the_openai_client(fim_model_dir, servers):
    openai = pytest.importorskip("openai")
    server = servers(fim_model_dir, GPTUI_API_KEY="test-key").wait_ready(**{"X-Api-Key": "test-key"})
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="test-key", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny-fim"]
    completion = client.completions.create(model="tiny-fim", prompt="def f(x):\n    return ", suffix="\n",
                                           max_tokens=5, temperature=0)
    assert completion.usage.completion_tokens <= 5 and isinstance(completion.choices[0].text, str)
    stream = client.chat.completions.create(model="tiny-fim", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=6, stream=True, seed=1)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    whole = client.chat.completions.create(model="tiny-fim", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=6, seed=1)
    assert text == whole.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="a", max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    server.stop()


def complete_once(server: RealServer) -> None:
    response = httpx.post(f"{server.url}/v1/completions", timeout=30,
                          json={"model": "tiny", "prompt": "def f(x):", "max_tokens": 3})
    assert response.status_code == 200, response.text


def test_no_log_and_the_setting_keep_serve_from_logging(tiny_model_dir, tmp_path, servers):
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.toml").write_text("[log]\nenabled = false\n")
    dbs = {name: tmp_path / name / "gptui.db" for name in ("on", "flag", "setting")}
    started = [servers(tiny_model_dir, GPTUI_DB=str(dbs["on"])),  # started together: they load at once
               servers(tiny_model_dir, "--no-log", GPTUI_DB=str(dbs["flag"])),
               servers(tiny_model_dir, GPTUI_DB=str(dbs["setting"]), GPTUI_CONFIG_DIR=str(config))]
    for server in started:
        complete_once(server.wait_ready())
        assert "warning" not in server.stop()
    assert [e["source"] for e in recent(dbs["on"], 0)] == ["serve"]  # the control: logging on does log
    assert not dbs["flag"].exists() and not dbs["setting"].exists()


def test_a_damaged_database_is_one_warning_and_serve_still_answers(tiny_model_dir, tmp_path, servers):
    db = tmp_path / "gptui.db"
    db.write_bytes(b"garbage" * 1000)
    server = servers(tiny_model_dir, GPTUI_DB=str(db)).wait_ready()
    for _ in range(2):
        complete_once(server)
    lines = server.stop().splitlines()
    assert len(lines) == 2 and any(line.startswith("gptui serve: tiny on torch-fp32") for line in lines)
    assert [line for line in lines if line.startswith("warning")] == [
        f"warning: {db}: the log database is unreadable (file is not a database); logging is off"]
    assert db.read_bytes() == b"garbage" * 1000  # left alone


WRITER = """import sys, time
from pathlib import Path
from gptui.core.history import History
history, stop, written = History(source="app"), Path(sys.argv[1]), 0
print("ready", flush=True)
while not stop.exists():
    history.record("completion", f"def f{written}():", "    pass", model="m", backend="b")
    written += 1
    time.sleep(0.002)
print(written, history.warning, flush=True)
"""


def test_serve_and_another_process_log_at_the_same_time(fim_model_dir, tmp_path, servers, monkeypatch):
    from click.testing import CliRunner

    from gptui.tui.cli import main

    db, stop = tmp_path / "gptui.db", tmp_path / "stop"
    monkeypatch.setenv("GPTUI_DB", str(db))
    server = servers(fim_model_dir)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "ready\n"
        server.wait_ready()
        requests = [("/v1/completions", {"model": "tiny-fim", "prompt": "import os\n"}),
                    ("/v1/completions", {"model": "tiny-fim", "prompt": "x = ", "stream": True}),
                    ("/v1/chat/completions", {"model": "tiny-fim", "messages": [{"role": "user", "content": "hi"}]}),
                    ("/infill", {"input_prefix": "def f(x):\n", "input_suffix": "\n"})] * 5
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for path, body in requests:
                assert client.post(path, json={**body, "max_tokens": 4}).status_code == 200
        stop.touch()
        written, warning = writer.communicate(timeout=30)[0].split()
    finally:
        stop.touch()
        writer.wait(timeout=30)
    assert warning == "None" and "warning" not in server.stop()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert dict(conn.execute("SELECT source, COUNT(*) FROM entries GROUP BY source").fetchall()) == {
        "serve": len(requests), "app": int(written)}
    first, last = conn.execute("SELECT MIN(id), MAX(id) FROM entries WHERE source = 'serve'").fetchone()
    between = conn.execute("SELECT COUNT(*) FROM entries WHERE source = 'app' AND id BETWEEN ? AND ?",
                           (first, last)).fetchone()[0]
    assert between > 0  # interleaved, not one writer after the other
    listed = json.loads(CliRunner().invoke(main, ["logs", "--source", "serve", "-n", "0", "--json"]).output)
    assert len(listed) == len(requests) and {e["source"] for e in listed} == {"serve"}
