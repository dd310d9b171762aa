"""Batch-1 matrix-vector products on the CPU: our C kernel against oneDNN and MKL, and the decode step four ways.

    python bench/cpu_gemv.py                   # GPT-2 124M's shapes, 2 threads
    python bench/cpu_gemv.py --preset small --rounds 9   # the step for the small preset

Part 1: GB/s streamed through each GPT-2 matrix shape (24 distinct copies each, so they come from
memory, not cache) by core.kernels.cpu_kernels.gemv, oneDNN on its prepacked layout (the torch-fp32 path
without the C kernel) and MKL's addmm on (in, out) weights; a plain sum over 400 MB gives the
memory's rate at that moment. Part 2: the torch-fp32 decode step (ms/token, position 512-560) as
shipped (each block one C call), block by block in PyTorch with the C products and C attention,
with PyTorch's SDPA for the attention, and with no C kernel (oneDNN and SDPA, what an install
without a compiler runs), the four taking turns. This shared machine's memory rate moves a lot
from minute to minute, so only rows of one run compare.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gptui.core.kernels import cpu_kernels
from gptui.core.backends import load_backend
from gptui.core.backends.cpu_modules import CpuAttention, CpuBlock, CpuLinear
from gptui.core.checkpoint import save_checkpoint
from gptui.core.config import preset
from gptui.core.model import GPT

SHAPES = {"c_attn": (2304, 768), "attn.c_proj": (768, 768), "c_fc": (3072, 768), "mlp.c_proj": (768, 3072),
          "lm_head": (50304, 768)}


def seconds(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemv_table(rounds: int) -> list[str]:
    rows = ["| matrix | ours (GB/s) | oneDNN packed (GB/s) | MKL addmm (GB/s) |", "|---|---:|---:|---:|"]
    for name, (n, k) in SHAPES.items():
        copies = 2 if n > 10000 else 24
        weights = [torch.randn(n, k) for _ in range(copies)]
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights]
        transposed = [w.t().contiguous() for w in weights]
        x, b = torch.randn(1, k), torch.randn(n)
        gb = copies * n * k * 4 / 1e9
        ours = seconds(lambda: [cpu_kernels.gemv(x, w, b) for w in weights], rounds)
        onednn = seconds(lambda: [torch.ops.mkldnn._linear_pointwise(x, p, b, "none", [], "") for p in packed], rounds)
        mkl = seconds(lambda: [torch.addmm(b, x, t) for t in transposed], rounds)
        rows.append(f"| {name} {n}x{k} | {gb / ours:.1f} | {gb / onednn:.1f} | {gb / mkl:.1f} |")
    flat = torch.randn(100_000_000)
    rows.append(f"\nplain sum over 400 MB: {0.4 / seconds(flat.sum, rounds):.1f} GB/s")
    return rows


def step_table(preset_name: str, rounds: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / preset_name
        torch.manual_seed(0)
        save_checkpoint(folder, GPT(preset(preset_name)), "gpt2-code")
        variants = {name: load_backend("torch-fp32", folder) for name in ("ours", "attend", "sdpa", "onednn")}
    for name in ("attend", "sdpa", "onednn"):  # block by block in PyTorch, as before the C block
        blocks = variants[name].model.transformer.h
        for i, block in enumerate(blocks):
            blocks[i] = block.block if isinstance(block, CpuBlock) else block
            if name == "attend":
                blocks[i].attn = CpuAttention(blocks[i].attn)
    for m in variants["onednn"].model.modules():
        if isinstance(m, CpuLinear):  # what CpuLinear does when the C kernel is not built
            m.gemv, m.packed = False, torch.ops.mkldnn._reorder_linear_weight(m.weight.clone(), 1)
    prompt = list(range(1000, 1512))

    def step_ms(backend, tokens: int = 48) -> float:
        backend.prefill(prompt)
        start = time.perf_counter()
        for i in range(tokens):
            backend.decode(100 + i)
        return (time.perf_counter() - start) / tokens * 1000

    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, backend in variants.items():
            times[name].append(step_ms(backend))
    ours, attend, sdpa, onednn = (statistics.median(times[name]) for name in variants)
    return [f"\ndecode step, {preset_name}, position 512-560, median of {rounds} turns:",
            f"  C blocks (torch-fp32)                  {ours:.2f} ms",
            f"  C products + C attention, PyTorch rest {attend:.2f} ms  ({attend / ours:.2f}x ours)",
            f"  C products + SDPA                      {sdpa:.2f} ms  ({sdpa / ours:.2f}x ours)",
            f"  oneDNN packed + SDPA (no C kernels)    {onednn:.2f} ms  ({onednn / ours:.2f}x ours)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if not cpu_kernels.available():
        raise SystemExit("the C kernel is not built: install gptui where a C compiler is (pip install -e .)")
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, kernel: {cpu_kernels.isa()}\n")
    print("\n".join(gemv_table(args.rounds) + step_table(args.preset, args.rounds)))


if __name__ == "__main__":
    main()
