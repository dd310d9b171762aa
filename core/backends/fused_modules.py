"""Modules the cuda backend swaps into a GPT so that a one-token step is a few fused kernels.

A batch-1 decode step is bound by kernel launches, not arithmetic. FusedLinear computes
residual + act(linear(norm(x))) in one Triton launch (core/kernels/fused_linear.py) for one
row, or in torch ops with bias + GELU in the matmul's epilogue (one kernel, not three) when
Triton is off or there are many rows. FusedBlock runs a one-token step as 4 of them around the
attention's own `attend` (cache write and scaled_dot_product_attention); anything else goes
through the block as it is. The head fuses the final layer norm the same way.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels.fused_linear import fused_linear
from ..model import GPT, Block, Positions


class FusedLinear(nn.Module):
    """residual + act(linear(norm(x))) for x (..., K), each part optional; the modules are the model's own."""

    def __init__(self, linear: nn.Linear, norm: nn.LayerNorm | None = None, gelu: bool = False,
                 out_dtype: torch.dtype | None = None, triton: bool = False):
        super().__init__()
        self.linear, self.norm, self.gelu, self.out_dtype = linear, norm, gelu, out_dtype
        self.triton = triton  # one row through the Triton kernel (a CUDA GPU with Triton)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = self.linear.weight, self.linear.bias
        if self.triton and x.numel() == weight.size(1):
            y = fused_linear(x.view(-1), weight, bias, norm=self.norm, gelu=self.gelu, out_dtype=self.out_dtype,
                             residual=None if residual is None else residual.view(-1))
            return y.view(*x.shape[:-1], -1)
        x = x if self.norm is None else self.norm(x)
        if self.gelu and bias is not None:  # bias and GELU (tanh, as GPT-2) in the matmul's epilogue
            y = torch._addmm_activation(bias, x.reshape(-1, x.size(-1)), weight.t(), use_gelu=True)
            y = y.view(*x.shape[:-1], -1)
        else:
            y = self.linear(x)
            y = F.gelu(y, approximate="tanh") if self.gelu else y
        y = y if residual is None else residual + y
        return y if self.out_dtype is None else y.to(self.out_dtype)


class FusedBlock(nn.Module):
    """A block whose one-token step at tensor positions (the captured step) is 4 FusedLinears and the attention."""

    def __init__(self, block: Block, triton: bool = False):
        super().__init__()
        self.block = block
        attn, mlp = block.attn, block.mlp
        self.qkv = FusedLinear(attn.c_attn, norm=block.ln_1, triton=triton)
        self.attn_proj = FusedLinear(attn.c_proj, triton=triton)
        self.fc = FusedLinear(mlp.c_fc, norm=block.ln_2, gelu=True, triton=triton)
        self.mlp_proj = FusedLinear(mlp.c_proj, triton=triton)

    def forward(self, x: torch.Tensor, pos: Positions = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[:2] != (1, 1) or not isinstance(pos, torch.Tensor):
            return self.block(x, pos, mask)  # a prefill: flash attention over the rows so far
        x = self.attn_proj(self.block.attn.attend(self.qkv(x), pos, mask), residual=x)
        return self.mlp_proj(self.fc(x), residual=x)


def use_fused_modules(model: GPT, triton: bool) -> GPT:
    """Swap in FusedBlocks and a head that fuses the final norm, Triton on or off (again: just the switch).

    The head returns float32 logits, which the sampler wants, from the one kernel.
    """
    blocks, t = model.transformer.h, model.transformer
    for i, block in enumerate(blocks):
        blocks[i] = block if isinstance(block, FusedBlock) else FusedBlock(block)
    if not isinstance(model.lm_head, FusedLinear):
        model.lm_head = FusedLinear(model.lm_head, norm=t.ln_f, out_dtype=torch.float32)
        t.ln_f = nn.Identity()  # now inside the head
    for module in model.modules():
        if isinstance(module, FusedLinear):
            module.triton = triton
    return model
