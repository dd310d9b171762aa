"""DDP scaling: our training loop on 1 GPU vs N GPUs of one host, same global batch, same script.

    python bench/ddp_scaling.py --gpus 1,2            # GPT-2 124M, 2^19 tokens per step, NCCL
    python bench/ddp_scaling.py --quick               # tiny model, gloo on CPU processes

For each N it starts `torchrun --standalone --nproc_per_node N` on this file; each worker builds
gptui.training's Trainer (the loop `gptui-train pretrain` runs) on synthetic data and times
optimizer steps. The global batch stays fixed, so N GPUs each do 1/N of the micro-batches and
all-reduce gradients once per step. Reported per N: tokens/s, speedup and efficiency against
N = 1, the time one all-reduce of every gradient takes, and the step time beyond the
per-GPU share of the 1-GPU step (communication plus any other overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from gptui.core.config import preset
from gptui.training import distributed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import build_trainer, sync, time_steps  # noqa: E402


def allreduce_ms(numel: int, d: distributed.Dist, iters: int = 10) -> float:
    """One all-reduce of a buffer as large as all the gradients (fp32), as DDP does per step."""
    buffer = torch.ones(numel, dtype=torch.float32, device=d.device)
    for _ in range(2):
        dist.all_reduce(buffer)
    sync(d.device)
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(buffer)
    sync(d.device)
    return (time.perf_counter() - start) / iters * 1e3


def worker(args) -> None:
    d = distributed.setup(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(Path(tmp) / f"rank{d.rank}", args, d, batch_tokens=args.batch_tokens)
        seconds, _ = time_steps(lambda s: trainer.train_step(s)[0], d.device, args.warmup, args.steps)
        reduce_ms = allreduce_ms(trainer.model.num_params(), d) if d.enabled else 0.0
        if d.is_main:
            args.result.write_text(json.dumps({
                "world": d.world, "accum": trainer.accum, "step_s": seconds,
                "tokens_per_s": args.batch_tokens / seconds, "allreduce_ms": reduce_ms,
                "device": torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "CPU",
            }))
    distributed.teardown(d)


def launch(n: int, args, result: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", __file__,
           "--worker", "--result", str(result), *args.passthrough]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(result.read_text())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", default="1,2", help="process counts to compare, comma-separated")
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--batch-tokens", type=int, default=1 << 19, help="global tokens per optimizer step")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--attention", default="auto", choices=["auto", "flash", "cudnn", "efficient"])
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"])
    p.add_argument("--quick", action="store_true", help="tiny model on CPU processes: checks that the script works")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.micro_batch, args.batch_tokens, args.steps, args.warmup = "tiny", 2, 512, 3, 1
        args.device, args.compile = "cpu", False
    if distributed.pick_device(args.device).type != "cuda":
        args.compile = False
    # what workers need to rebuild the same settings
    args.passthrough = ["--preset", args.preset, "--micro-batch", str(args.micro_batch), "--batch-tokens",
                        str(args.batch_tokens), "--steps", str(args.steps), "--warmup", str(args.warmup),
                        "--attention", args.attention, "--dtype", args.dtype, "--device", args.device,
                        "--compile-mode", args.compile_mode,
                        *([] if args.compile else ["--no-compile"])]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    counts = [int(n) for n in args.gpus.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            results.append(launch(n, args, Path(tmp) / f"{n}.json"))
    base = next((r for r in results if r["world"] == 1), None)
    print(f"{args.preset}, context {preset(args.preset).block_size}, {args.batch_tokens:,} tokens per step, "
          f"micro-batch {args.micro_batch}, {results[0]['device']}, torch {torch.__version__}")
    print(f"{'GPUs':>4} {'accum/GPU':>9} {'tokens/s':>11} {'step s':>8} {'speedup':>8} {'efficiency':>10} "
          f"{'all-reduce ms':>13} {'overhead ms':>11}")
    for r in results:
        speedup = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        overhead = (r["step_s"] - base["step_s"] * r["accum"] / base["accum"]) * 1e3 if base else None
        print(f"{r['world']:>4} {r['accum']:>9} {r['tokens_per_s']:>11,.0f} {r['step_s']:>8.3f} "
              f"{speedup:>7.2f}x {speedup / r['world']:>10.1%} {r['allreduce_ms']:>13.1f} {overhead:>11.1f}"
              if base else f"{r['world']:>4} {r['accum']:>9} {r['tokens_per_s']:>11,.0f} {r['step_s']:>8.3f}")


if __name__ == "__main__":
    main()
