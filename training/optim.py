"""The optimizer and its schedule: AdamW with decay on matrices only, cosine with linear warmup."""

from __future__ import annotations

import math

import torch


def get_lr(step: int, max_steps: int, lr: float, min_lr: float, warmup: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine down to min_lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= max_steps:
        return min_lr
    progress = (step - warmup) / max(1, max_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """Weight decay on 2-D+ tensors (matmul weights, embeddings); none on biases and norms.

    Fused AdamW on CUDA updates every parameter in one kernel launch instead of several per tensor.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
