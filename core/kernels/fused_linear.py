"""One Triton kernel for every matrix-vector product of a batch-1 decode step, with its neighbours fused.

At batch 1 a decode step reads each weight matrix once to multiply it by one vector. cuBLAS does
that in ~4.4-5 us per matrix on an H100 (latency, not bandwidth: a 768 x 2304 bf16 matrix is
3.5 MB, ~1 us of HBM time), and the layer norms, bias, GELU and residual adds around each product
are kernels of their own (~13 per layer, bench/NOTES.md). This kernel computes

    out = residual + act(layer_norm(x) @ W.T + bias)

in one launch, each part optional: the layer norm as a prologue (every program normalises the
whole input vector itself; it is at most a few thousand numbers), GELU (tanh, as GPT-2), bias and
residual as an epilogue, all in fp32 registers. A GPT-2 layer becomes 4 of these, one K/V copy
and the attention kernel. Needs a CUDA GPU and Triton (shipped with PyTorch's CUDA builds).
"""

from __future__ import annotations

import importlib.util

import torch


HAVE_TRITON = importlib.util.find_spec("triton") is not None  # looked up once: torch.compile traces available()


def available(device: torch.device) -> bool:
    return device.type == "cuda" and HAVE_TRITON


_kernel = None


def _build():
    """Define the kernel on first use, so importing this module never needs Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def linear_kernel(x_ptr, w_ptr, b_ptr, res_ptr, ln_w_ptr, ln_b_ptr, out_ptr, N, K, eps,
                      HAS_LN: tl.constexpr, HAS_LN_BIAS: tl.constexpr, HAS_BIAS: tl.constexpr,
                      GELU: tl.constexpr, HAS_RES: tl.constexpr, K_POW2: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        if HAS_LN:  # statistics of the whole input vector, in fp32
            every = tl.arange(0, K_POW2)
            xs = tl.load(x_ptr + every, mask=every < K, other=0.0).to(tl.float32)
            mean = tl.sum(xs, axis=0) / K
            centred = tl.where(every < K, xs - mean, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / K + eps)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            xv = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            if HAS_LN:
                xv = (xv - mean) * rstd * tl.load(ln_w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                if HAS_LN_BIAS:
                    xv += tl.load(ln_b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
            acc += tl.sum(w.to(tl.float32) * xv[None, :], axis=1)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        if GELU:  # 0.5 a (1 + tanh(u)) = a * sigmoid(2u), u = sqrt(2/pi) (a + 0.044715 a^3)
            u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
            acc = acc / (1.0 + tl.exp(-2.0 * u))
        if HAS_RES:
            acc += tl.load(res_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows, acc, mask=row_ok)

    return linear_kernel


def blocks(N: int, K: int) -> dict:
    """Rows per program, K-chunk and warps for an (N, K) matrix.

    A batch-1 product is bound by memory latency, so what matters is how many loads are in flight.
    Few output rows (N <= 1024): 2 rows per program, so there are hundreds of programs, each with
    long 1024-wide chunks. Many rows: 8 rows per program in 256-wide chunks (enough programs
    already; short chunks keep registers free). Chosen from `python bench/fused_linear_gpu.py` on
    an H100, where each GPT-2 matrix's choice is within 2% of the best of 32 (bench/NOTES.md).
    """
    if N <= 1024:
        return {"BLOCK_N": 2, "BLOCK_K": 1024, "num_warps": 4}
    return {"BLOCK_N": 8, "BLOCK_K": 256, "num_warps": 4}


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 norm: torch.nn.LayerNorm | None = None, gelu: bool = False,
                 residual: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
                 config: dict | None = None) -> torch.Tensor:
    """residual + act(norm(x) @ weight.T + bias) for one vector x (K,), weight (N, K) as nn.Linear keeps it.

    Returns a new (N,) tensor. config overrides blocks(N, K) (the benchmark sweeps it).
    """
    global _kernel
    if _kernel is None:
        _kernel = _build()
    import triton

    N, K = weight.shape
    config = config or blocks(N, K)
    out = torch.empty(N, dtype=out_dtype or x.dtype, device=x.device)
    ln_w = norm.weight if norm is not None else None
    ln_b = norm.bias if norm is not None else None
    placeholder = weight  # never read: its flag is off
    _kernel[(triton.cdiv(N, config["BLOCK_N"]),)](
        x, weight, placeholder if bias is None else bias, placeholder if residual is None else residual,
        placeholder if ln_w is None else ln_w, placeholder if ln_b is None else ln_b, out,
        N, K, norm.eps if norm is not None else 0.0,
        HAS_LN=norm is not None, HAS_LN_BIAS=ln_b is not None, HAS_BIAS=bias is not None, GELU=gelu,
        HAS_RES=residual is not None, K_POW2=triton.next_power_of_2(K), **config,
    )
    return out
