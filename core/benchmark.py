"""Measurements shared by `gptui bench` and the scripts in bench/: speed and loss of our backends
(the peers' harnesses, Hugging Face and CTranslate2, are in tui/peers.py: core runs none of theirs).

Every speed figure is batch 1 and greedy: time to first token (prefill of the prompt plus
choosing the first token) and decode tokens/s (tokens after the first, over the time they
took), the median of several runs after a warm-up. Ours go through core.generate, the same loop
the app uses.
"""

from __future__ import annotations

import math
import platform
import statistics
import sysconfig
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
