import pytest
import torch

from gptui.core.backends.torch_backend import TorchBackend
from gptui.core.config import GPTConfig, PRESETS, preset
from gptui.core.errors import GptuiError
from gptui.core.generate import ContextWindow

from conftest import make_tiny


def test_vocab_is_padded_to_a_multiple_of_64():
    config = GPTConfig(vocab_size=50281, n_layer=1, n_head=1, n_embd=8, block_size=8)
    assert config.padded_vocab_size == 50304
    assert GPTConfig(vocab_size=128, n_layer=1, n_head=1, n_embd=8).padded_vocab_size == 128


def test_presets_have_the_sizes_the_design_names():
    small = preset("small", vocab_size=50281)
    assert 25e6 < small.num_params() < 35e6
    assert 120e6 < preset("gpt2", vocab_size=50257).num_params() < 130e6
    with pytest.raises(GptuiError):
        preset("huge")
    assert set(PRESETS) >= {"tiny", "small", "gpt2"}


def test_num_params_formula_matches_the_module():
    model = make_tiny()
    assert model.num_params() == model.config.num_params()


def test_output_head_is_tied_to_the_embedding():
    model = make_tiny()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_chunked_prefill_with_cache_equals_one_full_pass():
    model = make_tiny()
    idx = torch.randint(0, 50000, (1, 40))
    with torch.no_grad():
        full = model(idx)
        model.setup_cache(batch=1)
        first = model(idx[:, :25], pos=0)
        second = model(idx[:, 25:], pos=25)
        model.clear_cache()
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=1e-5, rtol=0)


# How a 64-token sequence goes through the cache: the lengths of successive forward calls.
SCHEDULES = {
    "prefill 5, then one token at a time": [5] + [1] * 59,
    "every token a decode step": [1] * 64,
    "prefill 1, 13, 40 and 63 in pieces, then decode": [1, 12, 27, 23, 1],
    **{f"prefill {n}, then decode": [n] + [1] * (64 - n) for n in (1, 13, 40, 63)},
}


@pytest.mark.parametrize("positions", ["int start", "tensor"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_cached_forward_in_any_pieces_equals_one_full_pass(schedule, positions):
    """Both ways of addressing the cache give the uncached logits: an int start (rows up to there) and a
    positions tensor (the static path a CUDA graph captures: every row read, under a mask). The cache
    starts full of junk: rows not written yet must never be seen."""
    model = make_tiny()
    idx = torch.randint(0, 50000, (2, model.config.block_size), generator=torch.Generator().manual_seed(1))
    pieces, start = [], 0
    with torch.no_grad():
        full = model(idx)
        model.setup_cache(batch=2)
        for attn in model.attentions():
            attn.kv_cache.kv.normal_()
        for length in SCHEDULES[schedule]:
            pos = start if positions == "int start" else torch.arange(start, start + length)
            pieces.append(model(idx[:, start : start + length], pos))
            start += length
        model.clear_cache()
    assert start == model.config.block_size
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_kv_cached_decoding_matches_recompute_across_the_context_limit():
    model = make_tiny()
    block = model.config.block_size
    backend = TorchBackend(model)
    window = ContextWindow(backend)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 50000, (block - 10,), generator=g).tolist()
    logits = window.start(prompt)
    worst = 0.0
    slid = False
    for step in range(3 * block):  # runs past the window several times
        with torch.no_grad():
            reference = model(torch.tensor([window.ids]))[0, -1]
        worst = max(worst, (logits - reference).abs().max().item())
        token = int(torch.randint(0, 50000, (1,), generator=g))
        before = len(window.ids)
        logits = window.push(token)
        slid |= len(window.ids) < before + 1
        assert len(window.ids) <= block and window.ids[-1] == token
    assert slid
    assert worst < 1e-4


def test_forward_past_block_size_is_refused():
    model = make_tiny()
    with pytest.raises(ValueError):
        model(torch.zeros(1, model.config.block_size + 1, dtype=torch.long))


@pytest.mark.parametrize("fp32_residual", [False, True])
def test_residual_stream_dtype_under_autocast(fp32_residual):
    """Under bf16 autocast the blocks see a bf16 residual stream unless fp32_residual is set; the
    logits stay close to the fp32 model's either way. Without autocast nothing changes."""
    model = make_tiny().eval()
    model.fp32_residual = fp32_residual
    seen = []
    model.transformer.h[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    idx = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        reference = model(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(idx)
    assert seen == [torch.float32, torch.float32 if fp32_residual else torch.bfloat16]
    assert (mixed.float() - reference).abs().max() < 0.05 * reference.abs().max()


def test_bias_gelu_matches_gelu_of_the_sum_with_gradients():
    """The op's plain-torch path (CPU): values, d/dz and the bias gradient summed over every row."""
    from gptui.core.kernels.bias_gelu import bias_gelu

    torch.manual_seed(0)
    z = torch.randn(3, 5, 40, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(40, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 5, 40, dtype=torch.float64)
    out = bias_gelu(z, bias)
    got = torch.autograd.grad(out, (z, bias), grad)
    reference = torch.nn.functional.gelu(z + bias, approximate="tanh")
    expected = torch.autograd.grad(reference, (z, bias), grad)
    torch.testing.assert_close(out, reference)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]),
])
def test_training_on_a_gpu_uses_the_fused_bias_gelu_and_gets_the_same_gradients(device, monkeypatch):
    """Training swaps each MLP for a BiasGeluMLP where Triton runs (on the CPU: forced, and the op takes its
    plain-torch path): the same parameter names, bias_gelu once per layer, the plain MLP's gradients."""
    from gptui.training import bias_gelu_mlp

    if device == "cpu":
        untouched = bias_gelu_mlp.use_bias_gelu(make_tiny(), torch.device("cpu"))
        assert not any(isinstance(block.mlp, bias_gelu_mlp.BiasGeluMLP) for block in untouched.transformer.h)
        monkeypatch.setattr(bias_gelu_mlp, "available", lambda device: True)
    plain = make_tiny().to(device).train()
    model = bias_gelu_mlp.use_bias_gelu(make_tiny().to(device).train(), torch.device(device))
    assert list(model.state_dict()) == list(plain.state_dict())
    idx = torch.randint(0, model.config.vocab_size, (3, 40), device=device)
    calls = []
    fused = bias_gelu_mlp.bias_gelu
    monkeypatch.setattr(bias_gelu_mlp, "bias_gelu", lambda z, b: calls.append(1) or fused(z, b))

    def grads(model):
        model.zero_grad()
        model(idx).float().square().mean().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    with_kernel = grads(model)
    assert len(calls) == model.config.n_layer
    reference = grads(plain)
    assert len(calls) == model.config.n_layer
    for name in reference:
        torch.testing.assert_close(with_kernel[name], reference[name], atol=1e-5, rtol=1e-4, msg=name)
