"""PyTorch backends: the reference fp32 path the others are checked against."""

from __future__ import annotations

import torch

from ..checkpoint import load_model
from ..model import GPT
from .base import Backend
from .contract import LoadOptions
from .cpu_modules import to_cpu_linears, use_c_blocks


@torch.inference_mode()
def forward_ids(model: GPT, ids: list[int], device: torch.device, last_only: bool = False) -> torch.Tensor:
    """Logits (T, V), or (1, V) with last_only, for ids from position 0, which the cache then holds."""
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    return model(idx, pos=0, last_only=last_only)[0]


def weight_bytes(model: GPT) -> int:
    """The weights at the dtype of the model's floats, the tied matrix counted once (as on disk), however laid out."""
    return model.config.num_params() * model.transformer.wpe.weight.element_size()


class TorchBackend(Backend):
    def __init__(self, model: GPT, name: str = "torch-fp32", device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.name = name
        self.device = torch.device(device)
        self.block_size = model.config.block_size
        self.position = 0
        self.model.setup_cache(batch=1, device=self.device)

    @classmethod
    def load(cls, folder, name: str = "torch-fp32", options: LoadOptions = LoadOptions()) -> "TorchBackend":
        model, _encoding = load_model(folder, device="cpu", dtype=torch.float32)
        return cls(use_c_blocks(to_cpu_linears(model)), name=name)

    def prefill(self, ids: list[int]) -> torch.Tensor:
        logits = forward_ids(self.model, ids, self.device, last_only=True)
        self.position = len(ids)
        return logits[-1].float().cpu()

    @torch.inference_mode()
    def decode(self, token: int) -> torch.Tensor:
        idx = torch.tensor([[token]], dtype=torch.long, device=self.device)
        logits = self.model(idx, pos=self.position, last_only=True)
        self.position += 1
        return logits[0, -1].float().cpu()

    def logits_all(self, ids: list[int]) -> torch.Tensor:
        logits = forward_ids(self.model, ids, self.device)
        self.position = len(ids)
        return logits.float().cpu()

    @property
    def nbytes(self) -> int:
        return weight_bytes(self.model)
