"""PyTorch backends: the reference fp32 path the others are checked against."""

from __future__ import annotations

import torch

from ..checkpoint import load_model
from ..model import GPT
from .base import Backend


class TorchBackend(Backend):
    def __init__(self, model: GPT, name: str = "torch-fp32", device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.name = name
        self.device = torch.device(device)
        self.block_size = model.config.block_size
        self.position = 0
        self.model.setup_cache(batch=1, device=self.device)

    @classmethod
    def load(cls, folder, **_) -> "TorchBackend":
        model, _encoding = load_model(folder, device="cpu", dtype=torch.float32)
        return cls(model)

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

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())
