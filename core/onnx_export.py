"""ONNX artifacts of a checkpoint: build them, find them, and refuse ones that do not match.

An artifact records the SHA-256 of the weights it was built from (checkpoint.weights_fingerprint)
in its metadata. Where the backends look, in order:

1. an explicit file the caller names: it must match the weights, else a GptuiError;
2. `<model>/onnx/model-<kind>.onnx`, written by `gptui-train export`: the same rule;
3. the user cache, `<cache_dir>/onnx/<version>-<fingerprint>/`: built on first use. A cached file
   that is damaged is rebuilt; entries built from the same model folder with older weights are
   stale and removed when the new one is written.

Building is deterministic: the same weights give byte-identical files.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .atomic import write_bytes_atomic
from .backends.contract import BUILDS, READY, Status, unavailable
from .checkpoint import Checkpoint, load_state_dict, weights_fingerprint
from .errors import GptuiError
from .paths import cache_dir

KINDS = ("fp32", "int8")
GRAPH_VERSION = 1  # bump when the graph's inputs, outputs or layout change: old artifacts rebuild
EXPORT_DIR = "onnx"  # inside a model folder
META_FINGERPRINT = "gptui.weights_fingerprint"
META_VERSION = "gptui.graph_version"
META_KIND = "gptui.kind"
META_QUANTIZATION = "gptui.quantization"

Progress = Callable[[float, str], None]  # (fraction done, what is happening)


def artifact_name(kind: str) -> str:
    if kind not in KINDS:
        raise GptuiError(f"unknown ONNX kind {kind!r}; choose from {', '.join(KINDS)}")
    return f"model-{kind}.onnx"


def stderr_progress(fraction: float, message: str) -> None:
    """The CLI's progress: one line per stage on stderr."""
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def fp32_state(folder: str | Path) -> dict[str, np.ndarray]:
    """The checkpoint's weights as float32 numpy arrays (shipped weights may be fp16)."""
    import torch

    return {k: v.to(torch.float32).numpy() for k, v in load_state_dict(folder).items()}


def build_onnx(folder: str | Path, kind: str, out: str | Path, progress: Progress | None = None,
               fingerprint: str | None = None) -> Path:
    """Write the ONNX model of the checkpoint in `folder` to `out` (atomically)."""
    from .onnx_graph import build_model

    report = progress or (lambda fraction, message: None)
    out = Path(out)
    name = artifact_name(kind)
    report(0.0, f"reading weights for {name}")
    ckpt = Checkpoint.open(folder)
    config, encoding = ckpt.config, ckpt.encoding
    fingerprint = fingerprint or weights_fingerprint(folder)
    state = fp32_state(folder)
    report(0.3, f"building {name}" + (" (INT8 blocks)" if kind == "int8" else ""))
    model = build_model(state, config, quantize=kind == "int8")
    set_metadata(model, fingerprint, kind, "block-int8" if kind == "int8" else "none", config.to_dict(), encoding)
    report(0.8, f"writing {out}")
    save_model(model, out)
    report(1.0, f"built {name} ({out.stat().st_size / 2**20:.1f} MiB)")
    return out


def set_metadata(model, fingerprint: str, kind: str, quantization: str, config: dict, encoding: str) -> None:
    values = {META_FINGERPRINT: fingerprint, META_VERSION: str(GRAPH_VERSION), META_KIND: kind,
              META_QUANTIZATION: quantization, "gptui.config": json.dumps(config, sort_keys=True),
              "gptui.encoding": encoding}
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def save_model(model, out: Path) -> None:
    """Serialize through a temp file and rename: a reader never sees half a model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, model.SerializeToString(), mode=0o644)


def cache_entry(fingerprint: str) -> Path:
    return cache_dir() / "onnx" / f"v{GRAPH_VERSION}-{fingerprint[:32]}"


def _remove_stale(folder: Path, keep: Path) -> None:
    """Drop cache entries built from this model folder with other weights."""
    root = keep.parent
    source = str(folder.resolve())
    for entry in root.iterdir() if root.is_dir() else ():
        if entry == keep or not (entry / "source.json").is_file():
            continue
        try:
            if json.loads((entry / "source.json").read_text()).get("folder") == source:
                shutil.rmtree(entry, ignore_errors=True)
        except (OSError, ValueError):
            continue


def check_metadata(metadata: dict[str, str], path: Path, fingerprint: str, kind: str) -> None:
    """Raise a GptuiError when the artifact at `path` was not built from these weights as this kind."""
    if metadata.get(META_VERSION) != str(GRAPH_VERSION) or metadata.get(META_KIND) != kind:
        raise GptuiError(f"{path}: not a gptui {kind} ONNX model of this version "
                         "(run `gptui-train export` again, or delete it to rebuild on first use)")
    if metadata.get(META_FINGERPRINT) != fingerprint:
        raise GptuiError(f"{path}: exported from different weights than the model's "
                         "(run `gptui-train export` again, or delete it to rebuild on first use)")


def find_or_build(folder: str | Path, kind: str, open_session: Callable[[Path], object],
                  progress: Progress | None = None, path: str | Path | None = None):
    """(session, path) for the model's `kind` artifact; see the module docstring for the order.

    open_session(path) creates the runtime session and raises GptuiError for a damaged file.
    """
    folder = Path(folder)
    fingerprint = weights_fingerprint(folder)
    name = artifact_name(kind)
    explicit = Path(path) if path is not None else folder / EXPORT_DIR / name
    if path is not None or explicit.is_file():
        if not explicit.is_file():
            raise GptuiError(f"{explicit}: no such ONNX file")
        session = open_session(explicit)
        check_metadata(session_metadata(session), explicit, fingerprint, kind)
        return session, explicit
    entry = cache_entry(fingerprint)
    cached = entry / name
    if cached.is_file():
        try:
            session = open_session(cached)
            check_metadata(session_metadata(session), cached, fingerprint, kind)
            return session, cached
        except GptuiError as e:
            (progress or stderr_progress)(0.0, f"cached {name} is unusable ({e}); rebuilding")
    report = progress or stderr_progress
    report(0.0, f"building {name} for {folder.name} (first use; cached in {entry})")
    try:
        build_onnx(folder, kind, cached, progress=report, fingerprint=fingerprint)
        (entry / "source.json").write_text(json.dumps({"folder": str(folder.resolve()), "fingerprint": fingerprint}))
        _remove_stale(folder, entry)
    except OSError as e:
        raise GptuiError(f"cannot write the ONNX cache in {entry}: {e.strerror or e}") from None
    session = open_session(cached)
    check_metadata(session_metadata(session), cached, fingerprint, kind)
    return session, cached


def session_metadata(session) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def artifact_status(folder: str | Path, kind: str) -> Status:
    """Ready when an artifact exists in the model folder or the cache, else it builds on first use."""
    folder = Path(folder)
    name = artifact_name(kind)
    if (folder / EXPORT_DIR / name).is_file():
        return READY
    try:
        fingerprint = weights_fingerprint(folder)
    except OSError:
        return unavailable("model broken")
    return READY if (cache_entry(fingerprint) / name).is_file() else BUILDS
