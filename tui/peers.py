"""The peers `gptui bench` and bench/ time ours against, in their own harnesses: Hugging Face
generate and its loss, CTranslate2 (in a process of its own), and whole `gptui` processes as a
user runs them. Each timed call returns (time to first token, decode tokens/s), as
core.benchmark.interleaved expects; Hugging Face and CTranslate2 are timed with a callback on
every token.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.errors import GptuiError


def hf_validation_loss(model, token_windows: list[list[int]]) -> tuple[float, int]:
    """validation_loss for a Hugging Face causal LM, on the same windows."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for w in token_windows:
            logits = model(torch.tensor([w[:-1]])).logits[0].float()
            total += F.cross_entropy(logits, torch.tensor(w[1:]), reduction="sum").item()
            count += len(w) - 1
    return total / count, count


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
