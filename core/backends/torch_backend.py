"""PyTorch backends: the reference fp32 path the others are checked against."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_model
from ..kernels import cpu_kernels
from ..model import GPT
from .base import Backend
from .contract import LoadOptions


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class CpuLinear(nn.Module):
    """nn.Linear for CPU inference, each input through the fastest product for its shape.

    Batch-1 decode multiplies one vector by each matrix and is bound by reading the weights once
    per token. One row goes through our C kernel (core/kernels/cpu_kernels.c), which streams the (out, in)
    weight nn.Linear keeps faster than oneDNN's prepacked layout or MKL on both CPUs measured
    (README, "Backends and speed"; bench/NOTES.md). Many rows (a prefill) go through oneDNN, which
    takes the same plain weight as fast as its packed one. Without the C kernel (no compiler at
    install time), oneDNN's prepacked layout serves both; without either, F.linear.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight.detach().float().contiguous()  # shares the tied embedding's storage
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.gemv = cpu_kernels.available()
        self.packed = None
        if onednn_available():
            self.packed = self.weight if self.gemv else torch.ops.mkldnn._reorder_linear_weight(self.weight, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gemv and x.numel() == self.in_features:
            return cpu_kernels.gemv(x, self.weight, self.bias)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def use_c_attention(model: GPT) -> GPT:
    """Send each one-token decode step's attention through the C kernel, where it is built (CPU only)."""
    for block in model.transformer.h:
        block.attn.cpu_decode = cpu_kernels.available()
    return model


def use_c_blocks(model: GPT) -> GPT:
    """Carry each one-token decode step through every block in one C call each, where the kernel is built.

    Needs float32 CPU weights (the torch-fp32 backend's); prefill keeps the PyTorch path.
    """
    if cpu_kernels.available():
        for block in model.transformer.h:
            block.cpu_step = cpu_kernels.DecodeBlock(block.ln_1, block.attn.c_attn, block.attn.c_proj, block.ln_2,
                                                     block.mlp.c_fc, block.mlp.c_proj)
    return model


def to_cpu_linears(model: GPT) -> GPT:
    """Swap every nn.Linear, the tied output head included, for a CpuLinear (inference only).

    With neither the C kernel nor oneDNN the model is left as it is.
    """
    if not (cpu_kernels.available() or onednn_available()):
        return model
    with torch.no_grad():
        for module in list(model.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, child_name, CpuLinear(child.weight, child.bias))
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
    def load(cls, folder, name: str = "torch-fp32", options: LoadOptions = LoadOptions()) -> "TorchBackend":
        model, _encoding = load_model(folder, device="cpu", dtype=torch.float32)
        return cls(use_c_blocks(to_cpu_linears(model)), name=name)

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
