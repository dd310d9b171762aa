"""The one training loop behind `pretrain` and `sft`: they differ only in their rows and loss mask.

Per optimizer step: `accum` micro-batches forward and backward under autocast (gradient sync
only on the last, under DDP), clip, AdamW. Nothing asks the GPU for a number inside the
accumulation loop; losses are read back only at logging, evaluation and checkpoint steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..core import __version__
from ..core.atomic import write_json_atomic
from ..core.checkpoint import Checkpoint, load_model, read_json
from ..core.config import preset as make_config
from ..core.errors import GptuiError
from ..core.model import GPT
from ..core.registry import resolve
from ..core.tokenizer import fim_ids, get_encoding
from . import distributed
from .bias_gelu_mlp import use_bias_gelu
from .checkpointing import BEST, LATEST, METRICS, RUN_CONFIG, load_training_state, save_run_checkpoint
from .data import MixedRows, Sampler, eval_row_ids, open_rows, to_device
from .loss import IGNORE, LossFunction, eval_loss, resolve_loss
from .metrics import MetricsLog, flops_per_token, memory_gb, peak_flops, tensorboard_writer
from .optim import build_optimizer, get_lr
from .shards import PRETRAIN, SFT, read_manifest
from .stopping import StopSignal

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class TrainConfig:
    task: str = "pretrain"  # "pretrain" or "sft": which rows (token windows or packed examples)
    data: str = ""  # a folder written by `gptui-train prepare`
    out: str = ""  # the run folder: run.json, metrics.jsonl, latest/, best/
    preset: str | None = "small"  # architecture when starting from scratch
    init: str | None = None  # start from this checkpoint instead (required for sft)
    encoding: str = "gpt2-code"  # tokenizer when starting from scratch
    steps: int = 5000  # optimizer steps in the whole run
    batch_tokens: int = 1 << 19  # tokens per optimizer step, over all processes
    micro_batch: int = 16  # rows per forward pass per process; the rest is gradient accumulation
    lr: float = 6e-4  # peak learning rate
    min_lr: float | None = None  # end of the schedule; None means lr / 10 (cosine) or 0 (wsd)
    warmup: int = 200  # steps of linear warmup
    schedule: str = "cosine"  # cosine, or wsd: constant after warmup, linear decay over the last decay_frac
    decay_frac: float = 0.2  # wsd: share of the steps spent decaying
    fim_rate: float | None = None  # share of documents rearranged for fill-in-the-middle; None: 0.5 when
    # pretraining with an encoding that has FIM tokens, else 0
    mix_data: str | None = None  # a prepared code folder whose windows are mixed into the batches
    mix_rate: float = 0.25  # with mix_data: share of rows that are its windows
    weight_decay: float = 0.1  # on matrices and embeddings only
    optimizer: str = "adamw"  # adamw, or muon: Muon for the blocks' matrices, AdamW for the rest
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_every: int = 250  # steps between validation passes
    eval_tokens: int = 1 << 20  # validation tokens per pass
    save_every: int = 500  # steps between `latest` checkpoints
    log_every: int = 1  # steps between metrics lines (each costs one host-device sync)
    compile: bool | None = None  # torch.compile; None means on for CUDA
    compile_mode: str = "default"  # or max-autotune-no-cudagraphs: slower to compile, tuned matmuls
    dtype: str = "auto"  # auto, bf16, fp16 or fp32
    device: str = "auto"  # auto, cpu or cuda
    loss: str = "auto"  # plain (compiled cross-entropy), chunked (never holds all logits), fused; auto: fused on CUDA
    fp32_residual: bool = False  # under autocast keep the residual stream in fp32 (default: the autocast dtype)
    attention: str = "auto"  # SDPA kernel on CUDA: auto (PyTorch's pick), flash, cudnn or efficient
    seed: int = 0  # initialisation, data order and dropout
    tensorboard: bool = False  # also write TensorBoard scalars under out/tensorboard

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def read_run_config(out: Path) -> dict:
    """The settings a run in `out` was started with (for --resume)."""
    if not (out / RUN_CONFIG).is_file():
        raise GptuiError(f"nothing to resume in {out} (no {RUN_CONFIG})")
    return read_json(out / RUN_CONFIG)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPUs that have it, fp16 (with a GradScaler) on older ones, fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise GptuiError(f"unknown dtype {name!r} (auto, bf16, fp16 or fp32)")
    return DTYPES[name]


def configure_attention(name: str) -> None:
    """Restrict scaled_dot_product_attention to one fused kernel (math stays on as the fallback)."""
    if name == "auto":
        return
    if name not in ("flash", "cudnn", "efficient"):
        raise GptuiError(f"unknown attention kernel {name!r} (auto, flash, cudnn or efficient)")
    torch.backends.cuda.enable_flash_sdp(name == "flash")
    torch.backends.cuda.enable_cudnn_sdp(name == "cudnn")
    torch.backends.cuda.enable_mem_efficient_sdp(name == "efficient")


def _seed_for(seed: int, rank: int, step: int) -> int:
    """Dropout's RNG for one step of one rank: a function of where we are, so resume needs no RNG file."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


class TrainingModule(nn.Module):
    """The model with its loss attached, so DDP sees one forward that returns what backward needs."""

    def __init__(self, model: GPT, loss_fn: LossFunction):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, x, y)


class Trainer:
    def __init__(self, cfg: TrainConfig, d: distributed.Dist, resume: bool = False,
                 on_step: Callable[["Trainer"], None] | None = None):
        self.cfg, self.d, self.on_step = cfg, d, on_step
        self.out, self.data_dir = Path(cfg.out), Path(cfg.data)
        self.manifest = read_manifest(self.data_dir, PRETRAIN if cfg.task == "pretrain" else SFT)
        self.state = self._check_out(resume)
        self.model, self.encoding, self.init_info = self._build_model()
        if self.manifest["encoding"] != self.encoding:
            raise GptuiError(f"{self.data_dir} was tokenised with {self.manifest['encoding']}, "
                             f"but the model uses {self.encoding}; prepare the data with --encoding {self.encoding}")
        T = self.model.config.block_size
        if cfg.fim_rate is None:
            cfg.fim_rate = 0.5 if cfg.task == "pretrain" and fim_ids(get_encoding(self.encoding)) else 0.0
        self.train_rows = open_rows(self.data_dir, self.manifest, "train", T, cfg.seed, cfg.fim_rate)
        self.mix_source = None  # the mixed-in code data's source, for the provenance
        if cfg.mix_data:
            self.train_rows = self._mixed(self.train_rows, Path(cfg.mix_data), T)
        self.val_rows = open_rows(self.data_dir, self.manifest, "val", T, cfg.seed)
        for split, rows in (("training", self.train_rows), ("validation", self.val_rows)):
            if rows.epoch_size(0) == 0:
                tokens = self.manifest["splits"]["train" if split == "training" else "val"]["tokens"]
                raise GptuiError(f"{self.data_dir}: the {split} split is too small for a {T}-token context "
                                 f"({tokens} tokens, no complete row); prepare more data or a larger --val-fraction")
        per_micro = cfg.micro_batch * T * d.world
        if cfg.batch_tokens <= 0 or cfg.batch_tokens % per_micro:
            raise GptuiError(f"--batch-tokens {cfg.batch_tokens} must be a positive multiple of micro-batch x "
                             f"context x processes = {cfg.micro_batch} x {T} x {d.world} = {per_micro}")
        self.accum = cfg.batch_tokens // per_micro
        if cfg.tensorboard:
            tensorboard_writer()  # fail before anything is written, not after
        self.dtype = resolve_dtype(cfg.dtype, d.device)
        self.compile = cfg.compile if cfg.compile is not None else d.device.type == "cuda"
        self.sampler = Sampler(self.train_rows, cfg.seed, cfg.micro_batch, self.accum, d.world)
        self.eval_ids = eval_row_ids(self.val_rows, max(1, cfg.eval_tokens // T), d.rank, d.world)
        self.step = int(self.state["step"]) if self.state else 0
        self.tokens_seen = int(self.state["tokens_seen"]) if self.state else 0
        self.best_val = float(self.state["best_val_loss"]) if self.state else math.inf
        self.last_saved: int | None = self.step if self.state else None
        if d.is_main:
            self._create_out()
        self._setup_model()

    # ----- setup -----

    def _check_out(self, resume: bool) -> dict | None:
        out = self.out
        if resume:
            if not (out / LATEST).exists() and not (out / f".{LATEST}.old").exists():
                raise GptuiError(f"nothing to resume in {out} (no {LATEST}/ checkpoint)")
            state = load_training_state(out / LATEST)
            if state.get("data_fingerprint") != self.manifest.get("fingerprint"):
                raise GptuiError(f"{self.data_dir} is not the data this run was trained on; resume with the same --data")
            return state
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise GptuiError(f"{out} already exists (pass --resume to continue that run, or choose another --out)")
        return None

    def _build_model(self) -> tuple[GPT, str, dict]:
        cfg = self.cfg
        if self.state is not None:
            model, encoding = load_model(self.out / LATEST)
            return model, encoding, Checkpoint.open(self.out / LATEST).provenance.get("init", {})
        if cfg.init:
            folder = resolve(cfg.init)
            model, encoding = load_model(folder)
            return model, encoding, {"from": str(folder), "provenance": Checkpoint.open(folder).provenance}
        if cfg.task == "sft":
            raise GptuiError("sft starts from a pretrained model: pass --init CHECKPOINT")
        config = make_config(cfg.preset or "small", vocab_size=get_encoding(cfg.encoding).n_vocab)
        torch.manual_seed(cfg.seed)
        return GPT(config), cfg.encoding, {"preset": cfg.preset, "seed": cfg.seed}

    def _mixed(self, rows, folder: Path, T: int) -> MixedRows:
        """The training rows with the training windows of a prepared code folder mixed in: replayed
        code for sft; for pretraining, a smaller corpus upweighted (FIM'd at the same rate)."""
        manifest = read_manifest(folder, PRETRAIN)
        if manifest["encoding"] != self.encoding:
            raise GptuiError(f"{folder} was tokenised with {manifest['encoding']}, but the model uses {self.encoding}")
        self.mix_source = manifest["source"]
        mixed = open_rows(folder, manifest, "train", T, self.cfg.seed, self.cfg.fim_rate)
        return MixedRows(rows, mixed, self.cfg.mix_rate)

    def _create_out(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / RUN_CONFIG, {**dataclasses.asdict(self.cfg), "gptui_version": __version__})
        except OSError as e:
            raise GptuiError(f"cannot write {self.out}: {e.strerror or e}") from None
        tensorboard = self.out / "tensorboard" if self.cfg.tensorboard else None
        self.metrics = MetricsLog(self.out / METRICS, tensorboard, resume_step=self.step if self.state else None)

    def _setup_model(self) -> None:
        cfg, d = self.cfg, self.d
        if d.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # fp32 leftovers (outside autocast) on tensor cores (TF32)
            configure_attention(cfg.attention)
        self.model.to(d.device).train()
        use_bias_gelu(self.model, d.device)  # c_fc's bias + GELU as one Triton op on a GPU
        self.model.fp32_residual = cfg.fp32_residual
        self.loss_fn = LossFunction(resolve_loss(cfg.loss, d.device), compile=self.compile, compile_mode=cfg.compile_mode)
        self.module: nn.Module = TrainingModule(self.model, self.loss_fn)
        if d.enabled:
            self.module = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[d.local_rank] if d.device.type == "cuda" else None, gradient_as_bucket_view=True,
            )
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, d.device, cfg.optimizer)
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=self.dtype == torch.float16)
        if self.state:
            try:
                self.optimizer.load_state_dict(self.state["optimizer"])
            except (ValueError, KeyError) as e:
                raise GptuiError(f"{self.out / LATEST}: its optimizer state does not fit --optimizer {cfg.optimizer} "
                                 f"({e}); resume with the optimizer the run started with") from None
            if self.state.get("scaler"):
                self.scaler.load_state_dict(self.state["scaler"])
        self.bad = torch.zeros((), dtype=torch.bool, device=d.device)  # any non-finite loss since the last check
        self._ahead: tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None  # (step, micro), rows

    # ----- one step -----

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.dtype)

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; (mean loss of this rank's share x world, grad norm), both still on device."""
        cfg, d = self.cfg, self.d
        min_lr = cfg.min_lr if cfg.min_lr is not None else (0.0 if cfg.schedule == "wsd" else cfg.lr / 10)
        lr = get_lr(step, cfg.steps, cfg.lr, min_lr, cfg.warmup, cfg.schedule, cfg.decay_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(_seed_for(cfg.seed, d.rank, step))
        # Sum of token losses / targets in the whole step; x world because DDP averages over ranks.
        scale = d.world / self.sampler.step_targets(step)
        total = torch.zeros((), device=d.device)
        for micro in range(self.accum):
            x, y = self._micro_batch(step, micro)
            last = micro == self.accum - 1
            sync = contextlib.nullcontext() if last or not d.enabled else self.module.no_sync()
            with sync:
                with self.autocast():
                    loss = self.module(x, y) * scale
                self.scaler.scale(loss).backward()
            total += loss.detach()
            self._read_ahead(step + last, 0 if last else micro + 1)
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.bad |= ~torch.isfinite(total)
        return total, norm

    def _micro_batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows for one micro-step, on the device: read ahead if _read_ahead guessed right."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == (step, micro):
            return ahead[1]
        return self._rows(step, micro)

    def _rows(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_device(*self.sampler.micro_batch_rows(step, micro, self.d.rank), self.d.device)

    def _read_ahead(self, step: int, micro: int) -> None:
        """Read and send the next micro-batch while the GPU still works through this one's backward.

        Reading rows takes the host a few ms; done at the top of a step, the GPU had already run
        out of queued work (the optimizer's kernels are short) and sat idle for it: 7.5 ms of a
        240 ms step at micro-batch 128 on an H100 (bench/NOTES.md). The rows of a step are a
        function of (step, micro, rank), so reading ahead changes nothing about which ones.
        """
        self._ahead = ((step, micro), self._rows(step, micro))

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss per target token over the fixed validation rows, all ranks together."""
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.d.device)
        for start in range(0, len(self.eval_ids), self.cfg.micro_batch):
            ids = self.eval_ids[start : start + self.cfg.micro_batch]
            x, y = to_device(*self.val_rows.rows(0, ids), self.d.device)
            with self.autocast():
                sums[0] += eval_loss(self.model, x, y).double()
            sums[1] += (y != IGNORE).sum()
        distributed.all_reduce(sums, self.d)
        self.model.train()
        return (sums[0] / sums[1].clamp(min=1)).item()

    # ----- the loop -----

    def _say(self, message: str) -> None:
        if self.d.is_main:
            tqdm.write(message, file=sys.stderr)

    def _synced(self, loss: torch.Tensor) -> tuple[float, bool]:
        """(mean loss over ranks, whether any rank saw a non-finite loss since the last sync)."""
        packed = torch.stack([loss.float(), self.bad.float()])
        distributed.all_reduce(packed, self.d)
        loss_value, bad = (packed / torch.tensor([self.d.world, 1.0], device=packed.device)).tolist()
        self.bad.zero_()
        return loss_value, bad > 0 or not math.isfinite(loss_value)

    def _agree_stop(self, signum: int | None) -> int:
        if not self.d.enabled:
            return signum or 0
        flag = torch.tensor([signum or 0], device=self.d.device)
        distributed.all_reduce(flag, self.d, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def _provenance(self) -> dict:
        cfg = self.cfg
        return {
            "init": self.init_info,
            "training": {
                "task": cfg.task, "data": self.manifest["source"], "data_fingerprint": self.manifest["fingerprint"],
                "steps": self.step, "tokens": self.tokens_seen, "batch_tokens": cfg.batch_tokens,
                "lr": cfg.lr, "schedule": cfg.schedule, "weight_decay": cfg.weight_decay, "optimizer": cfg.optimizer,
                "fim_rate": cfg.fim_rate,
                "mix_data": self.mix_source,
                "mix_rate": cfg.mix_rate if cfg.mix_data else 0.0,
                "seed": cfg.seed, "gptui_version": __version__,
            },
        }

    def _card(self, train_loss: float | None, val_loss: float | None) -> dict:
        return {"training": {"task": self.cfg.task, "step": self.step, "tokens": self.tokens_seen,
                             "train_loss": train_loss, "val_loss": val_loss,
                             "best_val_loss": self.best_val if math.isfinite(self.best_val) else None}}

    def save(self, name: str, train_loss: float | None, val_loss: float | None) -> None:
        if not self.d.is_main:
            return
        state = None
        if name == LATEST:
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "best_val_loss": self.best_val,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "data_fingerprint": self.manifest["fingerprint"],
            }
        try:
            save_run_checkpoint(self.out, name, self.model, self.encoding, self._provenance(),
                                self._card(train_loss, val_loss), state)
        except OSError as e:
            raise GptuiError(f"cannot write a checkpoint in {self.out}: {e.strerror or e}") from None
        if name == LATEST:
            self.last_saved = self.step

    def _announce(self) -> None:
        cfg, d = self.cfg, self.d
        self._say(f"{cfg.task}: {self.model.num_params() / 1e6:.1f}M parameters, {d.world} process(es) on "
                  f"{d.device.type}, {str(self.dtype).replace('torch.', '')}, compile {'on' if self.compile else 'off'}, "
                  f"{self.accum} micro-batch(es) of {cfg.micro_batch} x {self.model.config.block_size} per step"
                  + (f", resuming at step {self.step}" if self.state else ""))
        too_long = getattr(self.train_rows, "too_long", 0)
        if too_long:
            self._say(f"left out {too_long} training examples longer than the context")

    def _report(self, loss: torch.Tensor, norm: torch.Tensor, do_eval: bool, do_save: bool, bar: tqdm) -> None:
        """At a sync point: read the loss back, stop on NaN/inf, log, evaluate, checkpoint."""
        cfg, d = self.cfg, self.d
        train_loss, bad = self._synced(loss)
        if bad:
            raise GptuiError(self._nonfinite_message(train_loss))
        tps = (self.step - self._clock_step) * cfg.batch_tokens / max(time.perf_counter() - self._clock, 1e-9)
        record = {
            "step": self.step, "loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": float(norm), "tokens": self.tokens_seen, "tokens_per_s": round(tps, 1),
            "mfu": round(tps * self._flops / self._peak, 4) if self._peak else None,
            "memory_gb": round(memory_gb(d.device), 3), "epoch": round(self.sampler.epochs(self.step), 4),
        }
        val_loss = None
        if do_eval:
            val_loss = record["val_loss"] = self.evaluate()
            improved = val_loss < self.best_val
            if improved:
                self.best_val = val_loss
                self.save(BEST, train_loss, val_loss)
            self._say(f"step {self.step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}" + (" (best)" if improved else ""))
        if d.is_main:
            self.metrics.log(record)
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
        if do_save:
            self.save(LATEST, train_loss, val_loss)
        self._clock, self._clock_step = time.perf_counter(), self.step  # evaluating and saving are not training time

    def run(self) -> int:
        """Train to cfg.steps; 0 when done, 128 + signal number when stopped by SIGINT/SIGTERM."""
        cfg = self.cfg
        self._announce()
        self._peak, self._flops = peak_flops(self.d.device), flops_per_token(self.model.config)
        self._clock, self._clock_step = time.perf_counter(), self.step
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.d.is_main, file=sys.stderr, unit="step",
                   dynamic_ncols=True, mininterval=1.0)
        try:
            with StopSignal(lambda s: self._say("stopping after this step; saving a checkpoint (Ctrl-C again aborts)")) as stop:
                while self.step < cfg.steps:
                    loss, norm = self.train_step(self.step)
                    self.step += 1
                    self.tokens_seen += cfg.batch_tokens
                    bar.update(1)
                    if self.on_step:
                        self.on_step(self)
                    stopping = self._agree_stop(stop.signum)
                    last = self.step == cfg.steps
                    do_eval = self.step % cfg.eval_every == 0 or last
                    do_save = self.step % cfg.save_every == 0 or last or bool(stopping)
                    if self.step % cfg.log_every == 0 or do_eval or do_save:
                        self._report(loss, norm, do_eval, do_save, bar)
                    if stopping:
                        self._say(f"stopped at step {self.step}; continue with --resume (checkpoint {self.out / LATEST})")
                        return 128 + stopping
        finally:
            bar.close()
            if self.d.is_main:
                self.metrics.close()
        self._say(f"done: {self.step} steps, {self.tokens_seen:,} tokens, best val loss {self.best_val:.4f}; "
                  f"model in {self.out / LATEST}, best in {self.out / BEST}")
        return 0

    def _nonfinite_message(self, loss: float) -> str:
        kept = (f"the last good checkpoint is {self.out / LATEST} (step {self.last_saved})" if self.last_saved is not None
                else "no checkpoint had been written yet")
        return (f"loss became {loss} by step {self.step} (try a lower --lr or --dtype bf16/fp32); "
                f"stopped without saving; {kept}")


def run_training(cfg: TrainConfig, resume: bool = False, on_step: Callable[[Trainer], None] | None = None) -> int:
    """Train as cfg says; the exit code (0, or 128 + signal). on_step(trainer) runs after every step (tests)."""
    d = distributed.setup(cfg.device)
    try:
        code = Trainer(cfg, d, resume, on_step).run()
        distributed.teardown(d, finished=True)
        return code
    finally:
        distributed.teardown(d)
