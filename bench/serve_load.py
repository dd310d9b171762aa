"""Load test for `gptui serve`: N requests from C concurrent clients on loopback, bounded.

Starts `gptui serve` on a free loopback port (once per --queue value), sends a mix of
/v1/completions, streamed /v1/completions, /v1/chat/completions and /infill requests, and checks
that every answer is complete and valid (JSON with choices, usage and a finish reason; a stream
that ends in [DONE] with its usage) or a clean 429 with OpenAI's error JSON. Prints one row per
queue size: throughput, latency percentiles, and the answers' counts.

    python bench/serve_load.py                        # 200 requests, 16 clients, queue 16 and 4
    python bench/serve_load.py --model gptui-code --requests 100 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, backend: str, queue: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "gptui.tui.cli", "serve", "--port", str(port), "--backend", backend,
           "--queue", str(queue), "--log-level", "warning"]
    if model:
        cmd += ["--model", model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gptui serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("gptui serve did not start in 120 s")


def requests_mix(model: str, n: int, max_tokens: int) -> list[tuple[str, dict]]:
    prompts = ["def fibonacci(n):\n", "import os\n\ndef list_files(path):\n", "class Stack:\n    def __init__(self):\n",
               "def is_prime(n):\n    \"\"\"Return True if n is prime.\"\"\"\n"]
    out = []
    for i in range(n):
        prompt = prompts[i % len(prompts)]
        kind = i % 4
        common = {"max_tokens": max_tokens, "temperature": 0.8, "seed": i}
        if kind == 0:
            out.append(("/v1/completions", {"model": model, "prompt": prompt, **common}))
        elif kind == 1:
            out.append(("/v1/completions", {"model": model, "prompt": prompt, "stream": True, **common}))
        elif kind == 2:
            out.append(("/v1/chat/completions", {"model": model, "messages": [
                {"role": "user", "content": "Write a Python function that " + prompt.split("(")[0][4:]}], **common}))
        else:
            out.append(("/infill", {"input_prefix": prompt, "input_suffix": "\n\nprint('done')\n",
                                    "n_predict": max_tokens, "temperature": 0.8, "seed": i}))
    return out


def check(path: str, body: dict, response: httpx.Response) -> tuple[str, int]:
    """('ok', tokens) for a complete valid answer, ('429', 0) for a clean refusal; raises otherwise."""
    if response.status_code == 429:
        error = response.json()["error"]
        assert error["code"] == "queue_full" and error["message"], response.text
        return "429", 0
    assert response.status_code == 200, f"{response.status_code}: {response.text[:200]}"
    if body.get("stream"):
        lines = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
        assert lines and lines[-1] == "[DONE]", "stream did not end with [DONE]"
        chunks = [json.loads(line) for line in lines[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        return "ok", chunks[-1]["usage"]["completion_tokens"]
    data = response.json()
    if path == "/infill":
        assert isinstance(data["content"], str) and data["stop"] is True
        return "ok", data["tokens_predicted"]
    choice = data["choices"][0]
    assert choice["finish_reason"] in ("stop", "length")
    assert isinstance(choice["text"] if "text" in choice else choice["message"]["content"], str)
    return "ok", data["usage"]["completion_tokens"]


async def load(base: str, work: list[tuple[str, dict]], clients: int) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    latencies, outcomes, tokens, failures = [], {"ok": 0, "429": 0}, 0, []

    async def client(http: httpx.AsyncClient):
        nonlocal tokens
        while not queue.empty():
            path, body = queue.get_nowait()
            start = time.perf_counter()
            try:
                response = await http.post(path, json=body)
                kind, n = check(path, body, response)
            except Exception as e:  # counted, not raised: the table says how many answers were bad
                failures.append(f"{path}: {type(e).__name__}: {e}")
                continue
            outcomes[kind] += 1
            tokens += n
            if kind == "ok":
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - start
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else float("nan")

    return {"wall": wall, "ok": outcomes["ok"], "429": outcomes["429"], "bad": len(failures), "failures": failures,
            "req_s": outcomes["ok"] / wall, "tok_s": tokens / wall, "p50": pct(50), "p99": pct(99),
            "mean": statistics.fmean(latencies) * 1000 if latencies else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name or folder (default: gptui's default model)")
    parser.add_argument("--backend", default="torch-fp32")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--queues", default="16,4", help="comma-separated --queue values, one server run each")
    args = parser.parse_args()
    if args.requests > 2000 or args.clients > 64:
        raise SystemExit("bounded on purpose: at most 2000 requests and 64 clients")
    rows = []
    for queue_size in [int(q) for q in args.queues.split(",")]:
        proc, base = start_server(args.model, args.backend, queue_size)
        try:
            model = httpx.get(base + "/v1/models").json()["data"][0]["id"]
            result = load(base, requests_mix(model, args.requests, args.max_tokens), args.clients)
            result = asyncio.run(result)
        finally:
            proc.terminate()
            code = proc.wait(timeout=60)
        rows.append((model, queue_size, result, code))
        for failure in result["failures"][:5]:
            print("bad answer:", failure, file=sys.stderr)
    print(f"gptui serve load test: {args.requests} requests, {args.clients} concurrent clients, loopback, "
          f"backend {args.backend}, max_tokens {args.max_tokens}, {os.cpu_count()} CPUs")
    header = ("model", "queue", "ok", "429", "bad", "wall s", "req/s", "tok/s", "p50 ms", "p99 ms", "exit")
    table = [header] + [(m, str(q), str(r["ok"]), str(r["429"]), str(r["bad"]), f"{r['wall']:.1f}",
                         f"{r['req_s']:.2f}", f"{r['tok_s']:.1f}", f"{r['p50']:.0f}", f"{r['p99']:.0f}", str(c))
                        for m, q, r, c in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    if any(r["bad"] or c != 0 for _, _, r, c in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
