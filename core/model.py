"""GPT-2: pre-LN transformer with learned positions and a tied output head.

Parameter names follow Hugging Face's GPT2LMHeadModel (transformer.h.0.attn.c_attn, ...), so
weights map 1:1 (HF stores the Conv1D weights transposed; the converters transpose them).
This file imports torch only (Triton, for training on a GPU, through bias_gelu; our optional C
kernels, for the CPU decode step, through cpu_kernels): no tokenizer, no files, no printing.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import cpu_kernels
from .kernels.fused_linear import available
from .kernels.bias_gelu import bias_gelu
from .config import GPTConfig


class KVCache(nn.Module):
    """Preallocated keys and values for one attention layer, in one buffer (2, B, nh, L, hs).

    Keeping both in one tensor lets a decode step write its new key and value with one copy.
    """

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, device=None, dtype=None):
        super().__init__()
        shape = (2, batch, n_head, max_len, head_dim)
        self.register_buffer("kv", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    @property
    def k(self) -> torch.Tensor:
        return self.kv[0]

    @property
    def v(self) -> torch.Tensor:
        return self.kv[1]

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T, hs) at positions pos..pos+T-1; return everything up to there."""
        end = pos + k.size(2)
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.kv_cache: KVCache | None = None
        self.cpu_decode = False  # set by the torch-int8 backend where core/kernels/cpu_kernels.c is built

    def forward(self, x: torch.Tensor, pos: int | None = None) -> torch.Tensor:
        B, T, C = x.shape
        if self.cpu_decode and B == T == 1 and pos is not None and self.kv_cache is not None:
            return self.c_proj(cpu_kernels.attend(self.c_attn(x), self.kv_cache.kv, pos))
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        mask, causal = None, True
        if self.kv_cache is not None and pos is not None:
            k, v = self.kv_cache.update(pos, k, v)  # (B, nh, pos+T, hs)
            if T == 1:
                causal = False  # one new query may see every cached key
            elif pos > 0:
                # queries sit at pos..pos+T-1; each sees keys up to its own position
                kpos = torch.arange(pos + T, device=x.device)
                qpos = torch.arange(pos, pos + T, device=x.device)
                mask, causal = kpos[None, :] <= qpos[:, None], False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 used the tanh approximation; keeping it makes logits match Hugging Face exactly.
        if self.training and self.c_fc.bias is not None and available(x.device):
            h = bias_gelu(F.linear(x, self.c_fc.weight), self.c_fc.bias)  # one backward pass for both
        else:
            h = F.gelu(self.c_fc(x), approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)
        self.cpu_step: cpu_kernels.DecodeBlock | None = None  # set by the torch-fp32 backend (CPU, C kernels built)

    def forward(self, x: torch.Tensor, pos: int | None = None) -> torch.Tensor:
        if self.cpu_step is not None and x.shape[:2] == (1, 1) and pos is not None and self.attn.kv_cache is not None:
            return self.cpu_step(x, self.attn.kv_cache.kv, pos)  # the whole block in one C call
        x = x + self.attn(self.ln_1(x), pos)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.fp32_residual = False  # see hidden(); only matters under autocast
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.tie_weights()
        if self.transformer.wte.weight.device.type != "meta":
            self.apply(self._init_weights)
            # Residual projections add into the stream once per layer twice; scaling their init by
            # 1/sqrt(2 * n_layer) keeps the residual variance from growing with depth (GPT-2 paper).
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def tie_weights(self) -> None:
        self.lm_head.weight = self.transformer.wte.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are yielded once

    def setup_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> None:
        """Allocate a KV cache per layer; forward(idx, pos) then reads and extends it."""
        max_len = max_len or self.config.block_size
        ref = self.transformer.wpe.weight  # never quantized, unlike wte (torch-int8 replaces it)
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(
                batch, self.config.n_head, max_len, self.config.head_dim,
                device=device or ref.device, dtype=dtype or ref.dtype,
            )

    def clear_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def hidden(self, idx: torch.Tensor, pos: int | None = None, last_only: bool = False) -> torch.Tensor:
        """The final layer norm's output (B, T, C) for token ids idx (B, T): forward without the head.

        Under autocast the residual stream is carried in the autocast dtype (as llm.c does) unless
        `fp32_residual` is set: every block already returns bf16/fp16, and fp32 adds and norms
        moved twice the bytes: 1.056x tokens/s for GPT-2 training on an H100 (bench/NOTES.md).
        """
        B, T = idx.shape
        start = pos or 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence end {start + T} exceeds block_size {self.config.block_size}")
        positions = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))  # (B, T, C)
        device = x.device.type
        if not self.fp32_residual and torch.is_autocast_enabled(device):
            x = x.to(torch.get_autocast_dtype(device))
        for block in self.transformer.h:
            x = block(x, pos)
        if last_only:
            x = x[:, -1:, :]
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, pos: int | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for token ids idx (B, T).

        With a cache set up, pos is where idx starts in the sequence: the cache holds 0..pos-1.
        last_only returns logits for the final position only (B, 1, V), all generation needs.
        """
        return self.lm_head(self.hidden(idx, pos, last_only))  # (B, T, V)
