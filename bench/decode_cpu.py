"""Batch-1 decode speed on the CPU: our torch-fp32 path next to Hugging Face generate, same weights.

    python bench/decode_cpu.py                          # small and gpt2 presets, 2 threads
    python bench/decode_cpu.py --presets small --runs 7 --json out.json

For each preset a randomly initialised checkpoint is written to a temp folder (speed does not
depend on the values). Ours is the torch-fp32 backend driven by core.generate, the loop the app
uses (greedy, no EOS stop); theirs is transformers.GPT2LMHeadModel.generate(use_cache=True) on
the same weights, timed per token with a streamer. Both get the same prompt (the first tokens
of the Python standard library's source), in the same process, taking turns run by run so a
noisy neighbour hurts both alike. Reported: median time to first token and decode tokens/s.
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
from gptui.tui import peers
from gptui.core.backends import load_backend
from gptui.core.checkpoint import save_checkpoint
from gptui.core.config import preset
from gptui.core.hf import load_hf_model
from gptui.core.model import GPT
from gptui.core.tokenizer import get_encoding


def measure(preset_name: str, prompt_tokens: int, new_tokens: int, runs: int) -> dict:
    encoding_name = "gpt2-code"
    encoding = get_encoding(encoding_name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / preset_name
        torch.manual_seed(0)
        save_checkpoint(folder, GPT(preset(preset_name, vocab_size=encoding.n_vocab)), encoding_name)
        prompt = bm.code_tokens([bm.stdlib_dir()], encoding_name, prompt_tokens)
        ours = load_backend("torch-fp32", folder)
        theirs = load_hf_model(folder)
        speeds = bm.interleaved({"ours": functools.partial(bm.backend_run, ours, encoding, prompt, new_tokens),
                                 "hf": functools.partial(peers.hf_run, theirs, prompt, new_tokens)}, runs)
    result = {"preset": preset_name, "params": ours.params,
              **{who: speed.as_dict() for who, speed in speeds.items()}}
    result["decode_speedup"] = round(result["ours"]["decode_tokens_per_s"] / result["hf"]["decode_tokens_per_s"], 2)
    result["ttft_speedup"] = round(result["hf"]["ttft_ms"] / result["ours"]["ttft_ms"], 2)
    return result


def table(results: list[dict], args) -> str:
    lines = [
        f"CPU: {bm.cpu_name()} · {args.threads} threads · batch 1 · prompt {args.prompt_tokens} tokens · "
        f"{args.new_tokens} new tokens · median of {args.runs} runs · random weights",
        "",
        "| model | ours: first token (ms) | HF: first token (ms) | ours: decode (tok/s) | HF: decode (tok/s) | decode speedup | first-token speedup |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['preset']} ({r['params'] / 1e6:.0f}M) | {r['ours']['ttft_ms']:.1f} | {r['hf']['ttft_ms']:.1f} | "
                     f"{r['ours']['decode_tokens_per_s']:.1f} | {r['hf']['decode_tokens_per_s']:.1f} | "
                     f"{r['decode_speedup']:.2f}x | {r['ttft_speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,gpt2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for name in args.presets.split(","):
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results.append(measure(name, args.prompt_tokens, args.new_tokens, args.runs))
    print(table(results, args))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
