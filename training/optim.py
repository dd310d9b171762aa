"""The optimizer and its schedule: AdamW with decay on matrices only; linear warmup, then cosine
or warmup-stable-decay."""

from __future__ import annotations

import math

import torch


SCHEDULES = ("cosine", "wsd")


def get_lr(step: int, max_steps: int, lr: float, min_lr: float, warmup: int, schedule: str = "cosine",
           decay_frac: float = 0.2) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then

    - cosine: down to min_lr at max_steps;
    - wsd (warmup-stable-decay): lr until the last decay_frac of the steps, then linear to min_lr.
      The stable phase does not depend on max_steps, so a run can be lengthened on --resume
      (only where the decay starts moves) as long as the decay has not begun.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= max_steps:
        return min_lr
    if schedule == "wsd":
        decay_steps = max(1, round(decay_frac * max_steps))
        left = max_steps - step  # 1 .. decay_steps inside the decay
        return lr if left > decay_steps else min_lr + (lr - min_lr) * (left - 1) / decay_steps
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
