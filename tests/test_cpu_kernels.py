"""The C kernels behind torch-fp32's decode step (matrix-vector, attention, whole blocks): every instruction-set path, every tail."""

from __future__ import annotations

import shutil

import pytest
import torch

from gptui.core.kernels import cpu_kernels
from gptui.core.backends.cpu_modules import CpuAttention, CpuBlock, CpuLinear
from gptui.core.config import GPTConfig
from gptui.core.model import Block, KVCache

needs_kernel = pytest.mark.skipif(not cpu_kernels.available(), reason="the C kernel was not built (no compiler)")


@pytest.fixture
def isa(request):
    """Run the test on one kernel path, then go back to the one this CPU picked."""
    best = cpu_kernels.isa()
    used = cpu_kernels.select(request.param)
    yield used
    cpu_kernels.select(best)


def test_the_kernel_is_built_wherever_a_c_compiler_is():
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler on this machine")
    assert cpu_kernels.available()
    assert cpu_kernels.isa() in cpu_kernels.ISAS


@needs_kernel
@pytest.mark.parametrize("isa", cpu_kernels.ISAS, indirect=True)
@pytest.mark.parametrize("n,k", [(1, 1), (3, 15), (5, 16), (7, 17), (4, 63), (9, 64), (2, 65), (33, 200), (768, 768)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gemv_equals_the_matrix_product_on_every_path_and_tail(isa, n, k, with_bias):
    g = torch.Generator().manual_seed(n * 1000 + k)
    w, x = torch.randn(n, k, generator=g), torch.randn(1, 1, k, generator=g)
    bias = torch.randn(n, generator=g) if with_bias else None
    expected = x.double() @ w.double().T + (bias.double() if with_bias else 0)
    got = cpu_kernels.gemv(x, w, bias)
    assert got.shape == (1, 1, n) and got.dtype == torch.float32
    assert (got.double() - expected).abs().max().item() < 1e-5 * max(1.0, k ** 0.5)


@needs_kernel
def test_rows_do_not_depend_on_the_thread_count():
    """Each row is one thread's sum in a fixed order, so splitting the rows differently changes no bit."""
    g = torch.Generator().manual_seed(0)
    w, x, b = torch.randn(1001, 384, generator=g), torch.randn(384, generator=g), torch.randn(1001, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_kernels.gemv(x, w, b)
        torch.set_num_threads(2)
        two = cpu_kernels.gemv(x, w, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@needs_kernel
def test_gemv_refuses_what_it_cannot_multiply():
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match="one float32 CPU row of 16"):
        cpu_kernels.gemv(torch.randn(2, 16), w)  # two rows
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.gemv(torch.randn(16, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="unknown kernel"):
        cpu_kernels.select("sse9")


@needs_kernel
@pytest.mark.parametrize("isa", cpu_kernels.ISAS, indirect=True)
@pytest.mark.parametrize("n_head,head_dim,max_len,pos", [(1, 16, 8, 0), (2, 16, 64, 3), (3, 13, 40, 6),
                                                          (12, 64, 1024, 517), (6, 64, 100, 99)])
def test_attend_writes_the_cache_and_equals_sdpa_on_every_path(isa, n_head, head_dim, max_len, pos):
    g = torch.Generator().manual_seed(pos * 100 + head_dim)
    kv, qkv = torch.randn(2, 1, n_head, max_len, head_dim, generator=g), torch.randn(1, 1, 3 * n_head * head_dim, generator=g)
    expected_kv = kv.clone()
    q, k, v = qkv.view(3, n_head, head_dim)
    expected_kv[0, 0, :, pos], expected_kv[1, 0, :, pos] = k, v
    keys, values = expected_kv[0, 0, :, : pos + 1], expected_kv[1, 0, :, : pos + 1]
    expected = torch.nn.functional.scaled_dot_product_attention(q[:, None], keys, values).reshape(1, 1, -1)
    got = cpu_kernels.attend(qkv, kv, pos)
    assert torch.equal(kv, expected_kv)  # its row written, nothing else touched
    assert got.shape == (1, 1, n_head * head_dim)
    assert (got - expected).abs().max().item() < 1e-5


@needs_kernel
def test_attend_refuses_what_it_cannot_attend():
    kv, qkv = torch.zeros(2, 1, 2, 8, 4), torch.zeros(24)
    with pytest.raises(ValueError, match="outside the cache of 8"):
        cpu_kernels.attend(qkv, kv, 8)
    with pytest.raises(ValueError, match="one float32 CPU token of 24"):
        cpu_kernels.attend(torch.zeros(25), kv, 0)
    with pytest.raises(ValueError, match="contiguous float32 CPU cache"):
        cpu_kernels.attend(qkv, kv.transpose(3, 4), 0)
    with pytest.raises(ValueError, match="contiguous float32 CPU cache"):
        cpu_kernels.attend(qkv, torch.zeros(2, 2, 2, 8, 4), 0)  # batch 2


def random_block(n_embd: int, n_head: int, max_len: int, bias: bool, seed: int) -> Block:
    """A block whose every weight, norms included, is random (an identity norm would hide a dropped scale),
    with an eps large enough to matter (GPT-2's 1e-5 is lost in the tolerance)."""
    torch.manual_seed(seed)
    block = Block(GPTConfig(block_size=max_len, n_layer=1, n_head=n_head, n_embd=n_embd, bias=bias)).eval()
    block.ln_1.eps = block.ln_2.eps = 0.25
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 2 else 1.0))
    block.attn.kv_cache = KVCache(1, n_head, max_len, n_embd // n_head)
    block.attn.kv_cache.kv.normal_()
    return block


def c_step(block: Block) -> cpu_kernels.DecodeBlock:
    return cpu_kernels.DecodeBlock(block.ln_1, block.attn.c_attn, block.attn.c_proj, block.ln_2, block.mlp.c_fc,
                                   block.mlp.c_proj)


@needs_kernel
@pytest.mark.parametrize("isa", cpu_kernels.ISAS, indirect=True)
@pytest.mark.parametrize("n_embd,n_head,max_len,pos", [(32, 2, 8, 0), (39, 3, 40, 17), (64, 4, 64, 63),
                                                       (96, 6, 128, 100)])
@pytest.mark.parametrize("bias", [True, False])
def test_a_block_in_c_equals_the_pytorch_block_on_every_path(isa, n_embd, n_head, max_len, pos, bias):
    """Norms, products, attention, GELU and both residual adds, and the cache row it writes."""
    block = random_block(n_embd, n_head, max_len, bias, seed=pos + n_embd)
    x = torch.randn(1, 1, n_embd)
    cache = block.attn.kv_cache.kv
    before = cache.clone()
    with torch.no_grad():
        expected = block(x, pos)
        expected_cache, cache[:] = cache.clone(), before
        got = CpuBlock(block)(x, pos)
    assert got.shape == x.shape and not torch.equal(x, got)
    assert (got - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())
    assert (cache - expected_cache).abs().max().item() < 1e-5 * max(1.0, expected_cache.abs().max().item())
    assert torch.equal(cache[:, :, :, :pos], before[:, :, :, :pos])  # only row pos is written


@needs_kernel
def test_a_block_in_c_does_not_depend_on_the_thread_count():
    block = random_block(96, 6, 64, True, seed=1)
    step, x, cache = c_step(block), torch.randn(1, 1, 96), block.attn.kv_cache.kv
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = step(x, cache, 40)
        torch.set_num_threads(2)
        two = step(x, cache, 40)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@needs_kernel
def test_a_block_in_c_refuses_weights_and_caches_it_cannot_use():
    block = random_block(32, 2, 8, True, seed=0)
    cache = block.attn.kv_cache.kv
    step = c_step(block)
    with pytest.raises(ValueError, match="outside the cache of 8"):
        step(torch.zeros(32), cache, 8)
    with pytest.raises(ValueError, match="one float32 CPU token of 32"):
        step(torch.zeros(2, 32), cache, 0)
    with pytest.raises(ValueError, match="does not fit a block of width 32"):
        step(torch.zeros(32), torch.zeros(2, 1, 4, 8, 4), 0)
    block.ln_2.eps = 1e-6
    with pytest.raises(ValueError, match="differ in eps"):
        c_step(block)
    block.ln_2.eps = block.ln_1.eps
    block.mlp.c_fc.weight.data = block.mlp.c_fc.weight.data.double()
    with pytest.raises(ValueError, match=r"contiguous float32 CPU weights of \(128, 32\)"):
        c_step(block)
    block.mlp.c_fc.weight = None
    with pytest.raises(ValueError, match="needs every weight matrix"):
        c_step(block)


def test_cpu_linear_gives_nn_linear_for_one_row_and_many():
    torch.manual_seed(0)
    reference = torch.nn.Linear(96, 50)
    fast = CpuLinear(reference.weight, reference.bias)
    for rows in (1, 7):
        x = torch.randn(1, rows, 96)
        with torch.no_grad():
            assert (fast(x) - reference(x)).abs().max().item() < 1e-5


def test_without_the_kernel_the_backend_decodes_the_same_through_onednn(tiny_model_dir, monkeypatch):
    """An install with no C compiler: torch-fp32 falls back to oneDNN's packed weights and SDPA, same logits."""
    from gptui.core.backends import load_backend

    ids = list(range(100, 120))

    def logits(backend):
        return torch.stack([backend.prefill(ids[:5])] + [backend.decode(t) for t in ids[5:]])

    fast = logits(load_backend("torch-fp32", tiny_model_dir))
    monkeypatch.setattr(cpu_kernels, "_c", None)
    fallback = load_backend("torch-fp32", tiny_model_dir)
    assert not fallback.model.lm_head.gemv
    assert not any(isinstance(block, CpuBlock) or isinstance(block.attn, CpuAttention)
                   for block in fallback.model.transformer.h)
    assert (logits(fallback) - fast).abs().max().item() < 1e-4
