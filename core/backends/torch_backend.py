"""PyTorch backends: the reference fp32 path the others are checked against."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..checkpoint import load_model
from ..model import GPT
from .base import Backend


def transpose_linear_storage(model: GPT) -> GPT:
    """Store every Linear weight (and the tied embedding) as (in, out) in memory.

    The values and the module structure stay the same (each weight becomes a transposed view),
    but a batch-1 decode step multiplies a vector by each matrix, and for a (out, in) row-major
    matrix MKL's GEMV reads memory at under half the speed it reaches for (in, out): measured on
    a 2-core EPYC, 9.5 GB/s against 23.5 GB/s for the 50304 x 384 output head. Decode is bound by
    reading the weights once per token, so this alone makes a step ~1.7x faster.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module is not model.lm_head:
                module.weight = nn.Parameter(module.weight.t().contiguous().t(), requires_grad=False)
        wte = model.transformer.wte
        wte.weight = nn.Parameter(wte.weight.t().contiguous().t(), requires_grad=False)  # rows stay gatherable
        model.tie_weights()
    return model


class TorchBackend(Backend):
    def __init__(self, model: GPT, name: str = "torch-fp32", device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.name = name
        self.device = torch.device(device)
        self.block_size = model.config.block_size
        self.position = 0
        self.model.setup_cache(batch=1, device=self.device)

    @classmethod
    def load(cls, folder, name: str = "torch-fp32", **_) -> "TorchBackend":
        model, _encoding = load_model(folder, device="cpu", dtype=torch.float32)
        return cls(transpose_linear_storage(model), name=name)

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits = self.model(idx, pos=0, last_only=True)
        self.position = len(ids)
        return logits[0, -1].float().cpu()

    @torch.inference_mode()
    def decode(self, token: int) -> torch.Tensor:
        idx = torch.tensor([[token]], dtype=torch.long, device=self.device)
        logits = self.model(idx, pos=self.position, last_only=True)
        self.position += 1
        return logits[0, -1].float().cpu()

    @torch.inference_mode()
    def logits_all(self, ids: list[int]) -> torch.Tensor:
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits = self.model(idx, pos=0)
        self.position = len(ids)
        return logits[0].float().cpu()

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())
