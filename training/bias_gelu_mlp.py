"""The MLP that training swaps into a GPT on a GPU: c_fc's bias and GELU in one Triton op
(core/kernels/bias_gelu.py), whose backward also sums the bias gradient in the same pass."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.kernels.bias_gelu import bias_gelu
from ..core.kernels.fused_linear import available
from ..core.model import GPT, MLP


class BiasGeluMLP(nn.Module):
    """An MLP (the same c_fc, c_proj and dropout, so the same parameter names) that trains through bias_gelu."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.c_fc, self.c_proj, self.dropout = mlp.c_fc, mlp.c_proj, mlp.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.c_fc.bias is not None):
            return MLP.forward(self, x)  # the model's own arithmetic (this module has its attributes)
        h = bias_gelu(F.linear(x, self.c_fc.weight), self.c_fc.bias)  # one backward pass for both
        return self.dropout(self.c_proj(h))


def use_bias_gelu(model: GPT, device: torch.device) -> GPT:
    """Swap every block's MLP for a BiasGeluMLP where the kernel runs (a CUDA GPU with Triton)."""
    if available(device):
        for block in model.transformer.h:
            if isinstance(block.mlp, MLP):
                block.mlp = BiasGeluMLP(block.mlp)
    return model
