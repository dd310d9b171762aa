"""DDP plumbing: which process am I, which device is mine, and launching torchrun for --nproc.

DDP is on only when torchrun set RANK/WORLD_SIZE; a plain `gptui-train pretrain` is one process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.errors import GptuiError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Only this process logs, shows progress and writes files."""
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise GptuiError("--device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise GptuiError(f"unknown device {name!r} (auto, cpu or cuda)")


def setup(device_name: str) -> Dist:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or world == 1:
        return Dist(device=pick_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        # torchrun gives each process the whole machine; share the cores instead of fighting over them
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return Dist(rank, local_rank, world, device)


def teardown(d: Dist, finished: bool = False) -> None:
    """Leave the process group. finished: every rank got here normally, so they first wait for
    each other; a rank that left gloo while another was still tearing down could abort
    ("terminate called without an active exception", about 1 run in 10 on a 2-core CPU)."""
    if d.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, d: Dist, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(tensor, op=op)
    return tensor


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run `python -m gptui.training ARGV` under torchrun with nproc processes; its exit code."""
    if os.environ.get("RANK") is not None:
        raise GptuiError("--nproc cannot be used inside torchrun; torchrun's --nproc_per_node sets it")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "gptui.training", *argv]
    proc = subprocess.Popen(cmd)
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        proc.send_signal(signum)  # torchrun passes it on; the workers save a checkpoint and stop

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                # Ctrl-C reached torchrun and its workers too (one process group): wait for their checkpoint.
                received.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    # torchrun reports any failed worker as 1; a stop we asked for keeps its conventional code
    return 128 + received[0] if received and code else code
