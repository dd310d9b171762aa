"""Session-wide artifacts for the backend, ONNX and export tests: built once, shared read-only.

Import the fixtures into a test module (`from backend_fixtures import exported_dir`) to use them.
"""

from __future__ import annotations

import pytest
import torch

from gptui.core.checkpoint import load_model
from gptui.training.export import export_model


@pytest.fixture(scope="session")
def exported_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model exported in fp32 (so its logits equal the source's): weights, ONNX, HF copy."""
    out = tmp_path_factory.mktemp("exports") / "tiny"
    export_model(tiny_model_dir, out, dtype="fp32")
    return out


def reference_logits(folder, ids: list[int]) -> torch.Tensor:
    """Logits (T, V) of one uncached forward pass of the fp32 checkpoint: what every backend must match."""
    model, _ = load_model(folder)
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


def stepwise_logits(backend, ids: list[int], prefill: int) -> torch.Tensor:
    """Logits after each token from prefill-1 on: one prefill of ids[:prefill], then one decode per token."""
    rows = [backend.prefill(ids[:prefill])] + [backend.decode(t) for t in ids[prefill:]]
    return torch.stack(rows).cpu()  # a GPU backend hands back logits on its device


def random_ids(n: int, seed: int = 0, vocab: int = 50257) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
