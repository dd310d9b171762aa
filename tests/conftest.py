"""Shared fixtures: tiny checkpoints, and user folders pointed at temp dirs so tests never touch $HOME."""

from __future__ import annotations

import pytest
import torch

from gptui.core.checkpoint import save_checkpoint
from gptui.core.config import preset
from gptui.core.model import GPT
from gptui.core.tokenizer import get_encoding


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("user")
    for var in ("GPTUI_CONFIG_DIR", "GPTUI_DATA_DIR", "GPTUI_CACHE_DIR"):
        monkeypatch.setenv(var, str(base / var.lower()))
    monkeypatch.delenv("GPTUI_MODEL", raising=False)
    monkeypatch.delenv("GPTUI_BACKEND", raising=False)
    monkeypatch.delenv("GPTUI_DB", raising=False)  # the history log goes to the per-test data dir
    monkeypatch.delenv("GPTUI_NO_LOG", raising=False)


def make_tiny(seed: int = 0, encoding: str = "gpt2-code", **overrides) -> GPT:
    torch.manual_seed(seed)
    config = preset("tiny", vocab_size=get_encoding(encoding).n_vocab, **overrides)
    model = GPT(config)
    # Random init gives near-uniform logits; a larger output scale makes sampling and greedy
    # decoding meaningfully different, as in a trained model.
    with torch.no_grad():
        model.transformer.wte.weight.mul_(25)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny"
    save_checkpoint(folder, make_tiny(), "gpt2-code", provenance={"test": True})
    return folder
