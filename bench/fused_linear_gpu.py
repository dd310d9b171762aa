"""Time the fused decode kernel (core/kernels/fused_linear.py) per GPT-2 matrix and block choice.

    python bench/fused_linear_gpu.py            # GPT-2 124M shapes, bf16, one GPU

For each matrix of a GPT-2 124M decode step (with the fusions the decode graph uses) and each
(rows per program, K-chunk, warps), the median time of one launch inside a replayed CUDA graph of
100 launches (as in decode), next to cuBLAS's F.linear of the same shape, and what blocks() picks.
Inputs rotate over several weight copies so the L2 cache does not hold them between launches.
"""

from __future__ import annotations

import itertools
import sys

import torch
import torch.nn.functional as F

from gptui.core.kernels.fused_linear import blocks, fused_linear

SHAPES = [  # (name, N, K, fusions)
    ("attn.c_attn + ln_1", 2304, 768, dict(norm=True)),
    ("attn.c_proj + residual", 768, 768, dict(residual=True)),
    ("mlp.c_fc + ln_2 + gelu", 3072, 768, dict(norm=True, gelu=True)),
    ("mlp.c_proj + residual", 768, 3072, dict(residual=True)),
    ("lm_head + ln_f", 50304, 768, dict(norm=True)),
]
COPIES = 8  # 8 x the matrix: past the H100's 50 MB L2 for all but the smallest


def graph_time_us(fn, launches: int = 100, replays: int = 10) -> float:
    """Median microseconds per launch of fn, captured `launches` times in one graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(launches):
            fn(i)
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / launches)
    return sorted(times)[len(times) // 2]


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("fused_linear_gpu.py needs a CUDA GPU")
    torch.manual_seed(0)
    dtype = torch.bfloat16
    print(f"GPU: {torch.cuda.get_device_name()} · bf16 · one launch inside a replayed graph of 100")
    print("\n| matrix | cuBLAS F.linear (us) | fused, blocks() (us) | best fused (us) | best (rows, chunk, warps) | GB/s at best |")
    print("|---|---:|---:|---:|---|---:|")
    for name, N, K, fusions in SHAPES:
        copies = max(1, min(COPIES, int(400e6 // (N * K * 2))))
        weights = [torch.randn(N, K, device="cuda", dtype=dtype) * 0.02 for _ in range(copies)]
        bias = torch.randn(N, device="cuda", dtype=dtype)
        x, residual = torch.randn(K, device="cuda", dtype=dtype), torch.randn(N, device="cuda", dtype=dtype)
        norm = torch.nn.LayerNorm(K, device="cuda", dtype=dtype) if fusions.get("norm") else None
        kwargs = dict(norm=norm, gelu=fusions.get("gelu", False), residual=residual if fusions.get("residual") else None)
        with torch.no_grad():
            ref = F.linear(norm(x) if norm else x, weights[0], bias)
            if fusions.get("gelu"):
                ref = F.gelu(ref, approximate="tanh")
            if fusions.get("residual"):
                ref = ref + residual
            got = fused_linear(x, weights[0], bias, **kwargs)
            error = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
            assert error < 2e-2, f"{name}: relative error {error:.2e}"
            cublas = graph_time_us(lambda i: F.linear(x, weights[i % copies], bias))
            chosen = graph_time_us(lambda i: fused_linear(x, weights[i % copies], bias, **kwargs))
            results = {}
            for rows, chunk, warps in itertools.product((2, 4, 8, 16), (256, 512, 1024, 4096), (2, 4)):
                if rows * chunk > 32768 or chunk > 2 * max(K, 256):
                    continue
                config = {"BLOCK_N": rows, "BLOCK_K": chunk, "num_warps": warps}
                results[(rows, chunk, warps)] = graph_time_us(
                    lambda i: fused_linear(x, weights[i % copies], bias, config=config, **kwargs))
        best = min(results, key=results.get)
        gbps = N * K * 2 / (results[best] * 1e-6) / 1e9
        print(f"| {name} ({N}x{K}) | {cublas:.2f} | {chosen:.2f} (blocks {tuple(blocks(N, K).values())}) | "
              f"{results[best]:.2f} | {best} | {gbps:.0f} |", flush=True)
        top = sorted(results, key=results.get)[:5]
        print("|  | next best: " + ", ".join(f"{c} {results[c]:.2f}" for c in top[1:]) + " | | | | |", flush=True)


if __name__ == "__main__":
    main()
