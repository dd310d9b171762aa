"""PyTorch backends: the reference fp32 path the others are checked against."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..checkpoint import load_model
from ..model import GPT
from .base import Backend


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """nn.Linear whose weight oneDNN has reordered once into its own blocked layout.

    Batch-1 decode multiplies a vector by each matrix and is bound by reading the weights once per
    token. Read through oneDNN's prepacked layout, the matrices stream at ~20.6 GB/s on a 2-core
    EPYC against ~16.3 GB/s for MKL's addmm on the same weights stored (in, out), and ~13 GB/s for
    the (out, in) layout nn.Linear keeps (bench/NOTES.md). Prefill (many rows) runs faster too.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().float().contiguous(), 1)
        self.bias = None if bias is None else bias.detach().float().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def pack_linears(model: GPT) -> GPT:
    """Swap every nn.Linear, the tied output head included, for a PackedLinear (inference only).

    The embedding keeps its plain table for row lookups, so the head's packed copy costs one more
    vocabulary-sized matrix in memory. Without oneDNN (a PyTorch build lacking it) the model is
    left as it is.
    """
    if not onednn_available():
        return model
    with torch.no_grad():
        for module in list(model.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, child_name, PackedLinear(child.weight, child.bias))
    return model


class TorchBackend(Backend):
    def __init__(self, model: GPT, name: str = "torch-fp32", device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.params = model.config.num_params()
        self.name = name
        self.device = torch.device(device)
        self.block_size = model.config.block_size
        self.position = 0
        self.model.setup_cache(batch=1, device=self.device)

    @classmethod
    def load(cls, folder, name: str = "torch-fp32", **_) -> "TorchBackend":
        model, _encoding = load_model(folder, device="cpu", dtype=torch.float32)
        return cls(pack_linears(model), name=name)

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
        """The weights at their dtype, the tied matrix counted once (as on disk), however laid out."""
        return self.params * self.model.transformer.wpe.weight.element_size()
