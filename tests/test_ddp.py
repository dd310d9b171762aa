"""DDP on CPU (gloo): two processes with the same global batch train exactly like one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch
from click.testing import CliRunner
from training_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from training_helpers import prepared_code, train_args

from gptui.core.checkpoint import load_state_dict
from gptui.training.cli import main
from gptui.training.data import Sampler, TokenWindows


def test_ranks_read_disjoint_rows_that_add_up_to_the_single_process_batch():
    rows = TokenWindows([np.arange(10_000, dtype=np.uint16)], block_size=8, seed=0)
    single = Sampler(rows, seed=3, micro_batch=2, accum=4, world=1)
    ddp = Sampler(rows, seed=3, micro_batch=2, accum=2, world=2)
    for step in (0, 1, 500):  # 500: past the first epoch (1249 rows, 8 per step)
        one = {tuple(r) for m in range(4) for r in single.micro_batch_rows(step, m, 0)[0]}
        per_rank = [{tuple(r) for m in range(2) for r in ddp.micro_batch_rows(step, m, rank)[0]} for rank in (0, 1)]
        assert not per_rank[0] & per_rank[1]
        assert per_rank[0] | per_rank[1] == one


def test_two_gloo_processes_match_one_process(tmp_path, tmp_path_factory):
    data = prepared_code(tmp_path_factory)
    settings = dict(steps=6, eval_every=3, save_every=6, lr="3e-3")
    single = tmp_path / "single"
    assert CliRunner().invoke(main, ["pretrain", *train_args(data, single, preset="tiny", **settings)]).exit_code == 0
    ddp = tmp_path / "ddp"
    # --nproc 2 launches torchrun, which starts two workers that join a gloo process group.
    proc = subprocess.run([sys.executable, "-m", "gptui.training", "pretrain", "--nproc", "2",
                           *train_args(data, ddp, preset="tiny", **settings)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "2 process(es) on cpu" in proc.stderr
    one, two = ([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (single, ddp))
    assert [r["step"] for r in two] == list(range(1, 7))  # one writer: rank 0
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and abs(a.get("val_loss", 0) - b.get("val_loss", 0)) < 1e-4
    wa, wb = load_state_dict(single / "latest"), load_state_dict(ddp / "latest")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=1e-4)
