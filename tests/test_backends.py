"""Every backend computes what torch-fp32 computes: fp32 ones to float precision, INT8 ones closely."""

from __future__ import annotations

import sys

import pytest
import torch

from gptui.core.backends import BACKENDS, backend_class, load_backend
from gptui.core.backends.contract import BUILDS, READY, State
from gptui.core.backends.cuda_backend import CudaBackend
from gptui.core.backends.fused_modules import FusedBlock, FusedLinear
from gptui.core.kernels import cpu_kernels
from gptui.core.backends.cpu_modules import CpuAttention, CpuBlock, CpuLinear, onednn_available
from gptui.core.checkpoint import load_model
from gptui.core.errors import GptuiError
from gptui.core.generate import DoneEvent, generate
from gptui.core.sampling import SamplingParams
from gptui.core.tokenizer import get_encoding

from backend_fixtures import exported_dir, random_ids, reference_logits, stepwise_logits  # noqa: F401

FP32 = ("torch-fp32", "onnx-fp32")
INT8 = ("torch-int8", "onnx-int8")


def cpu_static_decoder(folder):
    """The cuda backend's graph-ready decode step, run eagerly in fp32 on the CPU."""
    model, _ = load_model(folder)
    return CudaBackend(model, device="cpu", dtype=torch.float32, mode="eager")


@pytest.mark.parametrize("name", FP32 + ("cuda-step-on-cpu",))
def test_fp32_backends_match_a_full_forward_at_every_step(name, exported_dir):
    """Prefill, then decode one token at a time up to the end of the context (64 for tiny)."""
    backend = cpu_static_decoder(exported_dir) if name == "cuda-step-on-cpu" else load_backend(name, exported_dir)
    ids = random_ids(64, seed=10)
    expected = reference_logits(exported_dir, ids)[4:]
    got = stepwise_logits(backend, ids, prefill=5)
    assert (got - expected).abs().max().item() < 1e-4
    assert backend.position == 64


@pytest.mark.skipif(not (onednn_available() or cpu_kernels.available()), reason="neither oneDNN nor the C kernel")
def test_torch_fp32_multiplies_through_cpu_linears_sharing_the_tied_embedding(exported_dir):
    """Every matrix, the tied head included, is a CpuLinear; the head reads the embedding's own storage."""
    backend = load_backend("torch-fp32", exported_dir)
    assert not any(isinstance(m, torch.nn.Linear) for m in backend.model.modules())
    head = backend.model.lm_head
    assert isinstance(head, CpuLinear) and head.gemv == cpu_kernels.available()
    assert head.weight.data_ptr() == backend.model.transformer.wte.weight.data_ptr()
    assert backend.nbytes == 4 * backend.model.config.num_params()


def test_torch_backends_decode_in_c_where_the_kernel_is_built(exported_dir):
    """torch-fp32 carries a one-token step through each block in one C call; torch-int8, whose products
    are PyTorch's, sends only the attention there (the tests above check both backends' logits)."""
    blocks = load_backend("torch-fp32", exported_dir).model.transformer.h
    assert all(isinstance(block, CpuBlock) == cpu_kernels.available() for block in blocks)
    blocks = load_backend("torch-int8", exported_dir).model.transformer.h
    assert all(isinstance(block.attn, CpuAttention) == cpu_kernels.available() and not isinstance(block, CpuBlock)
               for block in blocks)


@pytest.mark.parametrize("name", FP32 + INT8)
def test_logits_all_agrees_with_prefill(name, exported_dir):
    backend = load_backend(name, exported_dir)
    ids = random_ids(30, seed=11)
    every = backend.logits_all(ids)
    assert every.shape == (30, backend.logits_all(ids[:1]).shape[-1])
    # fp32: identical math; INT8: activations are quantized over the rows a call holds
    tolerance = 1e-4 if name in FP32 else 0.05 * every.abs().max().item()
    assert (every[-1] - backend.prefill(ids)).abs().max().item() < tolerance


@pytest.mark.parametrize("name", INT8)
def test_int8_logits_are_close_and_greedy_choices_mostly_agree(name, exported_dir):
    backend = load_backend(name, exported_dir)
    text = get_encoding("gpt2-code").encode("def fibonacci(n):\n    if n < 2:\n        return n\n" * 3)[:64]
    expected = reference_logits(exported_dir, text)
    got = stepwise_logits(backend, text, prefill=8)
    expected = expected[7:]
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() < 0.05 * scale
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agree >= 0.9


@pytest.mark.parametrize("name", FP32 + INT8)
def test_prefill_starts_a_new_sequence(name, exported_dir):
    """The generation loop re-prefills when it slides the window: nothing of the old sequence may leak."""
    backend = load_backend(name, exported_dir)
    first = random_ids(40, seed=12)
    backend.prefill(first)
    for token in random_ids(10, seed=13):
        backend.decode(token)
    second = random_ids(20, seed=14)
    again = backend.prefill(second)
    fresh = load_backend(name, exported_dir).prefill(second)
    assert torch.equal(again, fresh)
    assert backend.position == 20


@pytest.mark.parametrize("name", ("onnx-fp32", "onnx-int8", "torch-int8"))
def test_generation_past_the_context_matches_torch(name, exported_dir):
    """Greedy generation for 3x the context (the window slides) gives torch-fp32's tokens (INT8: mostly)."""
    encoding = get_encoding("gpt2-code")
    params = SamplingParams(temperature=0.0, max_tokens=192)

    def tokens(backend_name):
        events = list(generate(load_backend(backend_name, exported_dir), encoding, random_ids(20, seed=15), params,
                               stop_at_eos=False))
        assert isinstance(events[-1], DoneEvent) and events[-1].tokens == 192
        return [e.token_id for e in events[:-1]]

    ours, reference = tokens(name), tokens("torch-fp32")
    if name in FP32:
        assert ours == reference
    else:
        assert sum(a == b for a, b in zip(ours, reference)) / len(reference) >= 0.5


class CountingLaunches(CudaBackend):
    launched = 0

    def launch(self, token):
        self.launched += 1
        return super().launch(token)


@pytest.mark.parametrize("temperature", (0.0, 0.9))
def test_decode_launched_before_the_host_reads_the_token_changes_nothing(temperature, exported_dir):
    """The cuda backend queues each decode step from the sampler's device tensor (Backend.launch);
    across window slides, stop strings and a second prompt, the tokens are torch-fp32's."""
    encoding = get_encoding("gpt2-code")
    prompts = [random_ids(20, seed=17), random_ids(50, seed=18)]

    def run(backend, params):
        return [[e.token_id for e in generate(backend, encoding, p, params, stop_at_eos=False) if not isinstance(e, DoneEvent)]
                for p in prompts]

    launching = CountingLaunches(load_model(exported_dir)[0], device="cpu", dtype=torch.float32, mode="eager")
    reference = load_backend("torch-fp32", exported_dir)
    for params in (SamplingParams(temperature=temperature, seed=3, max_tokens=150),
                   SamplingParams(temperature=temperature, seed=3, max_tokens=40, stop=("e",))):
        assert run(launching, params) == run(reference, params)
    assert launching.launched > 100  # the launched path really ran (not on the steps that slide)


def test_cuda_backend_falls_back_to_torch_ops_when_triton_cannot_compile(exported_dir, monkeypatch):
    """Triton present but unusable (no compiler, no driver: here, a CPU) must not take the backend down."""
    import gptui.core.backends.cuda_backend as cuda_backend

    monkeypatch.setattr(cuda_backend, "fused_available", lambda device: True)
    backend = CudaBackend(load_model(exported_dir)[0], device="cpu", dtype=torch.float32, mode="eager")
    assert not backend.fused and backend.kernels_note.startswith("torch ops (Triton failed")
    ids = random_ids(20, seed=20)
    expected = reference_logits(exported_dir, ids)[4:]
    assert (stepwise_logits(backend, ids, prefill=5) - expected).abs().max().item() < 1e-4


def test_a_launched_step_left_behind_never_answers_for_a_new_sequence(exported_dir):
    """Generation may stop after a launch; prefill, logits_all and reset must drop that step."""
    backend = CudaBackend(load_model(exported_dir)[0], device="cpu", dtype=torch.float32, mode="eager")
    ids = random_ids(12, seed=21)
    for start_again in (lambda: backend.prefill(ids), lambda: backend.logits_all(ids),
                        lambda: (backend.reset(), backend.prefill(ids))):
        backend.prefill(random_ids(7, seed=22))
        backend.launch(torch.tensor(3))  # queued, never collected
        start_again()
        expected = reference_logits(exported_dir, ids + [9])[-1]
        assert (backend.decode(9) - expected).abs().max().item() < 1e-4


def test_cuda_backend_run_on_a_cpu_swaps_modules_and_keeps_the_backend_contract(exported_dir):
    """The cuda backend's own code, eager on a CPU: fused modules swapped in (torch ops, no Triton),
    logits_all, decode after it, reset, nbytes, and a second backend over the same model (as
    bench/decode_gpu.py builds one) that neither wraps the modules twice nor computes differently."""
    backend = cpu_static_decoder(exported_dir)
    model = backend.model
    assert all(isinstance(block, FusedBlock) for block in model.transformer.h)
    fused_linears = [m for m in model.modules() if isinstance(m, FusedLinear)]
    assert isinstance(model.lm_head, FusedLinear) and not any(m.triton for m in fused_linears)
    ids = random_ids(30, seed=23)
    expected = reference_logits(exported_dir, ids + [5])
    assert (backend.logits_all(ids) - expected[:-1]).abs().max().item() < 1e-4 and backend.position == 30
    assert (backend.decode(5) - expected[-1]).abs().max().item() < 1e-4 and backend.position == 31
    backend.reset()
    assert backend.position == 0 and backend.nbytes == 4 * model.config.num_params()
    again = CudaBackend(model, device="cpu", dtype=torch.float32, mode="eager")
    assert sum(isinstance(m, FusedBlock) for m in model.modules()) == model.config.n_layer
    assert (stepwise_logits(again, ids, prefill=5) - expected[4:-1]).abs().max().item() < 1e-4


def test_the_captured_step_has_no_host_read_of_the_position(exported_dir):
    """What the cuda backend captures, model(token, position tensor), traces as one graph that serves
    every position: a host read of the position (a sync) or a Python branch on it would break the
    fullgraph trace or recompile. A CPU stand-in for CUDA graph capture, which no test here can run."""
    import torch._dynamo

    backend = cpu_static_decoder(exported_dir)
    backend.prefill(random_ids(10, seed=24))
    torch._dynamo.reset()
    step = torch.compile(backend.model, backend="eager", fullgraph=True, dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True), torch.inference_mode():
        for position in (10, 11, 40):
            token, pos = torch.tensor([[5]]), torch.tensor([position])
            assert torch.equal(step(token, pos), backend.model(token, pos))


def test_int8_backends_hold_under_a_third_of_the_fp32_bytes(exported_dir):
    fp32 = {name: load_backend(name, exported_dir).nbytes for name in FP32}
    for name, base in zip(INT8, FP32):
        assert load_backend(name, exported_dir).nbytes <= 0.35 * fp32[base]


def test_auto_picks_a_backend_this_machine_runs(tiny_model_dir):
    backend = load_backend("auto", tiny_model_dir)
    assert backend.name == ("cuda" if torch.cuda.is_available() else "torch-fp32")
    assert "auto" in BACKENDS


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_clear_error(tiny_model_dir):
    with pytest.raises(GptuiError, match="needs an NVIDIA GPU"):
        load_backend("cuda", tiny_model_dir)
    status = CudaBackend.status(tiny_model_dir)
    assert status.state is State.UNAVAILABLE and not status.usable and str(status).startswith("needs")


def test_onnx_status_says_when_the_artifact_builds_on_first_use(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GPTUI_CACHE_DIR", raising=False)
    onnx = backend_class("onnx-fp32")
    assert onnx.status(tiny_model_dir) == BUILDS and str(BUILDS) == "builds on first use"
    load_backend("onnx-fp32", tiny_model_dir)
    assert onnx.status(tiny_model_dir) == READY and onnx.status(tiny_model_dir).usable


def test_missing_onnxruntime_is_one_clear_error(exported_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(GptuiError, match="onnxruntime is not installed"):
        load_backend("onnx-int8", exported_dir)


def test_unknown_backend_is_one_clear_error(tiny_model_dir):
    with pytest.raises(GptuiError, match="unknown backend"):
        load_backend("tpu-int3", tiny_model_dir)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ("graph", "graph-torch", "eager"))
def test_cuda_backend_tracks_fp32_on_a_gpu(mode, tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    backend = CudaBackend(model, mode=mode)
    ids = random_ids(64, seed=16)
    expected = reference_logits(tiny_model_dir, ids)[4:]
    got = stepwise_logits(backend, ids, prefill=5)
    assert (got - expected).abs().max().item() < 0.05 * expected.abs().max().item()  # bf16 weights
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean().item() >= 0.9
    # a second sequence through the same captured graph starts clean
    assert torch.allclose(backend.prefill(ids[:10]), CudaBackend(load_model(tiny_model_dir)[0], mode=mode).prefill(ids[:10]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sampling_on_gpu_logits_is_seeded_and_greedy_matches_argmax(tiny_model_dir):
    from gptui.core.generate import TokenEvent, generate
    from gptui.core.sampling import SamplingParams
    from gptui.core.tokenizer import get_encoding

    backend = CudaBackend(load_model(tiny_model_dir)[0])
    enc = get_encoding("gpt2-code")
    runs = [[e.token_id for e in generate(backend, enc, [1, 2, 3], SamplingParams(temperature=1.0, seed=5, max_tokens=20))
             if isinstance(e, TokenEvent)] for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 20
    greedy = [e for e in generate(backend, enc, [1, 2, 3], SamplingParams(temperature=0, max_tokens=5), alternatives=3)
              if isinstance(e, TokenEvent)]
    assert all(e.top[0][0] == e.token_id for e in greedy)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_decode_launched_ahead_matches_eager_steps_on_a_gpu(tiny_model_dir):
    """Graph replays queued from the sampler's GPU tensor give the eager path's tokens, window slides included."""
    enc = get_encoding("gpt2-code")
    params = SamplingParams(temperature=0.7, seed=2, max_tokens=150)
    runs = {mode: [e.token_id for e in generate(CudaBackend(load_model(tiny_model_dir)[0], mode=mode), enc,
                                                random_ids(30, seed=19), params, stop_at_eos=False)
                   if not isinstance(e, DoneEvent)] for mode in ("graph", "eager")}
    assert runs["graph"] == runs["eager"] and len(runs["graph"]) == 150



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n,k", ((2304, 768), (100, 37), (768, 3072)))
def test_fused_linear_computes_norm_matmul_bias_gelu_residual(n, k):
    from gptui.core.kernels.fused_linear import fused_linear

    pytest.importorskip("triton")
    torch.manual_seed(0)
    x, residual = torch.randn(k, device="cuda"), torch.randn(n, device="cuda")
    linear, norm = torch.nn.Linear(k, n).cuda(), torch.nn.LayerNorm(k).cuda()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    with torch.no_grad():
        expected = residual + torch.nn.functional.gelu(linear(norm(x)), approximate="tanh")
        got = fused_linear(x, linear.weight, linear.bias, norm=norm, gelu=True, residual=residual)
        assert (got - expected).abs().max().item() < 1e-4
        plain = fused_linear(x, linear.weight, out_dtype=torch.float64)
        assert plain.dtype == torch.float64 and (plain - x @ linear.weight.t()).abs().max().item() < 1e-4
