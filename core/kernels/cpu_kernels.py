"""The C kernels of a batch-1 CPU decode step (core/kernels/cpu_kernels.c) behind checked Python calls.

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
    _check_row(x, k, "row")
    x = x.contiguous()
    y = torch.empty(*x.shape[:-1], n)
    _c.gemv(weight.data_ptr(), x.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(), n, k,
            torch.get_num_threads())
    return y


def _check_cache(kv: torch.Tensor) -> tuple[int, int, int]:
    """(n_head, max_len, head_dim) of a layer's cache, which must suit the kernels."""
    if kv.dim() != 5 or kv.shape[:2] != (2, 1) or kv.dtype != torch.float32 or not kv.is_contiguous() \
            or kv.device.type != "cpu":
        raise ValueError(f"the C kernels need a contiguous float32 CPU cache (2, 1, heads, length, head_dim), "
                         f"got {kv.dtype} {tuple(kv.shape)} on {kv.device}")
    _, _, n_head, max_len, head_dim = kv.shape
    return n_head, max_len, head_dim


def _check_position(pos: int, max_len: int) -> None:
    if not 0 <= pos < max_len:
        raise ValueError(f"position {pos} is outside the cache of {max_len}")


def _check_row(x: torch.Tensor, size: int, what: str = "token") -> None:
    if x.numel() != size or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"the C kernels need one float32 CPU {what} of {size} values, "
                         f"got {x.dtype} {tuple(x.shape)} on {x.device}")


def attend(qkv: torch.Tensor, kv: torch.Tensor, pos: int) -> torch.Tensor:
    """One new token's attention: its k and v go into the cache at pos, then its q attends over 0..pos.

    qkv (..., 3C) is c_attn's output for that one token (q, k, v, each n_head x head_dim); kv is
    the layer's contiguous float32 cache (2, 1, n_head, max_len, head_dim). Returns (..., C), the
    heads side by side, as the attention's output projection takes them.
    """
    n_head, max_len, head_dim = _check_cache(kv)
    _check_position(pos, max_len)
    c = n_head * head_dim
    _check_row(qkv, 3 * c)
    qkv = qkv.contiguous()
    y = torch.empty(*qkv.shape[:-1], c)
    _c.attend(qkv.data_ptr(), kv.data_ptr(), y.data_ptr(), n_head, head_dim, max_len, pos, torch.get_num_threads())
    return y


class DecodeBlock:
    """One GPT-2 block's float32 weights, checked once, that carry one token through the block in C.

    Built from the block's modules (anything with .weight and .bias: nn.Linear, CpuLinear,
    nn.LayerNorm): ln_1 -> c_attn -> attention -> c_proj (+ residual) -> ln_2 -> c_fc -> GELU
    -> mlp_proj (+ residual), one call instead of two dozen module calls and PyTorch ops, each
    some microseconds of dispatch on a step that the weights' traffic makes a few ms long.
    It keeps the tensors, so their addresses stay valid while it lives; weights replaced after it
    is built are not seen (the backend builds it once, after loading).
    """

    def __init__(self, ln_1, c_attn, c_proj, ln_2, c_fc, mlp_proj):
        if ln_1.eps != ln_2.eps:
            raise ValueError(f"the block's two layer norms differ in eps ({ln_1.eps}, {ln_2.eps})")
        c = c_proj.weight.shape[0]
        shapes = [(ln_1, (c,)), (c_attn, (3 * c, c)), (c_proj, (c, c)), (ln_2, (c,)), (c_fc, (4 * c, c)),
                  (mlp_proj, (c, 4 * c))]
        self.tensors = []
        for module, shape in shapes:
            for t, want in ((module.weight, shape), (module.bias, shape[:1])):
                if t is None and len(want) == 2:
                    raise ValueError("the C block needs every weight matrix")
                if t is not None and (tuple(t.shape) != want or t.dtype != torch.float32 or not t.is_contiguous()
                                      or t.device.type != "cpu"):
                    raise ValueError(f"the C block needs contiguous float32 CPU weights of {want}, "
                                     f"got {t.dtype} {tuple(t.shape)} on {t.device}")
                self.tensors.append(t)
        self.addresses = tuple(0 if t is None else t.data_ptr() for t in self.tensors)
        self.c, self.eps = c, float(ln_1.eps)
        self.scratch = torch.empty(9 * c)
        self.cache: torch.Tensor | None = None  # the last cache checked, and its (n_head, max_len)
        self.layout = (0, 0)

    def __call__(self, x: torch.Tensor, kv: torch.Tensor, pos: int) -> torch.Tensor:
        """x (..., C) after the block, for one token at pos; its k and v go into the cache kv at pos."""
        if kv is not self.cache:  # a layer keeps one cache: check it once, not every token
            n_head, max_len, head_dim = _check_cache(kv)
            if n_head * head_dim != self.c:
                raise ValueError(f"a cache of {n_head} x {head_dim} does not fit a block of width {self.c}")
            self.cache, self.layout = kv, (n_head, max_len)
        n_head, max_len = self.layout
        _check_position(pos, max_len)
        _check_row(x, self.c)
        y = x.clone(memory_format=torch.contiguous_format)
        _c.block(self.addresses, y.data_ptr(), kv.data_ptr(), self.scratch.data_ptr(), self.c, n_head, max_len,
                 self.eps, pos, torch.get_num_threads())
        return y
