"""The C matrix-vector kernel (core/cpu_kernels.c) behind a checked Python call.

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
