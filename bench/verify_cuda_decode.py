"""Does the cuda backend compute what torch-fp32 computes? One call on a GPU machine.

    python bench/verify_cuda_decode.py [--preset small] [--tokens 200] [--modes graph,graph-torch,eager]

For each mode: greedy tokens in float32 against the torch-fp32 backend's on the CPU (the same
random weights, a code prompt): how many of --tokens agree before the first difference; then in
bf16, the share of teacher-forced positions whose argmax matches float32's (bf16 rounds, so a
few flips are expected). Exit 1 if any float32 mode diverges. Prints a table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch


def greedy(backend, prompt: list[int], n: int) -> list[int]:
    logits, out = backend.prefill(prompt), []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = backend.decode(out[-1])
    return out


def agree(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--modes", default="graph,graph-torch,eager")
    ap.add_argument("--device", default="cuda", help="cpu: check this script itself (eager mode only)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("verify_cuda_decode.py needs a CUDA GPU")

    from gptui.core import benchmark as bm
    from gptui.core.backends import load_backend
    from gptui.core.backends.contract import LoadOptions
    from gptui.core.backends.cuda_backend import CudaBackend
    from gptui.core.checkpoint import load_model, save_checkpoint
    from gptui.core.config import preset
    from gptui.core.model import GPT
    from gptui.core.tokenizer import get_encoding

    block_size = preset(args.preset).block_size
    if args.tokens >= block_size:
        sys.exit(f"--tokens must be under the context, {block_size}")
    prompt = bm.code_tokens([bm.stdlib_dir()], "gpt2-code", min(256, block_size - args.tokens))
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / args.preset
        torch.manual_seed(0)
        save_checkpoint(folder, GPT(preset(args.preset, vocab_size=get_encoding("gpt2-code").n_vocab)), "gpt2-code")
        reference = greedy(load_backend("torch-fp32", folder, LoadOptions(threads=4)), prompt, args.tokens)
        sequence = prompt + reference
        for mode in args.modes.split(","):
            fp32 = CudaBackend(load_model(folder)[0], mode=mode, dtype=torch.float32, device=args.device)
            same = agree(greedy(fp32, prompt, args.tokens), reference)
            fp32_argmax = fp32.logits_all(sequence).argmax(-1)
            del fp32
            bf16 = CudaBackend(load_model(folder)[0], mode=mode, dtype=torch.bfloat16, device=args.device)
            bf16_tokens = greedy(bf16, prompt, args.tokens)
            forced = (bf16.logits_all(sequence).argmax(-1) == fp32_argmax).float().mean().item()
            rows.append(f"| {mode} | {bf16.kernels_note} | {same}/{args.tokens} | {forced:.1%} | "
                        f"{agree(bf16_tokens, reference)}/{args.tokens} |")
            failed |= same != args.tokens
            del bf16
            if args.device == "cuda":
                torch.cuda.empty_cache()
    print(f"\n{args.preset}, random weights, {len(prompt)}-token code prompt, {args.tokens} greedy tokens, "
          f"{torch.cuda.get_device_name() if args.device == 'cuda' else args.device}")
    print("| mode | kernels | fp32 greedy = torch-fp32 | bf16 teacher-forced argmax = fp32 | bf16 greedy prefix |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(rows))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
