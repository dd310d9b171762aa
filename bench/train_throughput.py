"""Training throughput: our training step against Hugging Face GPT2LMHeadModel, same run, same batch.

    python bench/train_throughput.py                      # GPT-2 124M, context 1024, bf16, on a GPU
    python bench/train_throughput.py --quick              # tiny sizes on a CPU: checks the script works

"Ours" is gptui.training's own Trainer.train_step (the loop `gptui-train pretrain` runs: data
loader, torch.compile, bf16 autocast, fused AdamW, clipping) on a synthetic prepared folder.
The peer is GPT2LMHeadModel (attn_implementation="sdpa", dropout off) under the same autocast,
torch.compile and fused AdamW with the same decay groups, fed the same micro-batch and
accumulation. MFU uses 6N + 12*L*C*T FLOPs per token, against the 989 TFLOP/s bf16 peak of an
H100/H200 and against a bf16 matmul measured in this run.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from gptui.training import bias_gelu_mlp
from gptui.core.config import preset
from gptui.core.tokenizer import get_encoding
from gptui.training import distributed
from gptui.training.optim import build_optimizer
from gptui.training.shards import PRETRAIN, save_array, write_manifest
from gptui.training.trainer import TrainConfig, Trainer, configure_attention, resolve_dtype

H100_BF16_PEAK = 989e12
# variant -> what it changes in our TrainConfig
OURS = {"ours": {}, "ours-plain": {"loss": "plain"}, "ours-chunked": {"loss": "chunked"}, "ours-fused": {"loss": "fused"},
        "ours-fp32-residual": {"fp32_residual": True}, "ours-unfused-gelu": {}}


def synthetic_data(folder: Path, tokens: int, vocab: int, encoding: str = "gpt2-code") -> Path:
    """A prepared folder of uniformly random tokens: speed does not depend on what the tokens say."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits = {}
    for name, n in (("train", tokens), ("val", max(tokens // 100, 4096))):
        save_array(folder / f"{name}-00000.npy", rng.integers(0, vocab, n, dtype=np.uint16))
        splits[name] = {"files": 1, "tokens": n, "bytes": 0, "shards": [{"file": f"{name}-00000.npy", "tokens": n, "documents": 1}]}
    write_manifest(folder, {"kind": PRETRAIN, "fingerprint": f"synthetic-{tokens}-{vocab}", "source": {"type": "synthetic"},
                            "encoding": encoding, "vocab_size": vocab, "eot_token": get_encoding(encoding).eot_token,
                            "splits": splits, "skipped": {}})
    return folder


def build_trainer(work: Path, args, d: distributed.Dist | None = None, batch_tokens: int | None = None,
                  **overrides) -> Trainer:
    """Our Trainer exactly as `gptui-train pretrain` builds it, on synthetic data in `work`."""
    block = preset(args.preset).block_size
    batch_tokens = batch_tokens or args.micro_batch * block * args.accum
    data = synthetic_data(work / "data", batch_tokens * (args.warmup + args.steps + 2), get_encoding("gpt2-code").n_vocab)
    cfg = TrainConfig(task="pretrain", data=str(data), out=str(work / f"run-{time.monotonic_ns()}"), preset=args.preset,
                      steps=10**9, batch_tokens=batch_tokens, micro_batch=args.micro_batch, warmup=10,
                      eval_every=10**9, save_every=10**9, log_every=10**9, compile=args.compile, dtype=args.dtype,
                      device=args.device, attention=args.attention, compile_mode=args.compile_mode, **overrides)
    return Trainer(cfg, d or distributed.setup(args.device))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds per step, last loss) after `warmup` untimed steps (compilation happens there)."""
    for s in range(warmup):
        loss = step(s)
    sync(device)
    start = time.perf_counter()
    for s in range(warmup, warmup + steps):
        loss = step(s)
    value = float(loss)  # waits for the GPU
    sync(device)
    return (time.perf_counter() - start) / steps, value


def measure_ours(args, work: Path, overrides: dict) -> dict:
    trainer = build_trainer(work, args, **overrides)
    device = trainer.d.device
    seconds, value = time_steps(lambda s: trainer.train_step(s)[0], device, args.warmup, args.steps)
    if args.profile:
        steps = iter(range(args.warmup + args.steps, 10**9))
        profile_step(lambda: trainer.train_step(next(steps)), device)
    return {"model": trainer.model, "seconds": seconds, "loss": value, "trainer": trainer}


def profile_step(step, device: torch.device, steps: int = 2) -> None:
    """Where `steps` optimizer steps spend their device time, by kernel, and where the GPU sat idle."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    sort = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=45, max_name_column_width=90), file=sys.stderr)
    if device.type == "cuda":
        with tempfile.TemporaryDirectory() as tmp:
            prof.export_chrome_trace(f"{tmp}/trace.json")
            events = json.loads(Path(f"{tmp}/trace.json").read_text())["traceEvents"]
        print(idle_report(events, steps), file=sys.stderr)


def idle_report(events: list[dict], steps: int) -> str:
    """GPU idle time between kernels in a profiler trace, and what the host was doing in the longest gaps."""
    gpu = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e),
                 key=lambda e: e["ts"])
    host = [e for e in events if e.get("cat") in ("cpu_op", "cuda_runtime") and "dur" in e]
    end, gaps = gpu[0]["ts"] + gpu[0]["dur"], []
    for e in gpu[1:]:
        if e["ts"] > end:
            gaps.append((e["ts"] - end, end, e["name"]))
        end = max(end, e["ts"] + e["dur"])
    span = end - gpu[0]["ts"]
    lines = [f"GPU idle between kernels: {sum(g for g, _, _ in gaps) / 1e3 / steps:.1f} ms per step of "
             f"{span / 1e3 / steps:.1f} ms ({len(gpu) // steps} kernels and copies per step)"]
    for gap, at, before in sorted(gaps, reverse=True)[:3]:
        doing = sorted({h["name"][:40] for h in host if h["ts"] <= at + gap and h["ts"] + h["dur"] >= at})[:5]
        lines.append(f"  {gap / 1e3:.2f} ms before {before[:50]}; host in: {', '.join(doing)}")
    return "\n".join(lines)


def measure_hf(args, device: torch.device, dtype: torch.dtype) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = preset(args.preset)
    hf_config = GPT2Config(vocab_size=50257, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
                           n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel._from_config(hf_config, attn_implementation="sdpa").to(device).train()
    forward = torch.compile(model, mode=args.compile_mode) if args.compile else model
    optimizer = build_optimizer(model, 6e-4, 0.1, device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    batches = [torch.randint(0, 50257, (args.micro_batch, config.block_size), generator=generator).to(device)
               for _ in range(args.accum)]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(_):
        total = torch.zeros((), device=device)
        for x in batches:
            with autocast:
                loss = forward(input_ids=x, labels=x).loss / args.accum
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    seconds, value = time_steps(step, device, args.warmup, args.steps)
    return {"model": model, "seconds": seconds, "loss": value}


def measure(variant: str, args, work: Path, device: torch.device, dtype: torch.dtype) -> dict:
    if variant == "hf":
        return measure_hf(args, device, dtype)
    if variant == "ours-unfused-gelu":  # inductor's GELU and bias gradient instead of core/kernels/bias_gelu.py
        with mock.patch.object(bias_gelu_mlp, "available", lambda device: False):
            return measure_ours(args, work, OURS[variant])
    return measure_ours(args, work, OURS[variant])


def matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Achievable dense matmul FLOP/s on this device in this run (the realistic ceiling for MFU)."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    iters = 50 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start)


def non_position_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "wpe" not in name)


def row(name: str, result: dict, args, device: torch.device, matmul: float) -> dict:
    config = preset(args.preset)
    tokens = args.micro_batch * config.block_size * args.accum
    tps = tokens / result["seconds"]
    # as metrics.flops_per_token, with this model's own parameter count (HF's vocabulary is unpadded)
    flops = 6 * non_position_params(result["model"]) + 12 * config.n_layer * config.n_embd * config.block_size
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "variant": name, "micro_batch": args.micro_batch, "accum": args.accum, "tokens_per_s": tps,
        "step_ms": result["seconds"] * 1e3, "mfu_989": tps * flops / H100_BF16_PEAK if device.type == "cuda" else None,
        "mfu_measured": tps * flops / matmul, "peak_memory_gib": peak_mem, "loss": result["loss"],
    }


def release(device: torch.device) -> None:
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print(f"{'variant':<16} {'micro x accum':>13} {'tokens/s':>11} {'step ms':>9} {'MFU (989T)':>10} "
          f"{'MFU (matmul)':>12} {'peak GiB':>9} {'loss':>7}")
    for r in rows:
        mfu = f"{r['mfu_989']:.1%}" if r["mfu_989"] is not None else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        print(f"{r['variant']:<16} {r['micro_batch']:>7} x {r['accum']:<3} {r['tokens_per_s']:>11,.0f} {r['step_ms']:>9.1f} "
              f"{mfu:>10} {r['mfu_measured']:>12.1%} {mem:>9} {r['loss']:>7.3f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--accum", type=int, default=8, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    p.add_argument("--variants", default="ours,ours-chunked,hf",
                   help=f"comma-separated: {', '.join([*OURS, 'hf'])} (ours: the trainer's defaults)")
    p.add_argument("--attention", default="auto", choices=["auto", "flash", "cudnn", "efficient"])
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"])
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--profile", action="store_true", help="also print two steps' time by kernel and the GPU's idle gaps (ours)")
    p.add_argument("--quick", action="store_true", help="tiny model, CPU-sized: checks that the script works")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.micro_batch, args.accum, args.steps, args.warmup = "tiny", 2, 2, 2, 1
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = distributed.pick_device(args.device)
    if device.type != "cuda":
        args.compile = False  # inductor on CPU needs a compiler toolchain and minutes; not what we measure
    dtype = resolve_dtype(args.dtype, device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        configure_attention(args.attention)
    matmul = matmul_flops(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            if variant not in OURS and variant != "hf":
                sys.exit(f"unknown variant {variant!r}")
            release(device)
            try:
                result = measure(variant, args, Path(tmp), device, dtype)
            except torch.OutOfMemoryError:
                print(f"{variant}: out of GPU memory at micro-batch {args.micro_batch}", file=sys.stderr)
                continue
            rows.append(row(variant, result, args, device, matmul))
            del result
    print_table(rows, f"{args.preset}, context {preset(args.preset).block_size}, {str(dtype).replace('torch.', '')}, "
                      f"compile {args.compile_mode if args.compile else 'off'}, attention {args.attention}, {name}, torch {torch.__version__}; "
                      f"measured {str(dtype).replace('torch.', '')} matmul: {matmul / 1e12:.3g} TFLOP/s")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "matmul_flops": matmul, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
