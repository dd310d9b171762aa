"""Shared, built-once inputs for the training tests: a small real corpus, prepared, and tiny models.

The corpus is Python's own `json` package (five real files, ~14k tokens): enough for a tiny
model's loss to fall visibly in a few dozen steps on a CPU.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch

from gptui.core.checkpoint import save_checkpoint
from gptui.core.config import preset
from gptui.core.model import GPT
from gptui.core.tokenizer import get_encoding
from gptui.training.prepare_code import prepare_code
from gptui.training.prepare_sft import load_instructions, prepare_sft

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS = STDLIB / "json"

_built: dict[str, Path] = {}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads on a busy 2-core machine mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

BASE_EXAMPLES = [
    {"instruction": "Write a function that adds two numbers.", "input": "",
     "output": "def add(a, b):\n    return a + b", "text": ""},
    {"instruction": "Reverse a string.", "input": "s = 'abc'",
     "output": "def reverse(s):\n    return s[::-1]", "text": ""},
    {"instruction": "Return the maximum of a list.", "input": "",
     "output": "def biggest(xs):\n    return max(xs)", "text": ""},
    {"instruction": "Count the vowels in a word.", "input": "",
     "output": "def vowels(w):\n    return sum(c in 'aeiou' for c in w)", "text": ""},
    {"instruction": "Square every number in a list.", "input": "[1, 2, 3]",
     "output": "def squares(xs):\n    return [x * x for x in xs]", "text": ""},
]


def instruction_rows(copies: int = 4) -> list[dict]:
    """Distinct examples (prepare drops exact duplicates): each base example in `copies` variants."""
    return [{**e, "instruction": f"{e['instruction']} (variant {i})"}
            for i in range(copies) for e in BASE_EXAMPLES]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepared_code(factory) -> Path:
    """The json package prepared for pretraining (1 validation file), built once per session."""
    if "code" not in _built:
        base = factory.mktemp("prepared")
        prepare_code([CORPUS], base / "code", val_fraction=0.2, seed=0, num_proc=1, cache=base / "cache")
        _built["code"] = base / "code"
    return _built["code"]


def prepared_sft(factory) -> Path:
    if "sft" not in _built:
        base = factory.mktemp("prepared_sft")
        jsonl = write_jsonl(base / "examples.jsonl", instruction_rows())
        ds = load_instructions(str(jsonl), base / "cache")
        prepare_sft(ds, {"type": "hf", "name": str(jsonl)}, base / "sft", "gpt2-code", 0.2, 0, 1, False)
        _built["sft"] = base / "sft"
    return _built["sft"]


def tiny_checkpoint(factory, seed: int = 0) -> Path:
    key = f"tiny{seed}"
    if key not in _built:
        torch.manual_seed(seed)
        model = GPT(preset("tiny", vocab_size=get_encoding("gpt2-code").n_vocab))
        _built[key] = save_checkpoint(factory.mktemp("model") / "tiny", model, "gpt2-code")
    return _built[key]


def train_args(data: Path, out: Path, steps: int = 20, **extra) -> list[str]:
    """CLI arguments for a fast CPU run of the tiny preset."""
    args = ["--data", str(data), "--out", str(out), "--steps", str(steps), "--batch-tokens", "128",
            "--micro-batch", "1", "--lr", "3e-3", "--warmup", "3", "--eval-every", "10", "--eval-tokens", "512",
            "--save-every", "10", "--device", "cpu"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args
