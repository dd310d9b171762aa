"""onnx-fp32 and onnx-int8: ONNX Runtime on the CPU, with the KV cache bound in place.

The cache is one preallocated (1, n_head, block_size, head_dim) buffer per layer for keys and
one for values, bound as both the past input and the present output of every run: the
attention kernel writes the new positions into it and nothing is copied between steps. The
logits land in a preallocated buffer too, so a decode step allocates nothing but its result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..errors import GptuiError
from ..onnx_export import artifact_status, find_or_build
from .base import Backend, cpu_threads
from .contract import LoadOptions, Status, unavailable


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise GptuiError("onnxruntime is not installed (pip install onnxruntime)") from None
    return onnxruntime


def session_options(threads: int | None = None, spin: bool = True):
    """The options every ONNX session of ours gets, from the CLI, the app, the server and `gptui
    bench` alike: all graph optimisations, one sequential stream of kernels each using `threads`
    cores (None: base.cpu_threads(), torch's count). The count is always set: ONNX Runtime's
    own default (0) also pins each worker thread to a core, which the bench's sessions never did.

    spin: worker threads busy-wait between kernels. On an idle machine that is faster (small
    model, 2 cores: 549 against 463 tokens/s); when other processes want the cores it is much
    slower (208 against 125 tokens/s beside one busy process), since a spinning thread holds a
    core that a descheduled worker needs.
    """
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = cpu_threads(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3  # errors only: shape-merge warnings are noise here
    return options


def open_session(path: Path, threads: int | None = None, spin: bool = True):
    ort = _ort()
    try:
        return ort.InferenceSession(str(path), session_options(threads, spin), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for bad protobufs, graphs and kernels
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GptuiError(f"{path}: not a loadable ONNX model, corrupted or truncated ({detail[:200]})") from None


class OnnxBackend(Backend):
    kind = ""  # "fp32" or "int8": which artifact (core.onnx_export.KINDS)

    def __init__(self, session, path: Path, config, name: str):
        ort = _ort()
        self.session = session
        self.path = path
        self.name = name
        self.block_size = config.block_size
        self.position = 0
        self.vocab = config.padded_vocab_size
        shape = (1, config.n_head, config.block_size, config.head_dim)
        self._cache = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32))
                       for _ in range(2 * config.n_layer)]
        self._logits = np.zeros((1, 1, self.vocab), np.float32)
        self._token = np.zeros((1, 1), np.int64)
        self._past_length = np.zeros(1, np.int64)
        self._keep = np.ones(1, np.int64)
        # OrtValues over these numpy arrays share their memory: writing the array updates the input.
        self._token_value = ort.OrtValue.ortvalue_from_numpy(self._token)
        self._binding = session.io_binding()
        b = self._binding
        for i in range(config.n_layer):
            for j, kind in enumerate(("key", "value")):
                b.bind_ortvalue_input(f"past_{kind}_{i}", self._cache[2 * i + j])
                b.bind_ortvalue_output(f"present_{kind}_{i}", self._cache[2 * i + j])
        b.bind_ortvalue_input("past_length", ort.OrtValue.ortvalue_from_numpy(self._past_length))
        b.bind_ortvalue_input("logits_to_keep", ort.OrtValue.ortvalue_from_numpy(self._keep))
        self._bind_logits()

    def _bind_logits(self) -> None:
        self._binding.bind_ortvalue_output("logits", _ort().OrtValue.ortvalue_from_numpy(self._logits))

    @classmethod
    def load(cls, folder, name: str | None = None, options: LoadOptions = LoadOptions()) -> "OnnxBackend":
        """Open the model's ONNX artifact, building it first if there is none (see core.onnx_export).

        options.progress hears about a build; options.onnx_path names an exact ONNX file to use;
        options.threads and options.spin go to session_options.
        """
        _ort()
        config = Checkpoint.open(folder).config
        session, found = find_or_build(folder, cls.kind, lambda p: open_session(p, options.threads, options.spin),
                                       options.progress, options.onnx_path)
        return cls(session, found, config, name or f"onnx-{cls.kind}")

    @classmethod
    def status(cls, folder) -> Status:
        try:
            _ort()
        except GptuiError as e:
            return unavailable(str(e))
        return artifact_status(folder, cls.kind)

    def _run(self) -> None:
        try:
            self.session.run_with_iobinding(self._binding)
        except Exception as e:
            raise GptuiError(f"{self.path}: ONNX Runtime failed ({str(e).splitlines()[0][:200]})") from None

    def prefill(self, ids: list[int]) -> torch.Tensor:
        self._binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        self._past_length[0] = 0
        self._run()
        self.position = len(ids)
        return torch.from_numpy(self._logits[0, 0].copy())

    def decode(self, token: int) -> torch.Tensor:
        self._token[0, 0] = token
        self._past_length[0] = self.position
        self._binding.bind_ortvalue_input("input_ids", self._token_value)
        self._run()
        self.position += 1
        return torch.from_numpy(self._logits[0, 0].copy())

    def logits_all(self, ids: list[int]) -> torch.Tensor:
        self._binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        self._past_length[0] = 0
        self._keep[0] = len(ids)
        logits = np.empty((1, len(ids), self.vocab), np.float32)
        self._binding.bind_ortvalue_output("logits", _ort().OrtValue.ortvalue_from_numpy(logits))
        try:
            self._run()
        finally:
            self._keep[0] = 1
            self._bind_logits()
        self.position = len(ids)
        return torch.from_numpy(logits[0])

    @property
    def nbytes(self) -> int:
        return self.path.stat().st_size


class OnnxFp32Backend(OnnxBackend):
    kind = "fp32"


class OnnxInt8Backend(OnnxBackend):
    kind = "int8"
