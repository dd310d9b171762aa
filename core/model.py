"""GPT-2: pre-LN transformer with learned positions and a tied output head.

Parameter names follow Hugging Face's GPT2LMHeadModel (transformer.h.0.attn.c_attn, ...), so
weights map 1:1 (HF stores the Conv1D weights transposed; the converters transpose them).
This file imports torch only: no tokenizer, no files, no printing, no kernels. Backends and
training specialise it by swapping modules (core/backends/cpu_modules.py, fused_modules.py,
training/bias_gelu_mlp.py), never by setting hooks on it.

One forward serves training, prefill and decoding. Its `pos` is either an int (where idx starts;
the cache is read up to the last new token) or a LongTensor of positions (gpt-fast style: the
cache is read whole under a mask, so shapes and addresses never change and nothing reads the
position on the host: what a CUDA graph captures).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig

Positions = int | torch.Tensor | None  # a start, the positions themselves (T,), or no cache


class KVCache(nn.Module):
    """Preallocated keys and values for one attention layer, in one buffer (2, B, nh, L, hs).

    Keeping both in one tensor lets a step write its new keys and values with one copy.
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

    def update(self, pos: int | torch.Tensor, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write kv (2, B, nh, T, hs) at pos; return the keys and values attention reads.

        int pos: rows pos..pos+T-1, then every row up to there. Tensor pos (T,): index_copy_ at
        those rows, then all L rows (the mask hides the ones not written yet).
        """
        if isinstance(pos, torch.Tensor):
            self.kv.index_copy_(3, pos, kv)
            return self.k, self.v
        end = pos + kv.size(3)
        self.kv[:, :, :, pos:end] = kv
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
        self.kv_cache: KVCache | None = None  # set by GPT.setup_cache

    def forward(self, x: torch.Tensor, pos: Positions = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.resid_dropout(self.c_proj(self.attend(self.c_attn(x), pos, mask)))

    def attend(self, qkv: torch.Tensor, pos: Positions = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention for c_attn's output qkv (B, T, 3C): (B, T, C), the heads side by side.

        With a cache and pos, the new keys and values go into the cache first and the queries
        attend over it; mask is GPT.attention_mask's (None: causal, or one query seeing every key).
        """
        B, T, _ = qkv.shape
        C, nh = self.n_embd, self.n_head
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
        if self.kv_cache is None or pos is None:
            # training's ops exactly as they always were: a compiled step's gradients stay bit-identical
            k = k.view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
            v = v.view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
            causal = True
        else:
            kv = qkv[..., C:].view(B, T, 2, nh, C // nh).permute(2, 0, 3, 1, 4)  # (2, B, nh, T, hs): one copy
            k, v = self.kv_cache.update(pos, kv)  # (B, nh, pos+T or L, hs)
            causal = mask is None and T > 1  # a prefill from 0; one new query may see every cached key
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        return y.transpose(1, 2).contiguous().view(B, T, C)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 used the tanh approximation; keeping it makes logits match Hugging Face exactly.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, pos: Positions = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), pos, mask)
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
        # Row numbers of the cache (L,), set by setup_cache: what a static step's mask compares with.
        self.register_buffer("cache_positions", None, persistent=False)
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

    def attentions(self) -> list[CausalSelfAttention]:
        """Every layer's attention, wherever a swapped-in module keeps it."""
        return [m for m in self.modules() if isinstance(m, CausalSelfAttention)]

    def setup_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> None:
        """Allocate a KV cache per layer; forward(idx, pos) then reads and extends it."""
        max_len = max_len or self.config.block_size
        ref = self.transformer.wpe.weight  # never quantized, unlike wte (torch-int8 replaces it)
        device, dtype = device or ref.device, dtype or ref.dtype
        for attn in self.attentions():
            attn.kv_cache = KVCache(batch, self.config.n_head, max_len, self.config.head_dim, device=device, dtype=dtype)
        self.cache_positions = torch.arange(max_len, device=device)

    def clear_cache(self) -> None:
        for attn in self.attentions():
            attn.kv_cache = None
        self.cache_positions = None

    def attention_mask(self, pos: Positions, T: int, dtype: torch.dtype) -> torch.Tensor | None:
        """What T new queries at pos may see in the cache, built once per forward for every layer.

        None where causal attention says it (no cache, or a prefill from 0) or where one query
        sees every key read (an int pos's decode step). Positions tensor: 0 for the cache rows
        written so far, -inf for the rest, (T, L), with no host read of the positions.
        """
        if pos is None or self.cache_positions is None:
            return None
        if isinstance(pos, torch.Tensor):
            hidden = self.cache_positions[None, :] > pos[:, None]  # (T, L)
            return torch.zeros((), dtype=dtype, device=pos.device).masked_fill(hidden, float("-inf"))
        if T == 1 or pos == 0:
            return None
        # queries sit at pos..pos+T-1; each sees keys up to its own position
        keys = torch.arange(pos + T, device=self.cache_positions.device)
        queries = torch.arange(pos, pos + T, device=self.cache_positions.device)
        return keys[None, :] <= queries[:, None]

    def hidden(self, idx: torch.Tensor, pos: Positions = None, last_only: bool = False) -> torch.Tensor:
        """The final layer norm's output (B, T, C) for token ids idx (B, T): forward without the head.

        Under autocast the residual stream is carried in the autocast dtype (as llm.c does) unless
        `fp32_residual` is set: every block already returns bf16/fp16, and fp32 adds and norms
        moved twice the bytes: 1.056x tokens/s for GPT-2 training on an H100 (bench/NOTES.md).
        """
        B, T = idx.shape
        if isinstance(pos, torch.Tensor):
            positions = pos  # (T,); never checked here: reading it would wait for the device
        else:
            start = pos or 0
            if start + T > self.config.block_size:
                raise ValueError(f"sequence end {start + T} exceeds block_size {self.config.block_size}")
            positions = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))  # (B, T, C)
        device = x.device.type
        if not self.fp32_residual and torch.is_autocast_enabled(device):
            x = x.to(torch.get_autocast_dtype(device))
        mask = self.attention_mask(pos, T, x.dtype)
        for block in self.transformer.h:
            x = block(x, pos, mask)
        if last_only:
            x = x[:, -1:, :]
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, pos: Positions = None, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for token ids idx (B, T).

        With a cache set up, pos says where idx goes in the sequence (the cache holds what came
        before): an int start, or a LongTensor (T,) of positions. Without pos the cache is
        neither read nor written (training, reference passes).
        last_only returns logits for the final position only (B, 1, V), all generation needs.
        """
        return self.lm_head(self.hidden(idx, pos, last_only))  # (B, T, V)
