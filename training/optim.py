"""The optimizer and its schedule: AdamW with decay on matrices only (or Muon for the blocks'
matrices, AdamW for the rest); linear warmup, then cosine or warmup-stable-decay."""

from __future__ import annotations

import math

import torch


SCHEDULES = ("cosine", "wsd")
OPTIMIZERS = ("adamw", "muon")


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


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device,
                    kind: str = "adamw"):
    """Weight decay on 2-D+ tensors (matmul weights, embeddings); none on biases and norms.

    Fused AdamW on CUDA updates every parameter in one kernel launch instead of several per tensor.
    kind "muon": the transformer blocks' matrices go to Muon instead (MuonAdamW).
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {kind!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [p for n, p in named if kind == "muon" and p.dim() == 2 and ".h." in f".{n}"]
    taken = {id(p) for p in matrices}
    rest = [p for _, p in named if id(p) not in taken]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    return MuonAdamW(matrices, adamw, lr, weight_decay) if matrices else adamw


class MuonAdamW:
    """Muon (momentum orthogonalised by Newton-Schulz) for the blocks' 2-D weights, AdamW for the
    embeddings, biases and norms, seen by the trainer as one optimizer: its schedule sets every
    group's lr, and one state dict holds both. Muon's updates are scaled to AdamW's RMS
    ("match_rms_adamw", as Moonlight did), so one --lr and --weight-decay serve both halves.
    """

    def __init__(self, matrices: list[torch.Tensor], adamw: torch.optim.AdamW, lr: float, weight_decay: float):
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self.adamw = adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self, closure=None) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"muon", "adamw"}:
            raise ValueError("this optimizer state is not Muon + AdamW (was the run started with another --optimizer?)")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
