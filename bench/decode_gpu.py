"""Batch-1 decode on one NVIDIA GPU: the cuda backend next to Hugging Face generate, same weights.

    python bench/decode_gpu.py                      # GPT-2 124M, random weights
    python bench/decode_gpu.py --preset small --modes graph,graph-torch,compile,autotune,eager
    python bench/decode_gpu.py --profile            # where one decode step spends its GPU time

Ours: the cuda backend (bf16 weights, static KV cache) with its decode step captured as a CUDA
graph over fused Triton kernels ("graph") or over plain torch ops ("graph-torch"), compiled by
torch.compile in reduce-overhead mode ("compile") or max-autotune mode ("autotune"), or launched
kernel by kernel ("eager"), driven by core.generate like the app. Theirs: GPT2LMHeadModel.generate
(use_cache=True, greedy) on the same GPU, in bf16 and in fp32. Same prompt, same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import torch

from gptui.core import benchmark as bm
from gptui.tui import peers
from gptui.core.backends.cuda_backend import MODES, CudaBackend
from gptui.core.checkpoint import load_model, save_checkpoint
from gptui.core.config import preset
from gptui.core.hf import load_hf_model
from gptui.core.model import GPT
from gptui.core.tokenizer import get_encoding


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--modes", default="graph,graph-torch", help="Comma-separated: " + ", ".join(MODES) + ".")
    parser.add_argument("--profile", action="store_true", help="Only profile the kernels of eager decode steps.")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("decode_gpu.py needs a CUDA GPU")
    encoding = get_encoding("gpt2-code")
    prompt = bm.code_tokens([bm.stdlib_dir()], "gpt2-code", args.prompt_tokens)
    if args.profile:
        return profile(args.preset, prompt)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / args.preset
        torch.manual_seed(0)
        save_checkpoint(folder, GPT(preset(args.preset, vocab_size=encoding.n_vocab)), "gpt2-code")
        engines, keep = {}, []
        for mode in args.modes.split(","):
            print(f"cuda ({mode}): capturing / compiling ...", file=sys.stderr, flush=True)
            backend = CudaBackend(load_model(folder)[0], mode=mode)
            print(f"cuda ({mode}): {backend.kernels_note}", file=sys.stderr, flush=True)
            keep.append(backend)
            engines[f"ours: cuda ({mode}, bf16)"] = functools.partial(bm.backend_run, backend, encoding, prompt, args.new_tokens)
        for dtype in (torch.bfloat16, torch.float32):
            hf = load_hf_model(folder, dtype=dtype).to("cuda")
            keep.append(hf)
            engines[f"HF generate ({str(dtype).removeprefix('torch.')})"] = functools.partial(peers.hf_run, hf, prompt, args.new_tokens)
        print(f"timing {', '.join(engines)}: {args.runs} runs each, in turns", file=sys.stderr, flush=True)
        rows = [{"engine": name, **speed.as_dict()} for name, speed in bm.interleaved(engines, args.runs).items()]
    hf_best = max(r["decode_tokens_per_s"] for r in rows if r["engine"].startswith("HF"))
    lines = [f"GPU: {torch.cuda.get_device_name()} · {args.preset} · batch 1 · prompt {len(prompt)} tokens · "
             f"{args.new_tokens} new tokens · median of {args.runs} runs · random weights", "",
             "| engine | first token (ms) | decode (tok/s) | vs fastest HF |", "|---|---:|---:|---:|"]
    for r in rows:
        r["vs_fastest_hf"] = round(r["decode_tokens_per_s"] / hf_best, 2)
        lines.append(f"| {r['engine']} | {r['ttft_ms']:.1f} | {r['decode_tokens_per_s']:.1f} | {r['vs_fastest_hf']:.2f}x |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"args": {**vars(args), "json": str(args.json)}, "rows": rows}, indent=2) + "\n")


def profile(preset_name: str, prompt: list[int], steps: int = 20) -> None:
    """GPU time per kernel over eager decode steps: the same kernels the captured graph replays."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    backend = CudaBackend(GPT(preset(preset_name, vocab_size=get_encoding("gpt2-code").n_vocab)), mode="eager")
    backend.prefill(prompt)
    for token in range(5):
        backend.decode(token)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for token in range(steps):
            backend.decode(token)
        torch.cuda.synchronize()
    print(f"{steps} eager decode steps of {preset_name} at position {backend.position - steps}:")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=25, max_name_column_width=60))
    for mode in ("graph", "graph-torch"):
        graph = CudaBackend(backend.model, mode=mode)
        graph.prefill(prompt)
        ms = bm.cuda_ms(graph.graph.replay, steps * 10)
        print(f"{mode}: graph replay alone {ms:.3f} ms per decode step")


if __name__ == "__main__":
    main()
