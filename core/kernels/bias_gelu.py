"""gelu(z + bias) for training on a GPU, whose backward also sums the bias gradient in the same pass.

In a GPT-2 training step compiled by inductor, the MLP's backward ran GELU's backward as one
kernel (read the incoming gradient and the pre-activation, write d/dz) and the bias gradient as
another that read both again to sum d/dz over the rows: 3.6 ms of a 240 ms step on an H100 at
micro-batch 128 (bench/NOTES.md). Here c_fc's bias moves out of the matrix product into the GELU
kernel, and the backward kernel keeps per-column partial sums in registers while it writes d/dz,
so the rows are read once. GELU is the tanh form GPT-2 uses, computed in fp32.

Both directions are registered as custom ops (gptui::bias_gelu), so torch.compile treats them as
single calls. On a CPU, or without Triton, the ops run the same function in plain torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fused_linear import available

BLOCK_M, BLOCK_N = 32, 256  # the forward's tiles
BACKWARD_CONFIG = dict(block_m=32, block_n=128, rows=512, warps=4, stages=3)  # best of 64 in bench/bias_gelu_gpu.py (H100)
_kernels = None


def _build() -> dict:
    """Define the Triton kernels on first use, so importing this module never needs Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(z_ptr, b_ptr, out_ptr, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        ok = (rows[:, None] < M) & (cols[None, :] < N)
        at = rows[:, None] * N + cols[None, :]
        a = tl.load(z_ptr + at, mask=ok, other=0.0).to(tl.float32)
        a += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        u = 0.7978845608028654 * (a + 0.044715 * a * a * a)
        tl.store(out_ptr + at, (a / (1.0 + tl.exp(-2.0 * u))).to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def backward_kernel(grad_ptr, z_ptr, b_ptr, dz_ptr, partial_ptr, M, N, ROWS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr):
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        column_sum = tl.zeros((BLOCK_N,), tl.float32)
        first = tl.program_id(0).to(tl.int64) * ROWS
        for start in tl.range(0, ROWS, BLOCK_M, num_stages=STAGES):
            rows = first + start + tl.arange(0, BLOCK_M)
            ok = (rows[:, None] < M) & col_ok[None, :]
            at = rows[:, None] * N + cols[None, :]
            a = tl.load(z_ptr + at, mask=ok, other=0.0).to(tl.float32) + bias[None, :]
            g = tl.load(grad_ptr + at, mask=ok, other=0.0).to(tl.float32)
            t = 2.0 / (1.0 + tl.exp(-2.0 * 0.7978845608028654 * (a + 0.044715 * a * a * a))) - 1.0  # tanh(u)
            slope = 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * a * a)
            dz = g * slope
            tl.store(dz_ptr + at, dz.to(dz_ptr.dtype.element_ty), mask=ok)
            column_sum += tl.sum(tl.where(ok, dz, 0.0), axis=0)
        tl.store(partial_ptr + tl.program_id(0) * N + cols, column_sum, mask=col_ok)

    return {"forward": forward_kernel, "backward": backward_kernel}


def _kernel(name: str):
    global _kernels
    _kernels = _kernels or _build()
    return _kernels[name]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _triton(t: torch.Tensor) -> bool:
    return available(t.device) and t.is_contiguous()


@torch.library.custom_op("gptui::bias_gelu", mutates_args=())
def bias_gelu(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(z + bias) with z (..., N) and bias (N,); the result has z's dtype."""
    if not _triton(z):
        wide = torch.promote_types(z.dtype, torch.float32)
        return F.gelu(z.to(wide) + bias.to(wide), approximate="tanh").to(z.dtype)
    M, N = z.numel() // z.size(-1), z.size(-1)
    out = torch.empty_like(z)
    grid = (_cdiv(M, BLOCK_M), _cdiv(N, BLOCK_N))
    _kernel("forward")[grid](z, bias, out, M, N, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=8)
    return out


@bias_gelu.register_fake
def _(z, bias):
    return torch.empty_like(z)


@torch.library.custom_op("gptui::bias_gelu_backward", mutates_args=())
def _bias_gelu_backward(grad: torch.Tensor, z: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/dz, d/dbias) of sum(grad * gelu(z + bias)); d/dbias in fp32 (or wider), summed over every row."""
    if not (_triton(z) and grad.is_contiguous()):
        wide = torch.promote_types(z.dtype, torch.float32)
        dz = torch.ops.aten.gelu_backward(grad.to(wide), z.to(wide) + bias.to(wide), approximate="tanh")
        return dz.to(z.dtype), dz.reshape(-1, z.size(-1)).sum(0).to(wide)
    return backward_triton(grad, z, bias, **BACKWARD_CONFIG)


def backward_triton(grad, z, bias, block_m: int, block_n: int, rows: int, warps: int, stages: int):
    """The backward kernel with a given tiling (BACKWARD_CONFIG in training; bench/bias_gelu_gpu.py sweeps it)."""
    M, N = z.numel() // z.size(-1), z.size(-1)
    dz = torch.empty_like(z)
    programs = _cdiv(M, rows)
    partial = torch.empty(programs, N, dtype=torch.float32, device=z.device)
    grid = (programs, _cdiv(N, block_n))
    _kernel("backward")[grid](grad, z, bias, dz, partial, M, N, ROWS=rows, BLOCK_M=block_m, BLOCK_N=block_n,
                              STAGES=stages, num_warps=warps)
    return dz, partial.sum(0)


@_bias_gelu_backward.register_fake
def _(grad, z, bias):
    return torch.empty_like(z), bias.new_empty(bias.shape, dtype=torch.promote_types(z.dtype, torch.float32))


def _setup_context(ctx, inputs, output):
    z, bias = inputs
    ctx.save_for_backward(z, bias)


def _backward(ctx, grad):
    z, bias = ctx.saved_tensors
    dz, dbias = _bias_gelu_backward(grad.contiguous(), z, bias)
    return dz, dbias.to(bias.dtype)


bias_gelu.register_autograd(_backward, setup_context=_setup_context)

