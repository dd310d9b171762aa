"""torch-int8: the fp32 checkpoint with its linear layers dynamically quantized to INT8.

Weights are quantized per output channel when the model loads (well under a second for the
small model); activations are quantized per step by the kernel itself. The tied output head is
quantized too: at batch 1 it is the largest matrix (50304 x 384 for the small model) and INT8
reads a quarter of the bytes, ~6x faster than the fp32 step on a 2-core CPU. The input embedding
then reads its rows from the same INT8 table, so the tied matrix is held once.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ..checkpoint import load_model
from ..errors import GptuiError
from ..model import GPT
from .contract import LoadOptions
from .cpu_modules import use_c_attention
from .torch_backend import TorchBackend


class Int8Embedding(nn.Module):
    """Rows of a per-row quantized table: (q - zero_point) * scale, gathered for the ids asked."""

    def __init__(self, table: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)  # (V, C) int8
        self.register_buffer("scales", scales.float())  # (V,)
        self.register_buffer("zero_points", zero_points.float())  # (V,)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.table[ids].float()  # (B, T, C)
        return (rows - self.zero_points[ids, None]) * self.scales[ids, None]


def has_vnni() -> bool:
    """Whether this x86 CPU multiplies int8 with 32-bit accumulation (AVX512-VNNI or AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


def _full_range_linear():
    """PyTorch's dynamic Linear quantizes activations to 7 bits (reduce_range=True): without VNNI the
    int8 kernels sum pairs of products in 16 bits, and full-range values could saturate. With VNNI
    they accumulate in 32 bits, so the eighth bit is free; on the shipped small model it cuts the
    validation-loss cost of INT8 from +2.4% to +0.6%."""
    from torch.ao.nn.quantized.dynamic import Linear

    class FullRangeLinear(Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False).to(x.dtype)

    return FullRangeLinear


def quantize_int8(model: GPT) -> GPT:
    """Quantize every nn.Linear (head included) to per-channel INT8 in place; embed from the head's table."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        raise GptuiError("torch-int8 needs torch.ao.quantization, which this PyTorch build lacks") from None
    mapping = {nn.Linear: _full_range_linear()} if has_vnni() and torch.backends.quantized.engine in ("x86", "fbgemm") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, mapping=mapping, inplace=True)
    weight, _bias = model.lm_head._packed_params._weight_bias()  # per-channel qint8 (V, C)
    model.transformer.wte = Int8Embedding(weight.int_repr(), weight.q_per_channel_scales(),
                                          weight.q_per_channel_zero_points())
    return model


class TorchInt8Backend(TorchBackend):
    @classmethod
    def load(cls, folder, name: str = "torch-int8", options: LoadOptions = LoadOptions()) -> "TorchInt8Backend":
        model, _encoding = load_model(folder, device="cpu", dtype=torch.float32)
        return cls(use_c_attention(quantize_int8(model)), name=name)

    @property
    def nbytes(self) -> int:
        """INT8 weights (the tied matrix counted once) plus the fp32 rest."""
        total = 0
        for module in self.model.modules():
            if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
                weight, bias = module._packed_params._weight_bias()
                total += weight.numel() + weight.q_per_channel_scales().numel() * 4
                total += bias.numel() * bias.element_size() if bias is not None else 0
        # fp32 parameters that stayed fp32 (norms, positions); the INT8 embedding shares the head's
        total += sum(p.numel() * p.element_size() for p in self.model.parameters())
        return total
