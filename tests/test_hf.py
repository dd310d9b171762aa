"""Our GPT and Hugging Face's GPT2LMHeadModel compute the same function from the same weights."""

from __future__ import annotations

import sys

import pytest
import torch

from gptui.core.checkpoint import load_model, load_state_dict, save_checkpoint
from gptui.core.errors import GptuiError
from gptui.core.hf import from_hf_state_dict, load_hf_model, save_hf_copy, to_hf_state_dict

from backend_fixtures import random_ids
from conftest import make_tiny

transformers = pytest.importorskip("transformers")


def test_logits_match_hugging_face(tiny_model_dir):
    ours, _ = load_model(tiny_model_dir)
    hf = load_hf_model(tiny_model_dir)
    ids = torch.tensor([random_ids(64, seed=1), random_ids(64, seed=2)])  # the whole context, batch 2
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-4


def test_hf_copy_loads_with_from_pretrained_and_reproduces_logits(tiny_model_dir, tmp_path):
    save_hf_copy(tiny_model_dir, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ours, _ = load_model(tiny_model_dir)
    ids = torch.tensor([random_ids(40, seed=3)])
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4
    assert hf.config.vocab_size == ours.config.padded_vocab_size


def test_hf_greedy_generate_with_cache_equals_ours(tiny_model_dir):
    """Both KV caches, step by step: the same greedy continuation."""
    from gptui.core.backends import load_backend

    hf = load_hf_model(tiny_model_dir)
    backend = load_backend("torch-fp32", tiny_model_dir)
    prompt = random_ids(8, seed=4)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, use_cache=True,
                             pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
    ours, logits = [], backend.prefill(prompt)
    for _ in range(24):
        ours.append(int(logits.argmax()))
        logits = backend.decode(ours[-1])
    assert ours == theirs


def test_state_dict_conversion_round_trips(tiny_model_dir):
    ours = load_state_dict(tiny_model_dir)
    config = load_model(tiny_model_dir)[0].config
    back = from_hf_state_dict(to_hf_state_dict(ours, config))
    assert set(back) == set(ours)
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    # HF's Conv1D keeps (in, out): the converted c_attn weight is the transpose of ours
    hf = to_hf_state_dict(ours, config)
    assert hf["transformer.h.0.attn.c_attn.weight"].shape == ours["transformer.h.0.attn.c_attn.weight"].t().shape


def test_model_without_biases_converts_with_zero_biases(tmp_path):
    save_checkpoint(tmp_path / "nobias", make_tiny(bias=False), "gpt2-code")
    ours, _ = load_model(tmp_path / "nobias")
    hf = load_hf_model(tmp_path / "nobias")
    ids = torch.tensor([random_ids(30, seed=5)])
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_missing_transformers_is_a_clear_error(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(GptuiError, match="transformers is not installed"):
        load_hf_model(tiny_model_dir)
