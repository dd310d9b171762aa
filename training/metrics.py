"""Numbers about a run: metrics.jsonl (and TensorBoard when asked), FLOPs, MFU, memory."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from ..core.config import GPTConfig
from ..core.errors import GptuiError

# Dense bf16 tensor-core peaks (no sparsity) by a word in the device name, for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}
PCIE_H100_FLOPS = 756e12


def flops_per_token(config: GPTConfig) -> float:
    """Training FLOPs per token: 6 per weight (forward + backward) plus attention's T-dependent part
    (PaLM appendix B). Position embeddings are a lookup, not a matmul, so they do not count."""
    n = config.num_params() - config.block_size * config.n_embd
    return 6 * n + 12 * config.n_layer * config.n_embd * config.block_size


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    words = re.split(r"[\s_-]+", torch.cuda.get_device_name(device))
    if "H100" in words and ("PCIe" in words or "NVL" in words):
        return PCIE_H100_FLOPS
    return next((PEAK_BF16_FLOPS[w] for w in words if w in PEAK_BF16_FLOPS), None)


def memory_gb(device: torch.device) -> float:
    """Peak memory so far: allocated GPU memory on CUDA, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import resource  # POSIX only; imported here so training runs on Windows
    except ImportError:
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e9 if sys.platform == "darwin" else rss / 1e6  # bytes on macOS, KiB on Linux


def tensorboard_writer():
    """TensorBoard's SummaryWriter class; a clear error when the optional package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise GptuiError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter


class MetricsLog:
    """One JSON object per line; the same scalars go to TensorBoard when enabled."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            self._truncate_after(resume_step)
        self.file = open(path, "a")
        self.tb = None
        if tensorboard_dir is not None:
            self.tb = tensorboard_writer()(str(tensorboard_dir))

    def _truncate_after(self, step: int) -> None:
        """Drop lines past the checkpoint being resumed: those steps are about to run again."""
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                pass  # a line cut short by a kill
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
