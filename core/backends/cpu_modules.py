"""Modules the CPU backends swap into a GPT for inference: C kernels (core/kernels/cpu_kernels.c)
for a one-token decode step, oneDNN for the rest. Each falls back to the model's own module for
whatever its kernel does not cover, so the model computes the same thing either way."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import cpu_kernels
from ..model import GPT, Block, CausalSelfAttention, Positions


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _c_step_cache(x: torch.Tensor, pos: Positions, attn: CausalSelfAttention) -> torch.Tensor | None:
    """The cache buffer when this is what the C kernels compute (batch 1, one new token at an int
    position, a cache), else None. A few attribute reads per layer and token: it runs on every step."""
    cache = attn.kv_cache
    if cache is None or not isinstance(pos, int) or x.shape[:2] != (1, 1):
        return None
    return cache.kv


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


class CpuAttention(nn.Module):
    """An attention whose one-token decode step attends in C (the products stay the attention's own)."""

    def __init__(self, attn: CausalSelfAttention):
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor, pos: Positions = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.attn
        kv = _c_step_cache(x, pos, attn)
        if kv is None:
            return attn(x, pos, mask)
        return attn.c_proj(cpu_kernels.attend(attn.c_attn(x), kv, pos))


class CpuBlock(nn.Module):
    """A block whose one-token decode step is one C call (norms, products, attention, GELU, residuals).

    Needs float32 CPU weights (the torch-fp32 backend's); the C block reads them where they are,
    so weights replaced after it is built are not seen.
    """

    def __init__(self, block: Block):
        super().__init__()
        self.block = block
        attn, mlp = block.attn, block.mlp
        self.step = cpu_kernels.DecodeBlock(block.ln_1, attn.c_attn, attn.c_proj, block.ln_2, mlp.c_fc, mlp.c_proj)

    def forward(self, x: torch.Tensor, pos: Positions = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        block = self.block
        kv = _c_step_cache(x, pos, block.attn)
        if kv is None:
            return block(x, pos, mask)
        return self.step(x, kv, pos)


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


def use_c_blocks(model: GPT) -> GPT:
    """Swap each block for a CpuBlock where the C kernels are built (float32 CPU weights)."""
    if cpu_kernels.available():
        blocks = model.transformer.h
        for i, block in enumerate(blocks):
            blocks[i] = CpuBlock(block)
    return model


def use_c_attention(model: GPT) -> GPT:
    """Swap each block's attention for a CpuAttention where the C kernels are built (any products)."""
    if cpu_kernels.available():
        for block in model.transformer.h:
            block.attn = CpuAttention(block.attn)
    return model
