"""`gptui-train export MODEL --out DIR`: the folder gptui ships and serves.

DIR gets the checkpoint (fp16 weights by default: half the download, no measurable loss at
inference), `onnx/model-fp32.onnx` and `onnx/model-int8.onnx` built from exactly those weights, a
Hugging Face copy in `hf/` (GPT2LMHeadModel.from_pretrained loads it), and card.json gains the
sizes (and losses, when asked). Running it twice on the same weights writes identical files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click
import torch

from ..core.errors import GptuiError, fail_cleanly

INT8_METHODS = ("block", "dynamic", "dynamic-per-channel", "static")
DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
MAX_SHARD_BYTES = 15 * 2**20  # shipped weights live in git: keep every file small


def calibration_windows(folder: Path, eval_data: Path | None, eval_py_dirs: list[Path], tokens: int) -> list[list[int]]:
    """Prompts for static quantization: the validation split when given, else .py files (the stdlib by default)."""
    from ..core import benchmark as bm
    from ..core.checkpoint import Checkpoint

    ckpt = Checkpoint.open(folder)
    config, encoding = ckpt.config, ckpt.encoding
    if eval_data is not None:
        from .evaluate import prepared_windows

        return [[int(t) for t in x] for x, _ in prepared_windows(eval_data, "val", min(config.block_size, 256), tokens, encoding)]
    ids = bm.code_tokens(eval_py_dirs or [bm.stdlib_dir()], encoding, tokens)
    return [w[:-1] for w in bm.windows(ids, min(config.block_size, 256))]


def export_model(source: Path, out: Path, dtype: str = "fp16", int8: str = "block", hf: bool = True,
                 eval_data: Path | None = None, eval_py_dirs: list[Path] | None = None, eval_tokens: int = 65536,
                 calibration_tokens: int = 8192, log=lambda message: None) -> dict:
    """Write the export folder; returns the card's new entries."""
    from ..core.checkpoint import (CARD, folder_bytes, Checkpoint, load_model, read_card, save_checkpoint, update_card,
                                   weights_fingerprint)
    from ..core.hf import save_hf_copy
    from ..core.onnx_export import EXPORT_DIR, artifact_name, build_onnx

    source, out = Path(source), Path(out)
    same = out.exists() and source.resolve() == out.resolve()
    if not same:
        model, encoding = load_model(source)
        provenance = {**Checkpoint.open(source).provenance, "exported_from": str(source), "export_dtype": dtype}
        card = {k: v for k, v in read_card(source).items() if k not in ("sizes", "export", "losses")}
        log(f"writing {dtype} weights to {out}")
        save_checkpoint(out, model, encoding, provenance=provenance, card=card, dtype=DTYPES[dtype],
                        max_shard_bytes=MAX_SHARD_BYTES)
        del model
    onnx_dir = out / EXPORT_DIR
    fingerprint = weights_fingerprint(out)
    report = lambda fraction, message: log(f"  {message}")  # noqa: E731
    fp32_path = build_onnx(out, "fp32", onnx_dir / artifact_name("fp32"), progress=report, fingerprint=fingerprint)
    int8_path = onnx_dir / artifact_name("int8")
    if int8 == "block":
        build_onnx(out, "int8", int8_path, progress=report, fingerprint=fingerprint)
    else:
        from ..core.onnx_quantize import quantize_with_ort

        calibration = None
        if int8 == "static":
            log("  calibrating static INT8 activations")
            calibration = calibration_windows(out, eval_data, eval_py_dirs or [], calibration_tokens)
        log(f"  quantizing with ONNX Runtime ({int8})")
        quantize_with_ort(fp32_path, int8_path, int8, calibration)
    sizes = {"safetensors": folder_bytes(out), "onnx-fp32": fp32_path.stat().st_size, "onnx-int8": int8_path.stat().st_size}
    if hf:
        log("  writing the Hugging Face copy")
        hf_dir = save_hf_copy(out, out / "hf")
        sizes["hf"] = sum(p.stat().st_size for p in hf_dir.iterdir() if p.is_file())
    else:
        shutil.rmtree(out / "hf", ignore_errors=True)
    entries = {"sizes": sizes, "export": {"weights_fingerprint": fingerprint, "dtype": dtype, "int8": int8}}
    if eval_data is not None or eval_py_dirs:
        entries["losses"] = _losses(out, eval_data, eval_py_dirs or [], eval_tokens, log)
    update_card(out, **entries)
    log(f"updated {out / CARD}")
    return entries


def _losses(folder: Path, eval_data: Path | None, eval_py_dirs: list[Path], tokens: int, log) -> dict:
    from .evaluate import evaluate

    losses = {}
    for backend in ("torch-fp32", "onnx-fp32", "onnx-int8"):
        result = evaluate(str(folder), data=eval_data, py_dirs=eval_py_dirs or None, backend=backend, max_tokens=tokens)
        losses[backend] = {k: result[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens", "source")}
        log(f"  {backend}: loss {result['loss']:.4f}")
    return losses


@click.command()
@click.argument("model")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Export folder to write.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="fp16", show_default=True,
              help="Precision of the exported safetensors (ONNX fp32 is built from exactly these values).")
@click.option("--int8", type=click.Choice(INT8_METHODS), default="block", show_default=True,
              help="block: our block-wise INT8 graph (fastest here); the others: ONNX Runtime's quantizers.")
@click.option("--hf/--no-hf", default=True, show_default=True, help="Write the Hugging Face copy in hf/.")
@click.option("--eval-data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Prepared data folder: record val losses per backend in card.json (and calibrate static INT8).")
@click.option("--eval-py-dir", "eval_py_dirs", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Folder of .py files for the same purpose (repeatable).")
@click.option("--eval-tokens", type=int, default=65536, show_default=True)
@click.option("--force", is_flag=True, help="Replace an --out folder that holds something else.")
@fail_cleanly
def export(model, out, dtype, int8, hf, eval_data, eval_py_dirs, eval_tokens, force):
    """Write MODEL's export folder: weights, ONNX fp32 + INT8, a Hugging Face copy, sizes in card.json."""
    from ..core.checkpoint import CARD, CONFIG, read_json
    from ..core.registry import resolve

    source = resolve(model)
    if out.exists() and not out.is_dir():
        raise GptuiError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and source.resolve() != out.resolve() and not force:
        previous = read_json(out / CARD) if (out / CONFIG).is_file() and (out / CARD).is_file() else {}
        if "export" not in previous:
            raise GptuiError(f"{out} already exists and is not a gptui export (use --force to replace it)")
    if eval_data is not None and eval_py_dirs:
        raise GptuiError("give --eval-data or --eval-py-dir, not both")
    try:
        entries = export_model(source, out, dtype, int8, hf, eval_data, list(eval_py_dirs), eval_tokens,
                               log=lambda message: click.echo(message, err=True))
    except OSError as e:
        raise GptuiError(f"cannot write {out}: {e.strerror or e}") from None
    sizes = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in entries["sizes"].items())
    click.echo(f"exported {source} to {out} ({sizes})", err=True)
