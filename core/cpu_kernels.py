"""The C kernels of a batch-1 CPU decode step (core/cpu_kernels.c) behind checked Python calls.

The extension is built at install time when a C compiler is there; without it `available()` is
False and the CPU backend multiplies through oneDNN instead.
"""

from __future__ import annotations

import torch  # first: the extension's libgomp.so.1 must resolve to the one PyTorch loaded

try:
    from . import _cpu_kernels as _c
except ImportError:  # built without a compiler
    _c = None


ISAS = ("avx512", "avx2", "portable")


def available() -> bool:
    return _c is not None


def isa() -> str:
    """The kernel in use: avx512, avx2 or portable, the best this CPU runs unless select() said otherwise ('' if not built)."""
    return _c.isa() if _c is not None else ""


def select(name: str) -> str:
    """Use the avx512, avx2 or portable kernel (tests run each); a CPU lacking it gets its best. Returns the one used."""
    if name not in ISAS:
        raise ValueError(f"unknown kernel {name!r}; choose from {', '.join(ISAS)}")
    return _c.select(name)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """weight @ x + bias for one row x (..., K) on the CPU; returns (..., N), x's leading shape kept.

    weight (N, K) and bias (N,) must be contiguous float32 CPU tensors (CpuLinear makes them so
    once); x is made contiguous here.
    """
    n, k = weight.shape
    if x.numel() != k or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"gemv needs one float32 CPU row of {k} values, got {x.dtype} {tuple(x.shape)} on {x.device}")
    x = x.contiguous()
    y = torch.empty(*x.shape[:-1], n)
    _c.gemv(weight.data_ptr(), x.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(), n, k,
            torch.get_num_threads())
    return y


def attend(qkv: torch.Tensor, kv: torch.Tensor, pos: int) -> torch.Tensor:
    """One new token's attention: its k and v go into the cache at pos, then its q attends over 0..pos.

    qkv (..., 3C) is c_attn's output for that one token (q, k, v, each n_head x head_dim); kv is
    the layer's contiguous float32 cache (2, 1, n_head, max_len, head_dim). Returns (..., C), the
    heads side by side, as the attention's output projection takes them.
    """
    if kv.dim() != 5 or kv.shape[:2] != (2, 1) or kv.dtype != torch.float32 or not kv.is_contiguous() \
            or kv.device.type != "cpu":
        raise ValueError(f"attend needs a contiguous float32 CPU cache (2, 1, heads, length, head_dim), "
                         f"got {kv.dtype} {tuple(kv.shape)} on {kv.device}")
    _, _, n_head, max_len, head_dim = kv.shape
    c = n_head * head_dim
    if qkv.numel() != 3 * c or qkv.dtype != torch.float32 or qkv.device.type != "cpu":
        raise ValueError(f"attend needs one float32 CPU token of {3 * c} values, got {qkv.dtype} {tuple(qkv.shape)}")
    if not 0 <= pos < max_len:
        raise ValueError(f"position {pos} is outside the cache of {max_len}")
    qkv = qkv.contiguous()
    y = torch.empty(*qkv.shape[:-1], c)
    _c.attend(qkv.data_ptr(), kv.data_ptr(), y.data_ptr(), n_head, head_dim, max_len, pos, torch.get_num_threads())
    return y
