"""Measurements shared by `gptui bench` and the scripts in bench/: speed, loss, and the peers.

Every speed figure is batch 1 and greedy: time to first token (prefill of the prompt plus
choosing the first token) and decode tokens/s (tokens after the first, over the time they
took), the median of several runs after a warm-up. Ours go through core.generate, the same loop
the app uses; Hugging Face generate and CTranslate2 are timed with a callback on every token.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .backends.base import Backend
from .errors import GptuiError
from .generate import DoneEvent, generate
from .sampling import SamplingParams
from .tokenizer import encode_document, get_encoding


@dataclass
class Speed:
    ttft_s: float  # median time to first token
    decode_tps: float  # median decode tokens/s
    runs: int
    best_ttft_s: float = 0.0  # the fastest run: closer to the machine's own speed when neighbours are busy
    best_decode_tps: float = 0.0

    def as_dict(self) -> dict:
        return {"ttft_ms": round(self.ttft_s * 1000, 2), "decode_tokens_per_s": round(self.decode_tps, 1),
                "best_ttft_ms": round(self.best_ttft_s * 1000, 2), "best_decode_tokens_per_s": round(self.best_decode_tps, 1),
                "runs": self.runs}


def _median_speed(samples: list[tuple[float, float]]) -> Speed:
    return Speed(statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples), len(samples),
                 min(s[0] for s in samples), max(s[1] for s in samples))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stdlib_dir() -> Path:
    """The Python standard library's own source: code every machine with Python has."""
    return Path(sysconfig.get_paths()["stdlib"])


def code_tokens(roots: list[Path], encoding: str, max_tokens: int) -> list[int]:
    """Tokens of the .py files under roots (sorted paths, each file + <|endoftext|>), up to max_tokens."""
    enc = get_encoding(encoding)
    ids: list[int] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise GptuiError(f"{root}: no such file or directory")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*.py") if "test" not in p.parts)
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            ids.extend(encode_document(enc, text))
            if len(ids) >= max_tokens:
                return ids[:max_tokens]
    if not ids:
        raise GptuiError(f"no readable .py files under {', '.join(map(str, roots))}")
    return ids


def windows(ids: list[int], block_size: int) -> list[list[int]]:
    """Consecutive windows of block_size + 1 tokens: the model sees all but the last, predicts all but the first."""
    return [ids[i : i + block_size + 1] for i in range(0, len(ids) - 1, block_size) if len(ids[i : i + block_size + 1]) > 1]


def validation_loss(backend: Backend, token_windows: list[list[int]]) -> tuple[float, int]:
    """(mean cross-entropy per predicted token in nats, tokens predicted) through the backend's logits_all."""
    total, count = 0.0, 0
    for w in token_windows:
        logits = backend.logits_all(w[:-1]).float()
        total += F.cross_entropy(logits, torch.tensor(w[1:]), reduction="sum").item()
        count += len(w) - 1
    return total / count, count


def hf_validation_loss(model, token_windows: list[list[int]]) -> tuple[float, int]:
    """validation_loss for a Hugging Face causal LM, on the same windows."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for w in token_windows:
            logits = model(torch.tensor([w[:-1]])).logits[0].float()
            total += F.cross_entropy(logits, torch.tensor(w[1:]), reduction="sum").item()
            count += len(w) - 1
    return total / count, count


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


def interleaved(engines: dict[str, Callable[[], tuple[float, float]]], runs: int = 5, warmup: int = 1) -> dict[str, Speed]:
    """Median speed of each engine, taking runs in turn (A, B, C, A, B, C, ...).

    Each callable does one timed run and returns (time to first token, decode tokens/s). Taking
    turns means a busy neighbour or a warming CPU hurts every engine alike, not whichever was last.
    """
    for run in engines.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for _ in range(runs):
        for name, run in engines.items():
            samples[name].append(run())
    return {name: _median_speed(s) for name, s in samples.items()}


def backend_run(backend: Backend, encoding, prompt: list[int], new_tokens: int = 256) -> tuple[float, float]:
    """One greedy generation through the sampling loop the app uses (no EOS stop)."""
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens + 1)
    done = None
    for event in generate(backend, encoding, prompt, params, stop_at_eos=False):
        done = event
    assert isinstance(done, DoneEvent)
    return done.time_to_first_token, done.decode_tokens_per_s


def hf_run(model, prompt: list[int], new_tokens: int = 256) -> tuple[float, float]:
    """One Hugging Face generate(use_cache=True), greedy, timed per token with a streamer."""
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []

        def put(self, value):
            self.times.append(time.perf_counter())  # the first put is the prompt itself

        def end(self):
            pass

    ids = torch.tensor([prompt], device=model.device)
    clock = Clock()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens + 1,
                       min_new_tokens=new_tokens + 1, do_sample=False, use_cache=True, pad_token_id=0, streamer=clock)
    tokens = clock.times[1:]
    return tokens[0] - start, (len(tokens) - 1) / (tokens[-1] - tokens[0])


def cuda_ms(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Mean GPU milliseconds per call of fn over `repeat` calls, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeat


def ct2_run(generator, prompt_tokens: list[str], new_tokens: int = 256) -> tuple[float, float]:
    """One CTranslate2 generate_tokens, greedy, forced to new_tokens + 1 tokens."""
    start = time.perf_counter()
    times = [time.perf_counter() for _ in generator.generate_tokens(
        prompt_tokens, max_length=new_tokens + 1, min_length=new_tokens + 1, sampling_topk=1, end_token=[])]
    return times[0] - start, (len(times) - 1) / (times[-1] - times[0])


def _ct2_serve(conn, hf_dir: str, out: str, threads: int, prompt_tokens: list[str], new_tokens: int) -> None:
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter

        if not (Path(out) / "model.bin").is_file():
            TransformersConverter(hf_dir).convert(out, quantization="int8", force=True)
        generator = ctranslate2.Generator(out, device="cpu", compute_type="int8", intra_threads=threads, inter_threads=1)
        conn.send(("ready", None))
        while conn.recv():
            conn.send(("ok", ct2_run(generator, prompt_tokens, new_tokens)))
    except Exception as e:  # reported to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}"))


class Ct2Process:
    """CTranslate2 int8 on the Hugging Face copy in hf_dir, run in a process of its own.

    In our process its OpenMP runtime halves PyTorch's int8 kernels (measured: torch-int8 decode
    111 against 199 tokens/s once ctranslate2 is loaded), so it lives apart; each call asks it
    for one timed run. The int8 conversion is written once into `out`.
    """

    def __init__(self, hf_dir: Path, out: Path, threads: int, prompt_tokens: list[str], new_tokens: int = 256):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_ct2_serve, daemon=True,
                                       args=(child, str(hf_dir), str(out), threads, prompt_tokens, new_tokens))
        self.process.start()
        self._receive()

    def _receive(self):
        status, value = self.conn.recv()
        if status == "error":
            self.close()
            raise GptuiError(f"ctranslate2 failed: {value}")
        return value

    def __call__(self) -> tuple[float, float]:
        self.conn.send(True)
        return self._receive()

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(False)
            except OSError:
                pass
            self.process.join(timeout=10)


class CliProcess:
    """Each call runs one real `gptui` completion process, as a user would, and times it.

    The prompt goes in on stdin; the process writes jsonl, whose `done` event gives the time to
    first token and the decode rate the CLI measured itself. `walls` and `startups` collect the
    whole process's wall time and what came before generation (imports, the tokenizer, loading
    the backend: wall minus the generation's own total time), leaving out the first call, which
    interleaved() makes as its warm-up. OMP_NUM_THREADS=threads is the
    thread count the CLI's torch, and so its ONNX session, default to (core.backends.default_threads).
    """

    def __init__(self, folder: Path, backend: str, prompt_text: str, new_tokens: int, threads: int):
        self.command = [sys.executable, "-m", "gptui.tui.cli", "complete", "-m", str(folder), "-b", backend,
                        "-n", str(new_tokens + 1), "-t", "0", "-s", "0", "--format", "jsonl", "--no-log"]
        self.prompt_text = prompt_text
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.walls: list[float] = []
        self.startups: list[float] = []
        self.tokens: list[int] = []
        self._calls = 0

    def __call__(self) -> tuple[float, float]:
        start = time.perf_counter()
        result = subprocess.run(self.command, input=self.prompt_text.encode(), capture_output=True, env=self.env)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip().splitlines()
            raise GptuiError(f"{' '.join(self.command[3:])} failed: {detail[-1] if detail else result.returncode}")
        done = json.loads(result.stdout.decode().strip().splitlines()[-1])
        self._calls += 1
        if self._calls == 1:
            return done["time_to_first_token"], done["decode_tokens_per_s"]
        self.walls.append(wall)
        self.startups.append(wall - done["total_time"])
        self.tokens.append(done["tokens"])
        return done["time_to_first_token"], done["decode_tokens_per_s"]

    def as_dict(self) -> dict:
        return {"wall_s": round(statistics.median(self.walls), 3), "startup_s": round(statistics.median(self.startups), 3),
                "tokens": min(self.tokens)}
