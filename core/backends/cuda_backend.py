"""cuda: bf16 weights on an NVIDIA GPU, a static KV cache, and the decode step as one CUDA graph.

At batch 1 a decode step is ~170 small kernels; launched one by one from Python, the GPU waits
on the CPU. Captured once in a CUDA graph, the whole step is replayed with one launch, and with
each layer norm + matmul + bias/GELU/residual fused into one Triton kernel (fused_linear.py) it
is ~90 kernels (0.37 ms for GPT-2 124M on an H100). The next step is queued from the sampler's
GPU tensor before the host reads the token (launch), so host and GPU work overlap. Capture
needs every shape and address fixed, so the step here differs from GPT.forward in one place:
attention always reads the whole cache (block_size keys) under a mask of the positions written
so far, and the new key/value land at a position held in a tensor (index_copy_) rather than a
Python int. Prefill keeps the model's ordinary forward (variable length, flash attention); both
write the same cache buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checkpoint import load_model
from ..errors import GptuiError
from ..kernels.fused_linear import available as fused_available
from ..kernels.fused_linear import fused_linear
from ..model import GPT
from .contract import READY, LoadOptions, Status, unavailable
from .torch_backend import TorchBackend

# CUDA graph by hand over the fused Triton kernels (fused_linear.py) or over plain torch ops;
# torch.compile in reduce-overhead mode (fusions + its own CUDA graphs); the same with max-autotune
# (Triton matmul templates tried against cuBLAS; minutes to compile); no graph at all.
MODES = ("graph", "graph-torch", "compile", "autotune", "eager")


class StaticDecoder:
    """One-token forward with fixed shapes: token (1, 1) and position (1,) are device tensors.

    fused: each layer norm + matmul + bias (+ GELU) (+ residual add) is one fused_linear kernel;
    otherwise the same arithmetic in torch ops (the CPU, compile modes, and the comparison).
    """

    def __init__(self, model: GPT, fused: bool = False):
        self.model = model
        self.fused = fused
        cfg = model.config
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        device = model.transformer.wpe.weight.device
        self.key_positions = torch.arange(cfg.block_size, device=device)

    def linear(self, x: torch.Tensor, linear: torch.nn.Linear, norm: torch.nn.LayerNorm | None = None,
               gelu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        """residual + act(linear(norm(x))) for x (1, 1, C)."""
        if self.fused:
            return fused_linear(x.view(-1), linear.weight, linear.bias, norm=norm, gelu=gelu,
                                residual=None if residual is None else residual.view(-1)).view(1, 1, -1)
        x = x if norm is None else norm(x)
        if gelu:  # bias and GELU (tanh, as GPT-2) in the matmul's epilogue: one kernel, not three
            y = torch._addmm_activation(linear.bias, x.view(1, -1), linear.weight.t(), use_gelu=True).view(1, 1, -1)
        else:
            y = linear(x)
        return y if residual is None else residual + y

    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits (1, 1, V) after `token` at `position`; writes its key/value into the cache."""
        t = self.model.transformer
        x = t.wte(token) + t.wpe(position)  # (1, 1, C)
        # keys written so far get 0, the rest -inf: built once per step, not once per layer
        mask = torch.zeros((), dtype=x.dtype, device=x.device).masked_fill(
            self.key_positions > position, float("-inf"))[None, None, None, :]  # (1, 1, 1, L)
        for block in t.h:
            attn, mlp, cache = block.attn, block.mlp, block.attn.kv_cache
            q, kv = self.linear(x, attn.c_attn, norm=block.ln_1).split((attn.n_embd, 2 * attn.n_embd), dim=2)
            q = q.view(1, 1, self.n_head, self.head_dim).transpose(1, 2)  # (1, nh, 1, hs)
            # key and value into the (2, 1, nh, L, hs) cache with one copy
            cache.kv.index_copy_(3, position, kv.view(1, 2, self.n_head, 1, self.head_dim).transpose(0, 1))
            y = F.scaled_dot_product_attention(q, cache.k, cache.v, attn_mask=mask)  # (1, nh, 1, hs)
            x = self.linear(y.transpose(1, 2).reshape(1, 1, attn.n_embd), attn.c_proj, residual=x)
            h = self.linear(x, mlp.c_fc, norm=block.ln_2, gelu=True)
            x = self.linear(h, mlp.c_proj, residual=x)
        if self.fused:
            return fused_linear(x.view(-1), self.model.lm_head.weight, norm=t.ln_f, out_dtype=torch.float32).view(1, 1, -1)
        return self.model.lm_head(t.ln_f(x)).float()  # (1, 1, V)


class CudaBackend(TorchBackend):
    """TorchBackend on a GPU (its logits_all and nbytes apply as they are), decoding by graph replay."""

    def __init__(self, model: GPT, name: str = "cuda", device: str | torch.device = "cuda",
                 dtype: torch.dtype = torch.bfloat16, mode: str = "graph"):
        if mode not in MODES:
            raise GptuiError(f"unknown cuda mode {mode!r}; choose from {', '.join(MODES)}")
        self.name = name
        self.device = torch.device(device)
        self.mode = mode
        self.block_size = model.config.block_size
        self.params = model.config.num_params()
        self.position = 0
        with torch.inference_mode():
            self.model = model.to(device=self.device, dtype=dtype).eval()
            self.model.setup_cache(batch=1, device=self.device, dtype=dtype)
            # graph and eager run the fused kernels where Triton can (eager: the same step, unreplayed)
            fused = mode in ("graph", "eager") and fused_available(self.device)
            self.decoder = StaticDecoder(self.model, fused=fused)
            self.token = torch.zeros((1, 1), dtype=torch.long, device=self.device)
            self.pos = torch.zeros(1, dtype=torch.long, device=self.device)
            self.kernels_note = "fused Triton kernels" if fused else "torch ops"
            if fused:
                try:  # Triton compiles here; it needs a C compiler and a driver it supports
                    self.decoder.step(self.token, self.pos)
                except Exception as error:  # noqa: BLE001 - any compile failure means: run torch ops
                    self.decoder.fused = False
                    self.kernels_note = f"torch ops (Triton failed: {type(error).__name__})"
        self.step = self.decoder.step
        self.graph = None
        self.pending: torch.Tensor | None = None  # logits of a launched step, not yet collected
        if mode in ("compile", "autotune"):
            self.step = torch.compile(self.decoder.step, fullgraph=True,
                                      mode="reduce-overhead" if mode == "compile" else "max-autotune")
        elif mode in ("graph", "graph-torch"):
            self._capture()

    @torch.inference_mode()
    def _capture(self) -> None:
        """Warm up on a side stream (cuBLAS picks its kernels), then record one decode step.

        The warm-up writes junk at cache position 0; every sequence starts with a prefill that
        overwrites it.
        """
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.decoder.step(self.token, self.pos)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_logits = self.decoder.step(self.token, self.pos)

    @classmethod
    def load(cls, folder, name: str = "cuda", options: LoadOptions = LoadOptions()) -> "CudaBackend":
        status = cls.status(folder)
        if not status.usable:
            raise GptuiError(f"the cuda backend {status}; use onnx-int8 or torch-fp32 on this machine")
        model, _encoding = load_model(folder, device="cpu", dtype=torch.float32)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(model, name=name, device="cuda", dtype=dtype, mode=options.cuda_mode)

    @classmethod
    def status(cls, folder) -> Status:
        if not torch.cuda.is_available():
            return unavailable("needs an NVIDIA GPU with CUDA (none found)")
        return READY

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        self.pending = None
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits = self.model(idx, pos=0, last_only=True)
        self.position = len(ids)
        return logits[0, -1].float()  # stays on the GPU: the sampler works there

    def reset(self) -> None:
        self.pending = None
        super().reset()

    def logits_all(self, ids: list[int]) -> torch.Tensor:
        self.pending = None  # a launched step belongs to the sequence this one replaces
        return super().logits_all(ids)

    @torch.inference_mode()
    def launch(self, token: torch.Tensor) -> bool:
        self.token.copy_(token.view(1, 1))
        self.pending = self._run_step()
        return True

    @torch.inference_mode()
    def decode(self, token: int) -> torch.Tensor:
        if self.pending is not None:  # launched with this token's value while it was on the GPU
            logits, self.pending = self.pending, None
        else:
            self.token.fill_(token)
            logits = self._run_step()
        self.position += 1
        return logits

    def _run_step(self) -> torch.Tensor:
        """Queue one decode step at self.position for the token in self.token (no host sync)."""
        self.pos.fill_(self.position)
        if self.graph is not None:
            self.graph.replay()
            logits = self.static_logits
        else:
            logits = self.step(self.token, self.pos)
        return logits[0, -1].clone()  # on the GPU; a copy, since the next replay overwrites static_logits
