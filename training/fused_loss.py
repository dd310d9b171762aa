"""Output head + cross-entropy whose backward never reads the logits again.

The plain loss keeps the (rows, vocab) logits for backward, then reads them a second time to
form softmax - one_hot and multiplies that by the incoming scalar gradient: for GPT-2 at
micro-batch 32 x 1024 that is three passes over 3.3 GB of bf16 logits per micro-batch. Here the
forward pass overwrites the logits, in place, with d(loss)/d(logits) while it computes the loss
(one Triton program per row: an online max/sum-exp pass, then a pass that writes the gradient),
and backward only multiplies the incoming scalar into the two much smaller matrix products
(grad_h = G @ W, grad_W = G.T @ h). The same trick as llm.c's fused classifier.

Without a CUDA GPU or Triton the same function runs a torch version of the row kernel, which
is what the CPU tests check the algebra with.
"""

from __future__ import annotations

import torch

from ..core.kernels.fused_linear import available as triton_available

IGNORE = -1  # a target that is not trained on (SFT prompts, padding)
_kernel = None


def _build():
    """Define the Triton kernel on first use, so importing this module never needs Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def loss_and_grad_kernel(logits_ptr, stride, targets_ptr, loss_ptr, V, BLOCK: tl.constexpr,
                             REVERSE: tl.constexpr = 0, KEEP: tl.constexpr = "", STREAM: tl.constexpr = ""):
        # REVERSE=1 walks the second pass backwards; KEEP and STREAM are the L2 eviction policies
        # of the first pass's loads and the second pass's loads and stores (bench/fused_loss_gpu.py)
        row = tl.program_id(0).to(tl.int64)
        ptr = logits_ptr + row * stride
        cols = tl.arange(0, BLOCK)
        m = tl.full((BLOCK,), -1e30, tl.float32)  # finite, so exp(m - m_new) is never inf - inf
        s = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, V, BLOCK):  # per-lane running max and sum of exp
            x = tl.load(ptr + start + cols, mask=start + cols < V, other=float("-inf"),
                        eviction_policy=KEEP).to(tl.float32)
            m_new = tl.maximum(m, x)
            s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
            m = m_new
        row_max = tl.max(m, axis=0)
        lse = row_max + tl.log(tl.sum(s * tl.exp(m - row_max), axis=0))
        target = tl.load(targets_ptr + row)
        valid = target != -1
        safe = tl.where(valid, target, 0)
        target_logit = tl.load(ptr + safe).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - target_logit, 0.0))
        weight = tl.where(valid, 1.0, 0.0)
        blocks = tl.cdiv(V, BLOCK)
        for i in range(0, blocks):  # softmax - one_hot, zero for rows without a target
            idx = (i + REVERSE * (blocks - 1 - 2 * i)) * BLOCK + cols
            ok = idx < V
            x = tl.load(ptr + idx, mask=ok, other=0.0, eviction_policy=STREAM).to(tl.float32)
            g = tl.exp(x - lse) - tl.where(idx == safe, 1.0, 0.0)
            tl.store(ptr + idx, (g * weight).to(logits_ptr.dtype.element_ty), mask=ok, eviction_policy=STREAM)

    return loss_and_grad_kernel


def loss_and_grad_triton_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    global _kernel
    if _kernel is None:
        _kernel = _build()
    losses = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)
    # From bench/fused_loss_gpu.py on an H100, 32k x 50304 bf16: 2.68 ms against 2.95 for the best
    # forward-walking kernel without eviction hints: more of the second pass's reads hit L2.
    _kernel[(logits.size(0),)](logits, logits.stride(0), targets, losses, logits.size(1), BLOCK=4096,
                               REVERSE=1, KEEP="evict_last", STREAM="evict_first", num_warps=16)
    return losses


def loss_and_grad_torch_(logits: torch.Tensor, targets: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The kernel's contract in torch: per-row losses; logits overwritten with their gradient."""
    losses = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)
    for start in range(0, logits.size(0), chunk):
        block, t = logits[start : start + chunk], targets[start : start + chunk]
        x = block.float()
        valid = t != IGNORE
        safe = t.clamp(min=0)
        lse = torch.logsumexp(x, dim=-1)
        losses[start : start + chunk] = (lse - x.gather(1, safe[:, None]).squeeze(1)) * valid
        grad = torch.exp(x - lse[:, None])
        grad[torch.arange(len(safe), device=grad.device), safe] -= 1.0  # - one_hot, without a (rows, V) one_hot
        block.copy_(grad * valid[:, None])
    return losses


def loss_rows_and_grad_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy (0 where the target is IGNORE); `logits` becomes d(sum)/d(logits)."""
    if triton_available(logits.device) and logits.is_contiguous():
        return loss_and_grad_triton_(logits, targets.contiguous())
    return loss_and_grad_torch_(logits, targets)


class LinearCrossEntropy(torch.autograd.Function):
    """cross_entropy(h @ weight.T, targets, ignore_index=-1, reduction="sum") for h (rows, C).

    h should come in the autocast dtype (training/loss.py casts it inside the compiled model):
    then neither it nor its gradient makes an fp32 round trip through memory here.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        device = h.device.type
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        hc, w = h.to(compute), weight.to(compute)
        with torch.autocast(device, enabled=False):
            grad_logits = hc @ w.t()  # (rows, V): becomes the gradient below
            loss = loss_rows_and_grad_(grad_logits, targets).sum()
        ctx.save_for_backward(grad_logits, hc, weight)
        ctx.h_dtype = h.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_logits, hc, weight = ctx.saved_tensors
        # The incoming scale goes into the (vocab, C) weight, rounded once from fp32 as the forward's
        # copy was: grad_h comes out of the matmul final, with no pass over the (rows, C) product.
        w_scaled = (weight.float() * grad_loss.float()).to(grad_logits.dtype)
        grad_h = (grad_logits @ w_scaled).to(ctx.h_dtype)
        grad_w = (grad_logits.t() @ hc).float().mul_(grad_loss.float()).to(weight.dtype)
        return grad_h, grad_w, None
