"""The fused loss kernel (training/fused_loss.py) against compiled cross-entropy, on a GPU.

    python bench/fused_loss_gpu.py                   # GPT-2's micro-batch: 32 x 1024 rows, 50304 columns

Times, on the same bf16 logits: torch.compile'd cross_entropy forward + backward (what the plain
loss costs), and the fused kernel (one launch that leaves the gradient in the logits) for each
block size, warp count, direction of the second pass (backwards, it starts on the blocks the
first pass read last, the likeliest still in L2) and pair of L2 eviction policies (keep the
first pass's reads, stream the second's). A persistent variant (a few programs per SM walking
the rows) was slower: 3.2-5.9 ms against 2.9 (bench/NOTES.md). Prints GB/s as if each read the
logits twice and wrote them once.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from gptui.core.benchmark import cuda_ms
from gptui.training import fused_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=32 * 1024)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("fused_loss_gpu.py needs a CUDA GPU")
    torch.manual_seed(0)
    logits = torch.randn(args.rows, args.vocab, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(0, args.vocab, (args.rows,), device="cuda")
    gbytes = 3 * logits.numel() * logits.element_size() / 1e9

    leaf = logits.clone().requires_grad_()
    ce = torch.compile(lambda x, t: F.cross_entropy(x.float(), t, reduction="sum"))
    # autograd.grad returns the gradient without adding it into leaf.grad (training has no such add)
    plain = cuda_ms(lambda: torch.autograd.grad(ce(leaf, targets), leaf), args.repeat, warmup=2)
    print(f"{'compiled cross_entropy fwd+bwd':<34} {plain:8.3f} ms")
    kernel = fused_loss._build()
    policies = {"plain": ("", ""), "keep-first": ("evict_last", "evict_first")}
    for block in (2048, 4096, 8192):
        for warps in (8, 16, 32):
            for reverse in (0, 1):
                for policy, (keep, stream) in policies.items():
                    work = logits.clone()
                    losses = torch.empty(args.rows, device="cuda")
                    ms = cuda_ms(lambda: kernel[(args.rows,)](work, work.stride(0), targets, losses, args.vocab, BLOCK=block,
                                                            REVERSE=reverse, KEEP=keep, STREAM=stream, num_warps=warps),
                                 args.repeat)
                    name = f"BLOCK={block} warps={warps} reverse={reverse} {policy}"
                    print(f"{name:<48} {ms:8.3f} ms  {gbytes / ms * 1e3:7.0f} GB/s  {plain / ms:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
