"""Next-token loss: the plain form, a chunked linear + cross-entropy that never holds all logits,
and a fused one (training/fused_loss.py) whose backward never reads the logits again.

Both return the *sum* of per-token losses over targets >= 0 (-1 marks positions that are not
trained on: SFT prompts and padding). The trainer divides by the number of targets in the whole
optimizer step, so micro-batches and DDP ranks add up to one mean no matter how they are cut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.model import GPT
from .fused_loss import IGNORE, LinearCrossEntropy, loss_and_grad_torch_, triton_available

KINDS = ("plain", "chunked", "fused")
CHUNK_ROWS = 4096  # rows of logits alive at once in the chunked loss and eval_loss: 4096 x 50304 fp32 = 0.8 GB


def resolve_loss(kind: str, device: torch.device) -> str:
    """'auto' is the fused loss where its Triton kernel runs (CUDA), the plain one elsewhere."""
    if kind != "auto":
        return kind
    return "fused" if triton_available(device) else "plain"


def plain_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logits for every position, then cross-entropy in fp32. Compiled, inductor fuses the upcast."""
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")


def head_input(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """The final norm's output (B*T, C) in the dtype the head's matmul runs in.

    Under autocast the norm returns fp32; cast here, inside the compiled region, the norm kernel
    writes bf16 directly, and the head's gradient comes back in bf16: an fp32 (rows, C) tensor
    and its gradient never travel through memory.
    """
    h = model.hidden(x)
    device = h.device.type
    if torch.is_autocast_enabled(device):
        h = h.to(torch.get_autocast_dtype(device))
    return h.flatten(0, 1)


def eval_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """plain_loss's value, without gradients, the head applied chunk_rows rows at a time.

    plain_loss holds every logit and two fp32 copies (the upcast and its log-softmax): 82 GB for
    GPT-2 at micro-batch 160, more than an 80 GB GPU has beside the training state.
    """
    h = head_input(model, x)
    targets = y.flatten()
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, h.size(0), chunk_rows):
        logits = model.lm_head(h[start : start + chunk_rows]).float()
        total += F.cross_entropy(logits, targets[start : start + chunk_rows], ignore_index=IGNORE, reduction="sum")
    return total


def _chunk_loss_and_grad(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """Loss sum over one chunk of rows and d(loss)/d(logits), without keeping the logits."""
    logits = (h @ weight.t()).float()  # (n, V), overwritten with its gradient
    loss = loss_and_grad_torch_(logits, targets, chunk=logits.size(0)).sum()
    return loss, logits.to(h.dtype)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """cross_entropy(h @ weight.T, targets, reduction="sum"), computing gradients chunk by chunk
    in the forward pass so that no (rows, vocab) tensor outlives its chunk."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_fn, chunk_rows):
        device = h.device.type
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        w = weight.to(compute)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.size(0), chunk_rows):
            hc = h[start : start + chunk_rows].to(compute)
            chunk_loss, grad_logits = chunk_fn(hc, w, targets[start : start + chunk_rows])
            loss += chunk_loss
            grad_h[start : start + chunk_rows] = grad_logits @ w
            grad_w += (grad_logits.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None


class LossFunction:
    """model, x, y -> summed loss; `kind` picks plain, chunked or fused, `compile` wraps the heavy
    parts with torch.compile (in `compile_mode`, e.g. "max-autotune-no-cudagraphs" to tune matmuls)."""

    def __init__(self, kind: str = "plain", compile: bool = False, chunk_rows: int = CHUNK_ROWS,
                 compile_mode: str = "default"):
        if kind not in KINDS:
            raise ValueError(f"unknown loss kind {kind!r}")
        self.kind = kind
        self.chunk_rows = chunk_rows
        wrap = (lambda fn: torch.compile(fn, mode=compile_mode)) if compile else (lambda fn: fn)
        self._plain = wrap(plain_loss)
        self._head_input = wrap(head_input)
        self._chunk = wrap(_chunk_loss_and_grad)

    def __call__(self, model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "plain":
            return self._plain(model, x, y)
        h = self._head_input(model, x)  # (B*T, C)
        if self.kind == "fused":
            return LinearCrossEntropy.apply(h, model.lm_head.weight, y.flatten())
        return _ChunkedLinearCrossEntropy.apply(h, model.lm_head.weight, y.flatten(), self._chunk, self.chunk_rows)
