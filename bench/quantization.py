"""INT8 variants side by side: which one ships as onnx-int8, and what each costs in accuracy.

    python bench/quantization.py --model exports/gptui-small --eval-data data/code   # trained model, val split
    python bench/quantization.py                                                     # random small model: speed only

Rows: torch-fp32 and onnx-fp32 (references), our block-wise INT8 graph (MatMulNBits, what
onnx-int8 ships), ONNX Runtime's quantize_dynamic per tensor and per channel, its static QDQ
quantization calibrated on the validation split, and torch-int8. Columns: size, decode
tokens/s and time to first token (batch 1, same prompt, same run), validation loss and its
change against fp32, the largest logit difference from fp32 and how often the greedy choice
agrees with fp32's (teacher-forced, every position of the scored text).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import torch

from gptui.core import benchmark as bm
from gptui.core.backends import load_backend
from gptui.core.backends.contract import LoadOptions
from gptui.core.checkpoint import Checkpoint, save_checkpoint
from gptui.core.config import preset
from gptui.core.model import GPT
from gptui.core.onnx_export import build_onnx
from gptui.core.onnx_quantize import quantize_with_ort
from gptui.core.registry import resolve
from gptui.core.tokenizer import get_encoding
from gptui.training.export import calibration_windows


def _windows(folder: Path, eval_data: Path | None, eval_dir: Path | None, tokens: int) -> list[list[int]]:
    ckpt = Checkpoint.open(folder)
    config, encoding = ckpt.config, ckpt.encoding
    if eval_data is not None:
        from gptui.training.evaluate import prepared_windows

        return [[int(t) for t in x] + [int(y[-1])] for x, y in prepared_windows(eval_data, "val", config.block_size, tokens, encoding)]
    ids = bm.code_tokens([eval_dir or bm.stdlib_dir()], encoding, tokens)
    return bm.windows(ids, config.block_size)


def run(folder: Path, work: Path, args) -> list[dict]:
    encoding = get_encoding(Checkpoint.open(folder).encoding)
    windows = _windows(folder, args.eval_data, args.eval_dir, args.eval_tokens)
    prompt = [t for w in windows for t in w][: args.prompt_tokens]
    probe = windows[0][:-1]
    fp32 = build_onnx(folder, "fp32", work / "fp32.onnx")
    variants = {"onnx-int8 (block, shipped)": build_onnx(folder, "int8", work / "block.onnx")}
    calibration = calibration_windows(folder, args.eval_data, [args.eval_dir] if args.eval_dir else [], args.calibration_tokens)
    for method in ("dynamic", "dynamic-per-channel", "static"):
        print(f"quantizing: ort {method}", file=sys.stderr, flush=True)
        variants[f"ort {method}"] = quantize_with_ort(fp32, work / f"{method}.onnx", method, calibration)

    reference = load_backend("torch-fp32", folder)
    ref_logits = reference.logits_all(probe)
    engines = [("torch-fp32", "torch-fp32", None), ("onnx-fp32", "onnx-fp32", fp32), ("torch-int8", "torch-int8", None)]
    engines += [(label, "onnx-int8", path) for label, path in variants.items()]
    rows, runs = [], {}
    for label, backend_name, path in engines:
        print(f"scoring: {label}", file=sys.stderr, flush=True)
        backend = load_backend(backend_name, folder, LoadOptions(threads=args.threads, onnx_path=path))
        logits = backend.logits_all(probe)
        loss, scored = bm.validation_loss(backend, windows)
        rows.append({"variant": label, "bytes": backend.nbytes, "loss": loss, "tokens_scored": scored,
                     "max_logit_diff": (logits - ref_logits).abs().max().item(),
                     "greedy_agreement": (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()})
        runs[label] = functools.partial(bm.backend_run, backend, encoding, prompt, args.new_tokens)
    print("timing every variant, in turns", file=sys.stderr, flush=True)
    speeds = bm.interleaved(runs, args.runs)
    for row in rows:
        row.update(speeds[row["variant"]].as_dict())
    base = rows[0]
    fp32_bytes = next(r["bytes"] for r in rows if r["variant"] == "onnx-fp32")
    for r in rows:
        r["loss_change_pct"] = 100 * (r["loss"] - base["loss"]) / base["loss"]
        r["size_vs_fp32"] = r["bytes"] / fp32_bytes
    return rows


def table(rows: list[dict], args, folder: Path) -> str:
    lines = [
        f"Model `{folder.name}` · {bm.cpu_name()} · {args.threads} threads · batch 1 · prompt {args.prompt_tokens} tokens · "
        f"{args.new_tokens} new tokens · median of {args.runs} runs · loss on {rows[0]['tokens_scored']:,} tokens",
        "",
        "| variant | size (MiB) | size vs fp32 | decode (tok/s) | first token (ms) | val loss | loss vs fp32 | max logit diff | greedy agreement |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['bytes'] / 2**20:.1f} | {r['size_vs_fp32']:.2f}x | {r['decode_tokens_per_s']:.1f} | "
                     f"{r['ttft_ms']:.1f} | {r['loss']:.4f} | {r['loss_change_pct']:+.2f}% | {r['max_logit_diff']:.3f} | "
                     f"{100 * r['greedy_agreement']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Model name or folder [default: a random `small` model]")
    parser.add_argument("--eval-data", type=Path, help="Prepared data folder: its val split scores and calibrates.")
    parser.add_argument("--eval-dir", type=Path, help="Folder of .py files instead [default: the Python stdlib].")
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--calibration-tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model:
            folder = resolve(args.model)
        else:
            folder = work / "small-random"
            torch.manual_seed(0)
            save_checkpoint(folder, GPT(preset("small", vocab_size=get_encoding("gpt2-code").n_vocab)), "gpt2-code")
        rows = run(folder, work, args)
    print(table(rows, args, folder))
    if args.json:
        args.json.write_text(json.dumps({"model": str(folder), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
