"""cuda: bf16 weights on an NVIDIA GPU, a static KV cache, and the decode step as one CUDA graph.

At batch 1 a decode step is ~170 small kernels; launched one by one from Python, the GPU waits
on the CPU. Captured once in a CUDA graph, the whole step is replayed with one launch, and with
each layer norm + matmul + bias/GELU/residual fused into one Triton kernel (FusedBlock and
FusedLinear, fused_modules.py, over core/kernels/fused_linear.py) it is ~90 kernels (0.37 ms for
GPT-2 124M on an H100). The next step is queued from the sampler's GPU tensor before the host
reads the token (launch), so host and GPU work overlap.

What is captured is the model's own forward, model(token, position), with the token and the
position in device tensors: given a positions tensor, GPT.forward takes its static path
(attention reads the whole cache under a mask of the positions written so far; the new key and
value land with index_copy_), whose shapes and addresses never change. Prefill calls the same
forward with an int start (variable length, flash attention); both write the same cache buffers.
"""

from __future__ import annotations

import torch

from ..checkpoint import load_model
from ..errors import GptuiError
from ..kernels.fused_linear import available as fused_available
from ..model import GPT
from .base import Backend
from .contract import READY, LoadOptions, Status, unavailable
from .fused_modules import use_fused_modules
from .torch_backend import forward_ids, weight_bytes

# CUDA graph by hand over the fused Triton kernels (fused_linear.py) or over plain torch ops;
# torch.compile in reduce-overhead mode (fusions + its own CUDA graphs); the same with max-autotune
# (Triton matmul templates tried against cuBLAS; minutes to compile); no graph at all.
MODES = ("graph", "graph-torch", "compile", "autotune", "eager")


class CudaBackend(Backend):
    """A GPT on a GPU with its decode step replayed from a graph (or compiled, or eager, by mode).

    device and dtype are arguments so that the tests can run every mode's Python on a CPU
    (eager there); load() and status() are what ask for an NVIDIA GPU.
    """

    def __init__(self, model: GPT, name: str = "cuda", device: str | torch.device = "cuda",
                 dtype: torch.dtype = torch.bfloat16, mode: str = "graph"):
        if mode not in MODES:
            raise GptuiError(f"unknown cuda mode {mode!r}; choose from {', '.join(MODES)}")
        self.name = name
        self.device = torch.device(device)
        self.mode = mode
        self.block_size = model.config.block_size
        self.position = 0
        self.pending: torch.Tensor | None = None  # logits of a launched step, not yet collected
        with torch.inference_mode():
            # the captured step's inputs: fixed addresses, refilled before each replay
            self.token = torch.zeros((1, 1), dtype=torch.long, device=self.device)
            self.pos = torch.zeros(1, dtype=torch.long, device=self.device)
            self.model = model.to(device=self.device, dtype=dtype).eval()
            self.model.setup_cache(batch=1, device=self.device, dtype=dtype)
            # graph and eager run the fused kernels where Triton can (eager: the same step, unreplayed)
            self.fused = mode in ("graph", "eager") and fused_available(self.device)
            use_fused_modules(self.model, triton=self.fused)
            self.kernels_note = "fused Triton kernels" if self.fused else "torch ops"
            if self.fused:
                try:  # Triton compiles here; it needs a C compiler and a driver it supports
                    self.model(self.token, self.pos)
                except Exception as error:  # noqa: BLE001 - any compile failure means: run torch ops
                    self.fused = False
                    use_fused_modules(self.model, triton=False)
                    self.kernels_note = f"torch ops (Triton failed: {type(error).__name__})"
        self.step = self.model
        self.graph: torch.cuda.CUDAGraph | None = None
        if mode in ("compile", "autotune"):
            self.step = torch.compile(self.model, fullgraph=True,
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
                self.model(self.token, self.pos)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_logits = self.model(self.token, self.pos)

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

    def prefill(self, ids: list[int]) -> torch.Tensor:
        self.pending = None  # a launched step belongs to the sequence this one replaces
        logits = forward_ids(self.model, ids, self.device, last_only=True)
        self.position = len(ids)
        return logits[-1].float()  # stays on the GPU: the sampler works there

    def reset(self) -> None:
        self.pending = None
        super().reset()

    def logits_all(self, ids: list[int]) -> torch.Tensor:
        self.pending = None
        logits = forward_ids(self.model, ids, self.device)
        self.position = len(ids)
        return logits.float().cpu()

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

    @property
    def nbytes(self) -> int:
        return weight_bytes(self.model)
