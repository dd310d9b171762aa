"""Whether a model can fill in the middle: trained with FIM, and its tokenizer has the sentinels.

Shared by `gptui serve` (which ignores a suffix otherwise) and the app's editor (which then
completes the prefix only).
"""

from __future__ import annotations

from pathlib import Path

import tiktoken

from ..core.checkpoint import Checkpoint
from ..core.errors import GptuiError
from ..core.tokenizer import fim_ids


def trained_for_fim(provenance: dict) -> bool:
    """True when any training run in the provenance chain rearranged documents for FIM (fim_rate > 0).

    A fine-tune records the model it started from under init.provenance, so walk that chain.
    """
    seen = 0
    while isinstance(provenance, dict) and seen < 64:
        training = provenance.get("training")
        rate = training.get("fim_rate") if isinstance(training, dict) else None
        if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
            return True
        init = provenance.get("init")
        provenance = init.get("provenance") if isinstance(init, dict) else None
        seen += 1
    return False


def supports_fim(meta: dict, encoding: tiktoken.Encoding) -> bool:
    """`meta` is a checkpoint's whole config.json."""
    return trained_for_fim(meta.get("provenance", {})) and fim_ids(encoding) is not None


def folder_supports_fim(folder: str | Path, encoding: tiktoken.Encoding) -> bool:
    """For a model already loaded from `folder`; a config that cannot be read counts as no FIM."""
    try:
        meta = Checkpoint.open(folder).meta
    except (GptuiError, OSError):
        return False
    return supports_fim(meta, encoding)
