"""`prepare --from-log`: what the user accepted in the app, as SFT examples in prepare_sft's schema.

Accepted (or partly accepted) ghost-text completions become completion rows (prompt: the code
before the cursor, output: the part that went into the buffer), or fill-in-the-middle rows when
the log kept code after the cursor (suffix; the app sends it to FIM-trained models); kept chat
answers become instruction rows (instruction, input: the selection sent with it, output: the answer).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from ..core.atomic import write_bytes_atomic
from ..core.errors import GptuiError

SHAPE_NAMES = {"instruction": "chat"}  # the manifest's source counts name the log's kinds


def log_to_jsonl(db: Path, cache: Path) -> tuple[Path, dict]:
    """Write the log's training rows to a JSONL file under cache (named by its content, so an
    unchanged log reuses the prepared output). Returns (path, counts by shape)."""
    from ..core.history import training_rows
    from .prepare_sft import example_shape

    if not db.exists():
        raise GptuiError(f"{db}: no such log database (see `gptui logs path`)")
    rows = training_rows(db)
    if not rows:
        raise GptuiError(f"{db}: no accepted completions or kept chat answers to learn from yet")
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"from-log-{hashlib.sha256(data).hexdigest()[:24]}.jsonl"
    if not path.exists():
        write_bytes_atomic(path, data)
    shapes = (example_shape(r["prompt"], r["suffix"]) for r in rows)
    counts = Counter(SHAPE_NAMES.get(shape, shape) for shape in shapes)
    return path, dict(counts)
