"""AdamW against Muon (`gptui-train pretrain --optimizer`) from one initial model on one prepared
corpus, each at its own peak lr, same steps, schedule, data order and seed; prints the validation
loss of each at every evaluation, side by side (bench/NOTES.md, session 13).

  python bench/optimizer_ab.py DATA [--layers 4 --width 256 --context 256] [--steps 300]
      [--batch-tokens 16384 --micro-batch 16] [--lr adamw=3e-3,muon=3e-3] [--device auto]

On a GPU, `--layers 6 --width 384 --context 1024` is the small preset (an init from --preset is
not needed: every variant starts from the same random weights, written once under --out).
"""
import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="a pretraining folder from gptui-train prepare")
    ap.add_argument("--out", type=Path, default=Path("runs/optimizer_ab"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--lr", default="adamw=3e-3,muon=3e-3", help="optimizer=peak lr, comma-separated")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    import torch

    from gptui.core.checkpoint import save_checkpoint
    from gptui.core.config import GPTConfig
    from gptui.core.model import GPT
    from gptui.core.tokenizer import get_encoding
    from gptui.training.shards import PRETRAIN, read_manifest
    from gptui.training.trainer import TrainConfig, run_training

    encoding = read_manifest(args.data, PRETRAIN)["encoding"]
    torch.manual_seed(0)
    config = GPTConfig(block_size=args.context, vocab_size=get_encoding(encoding).n_vocab, n_layer=args.layers,
                       n_head=args.heads, n_embd=args.width)
    init = save_checkpoint(args.out / "init", GPT(config), encoding)
    variants = dict(item.split("=") for item in args.lr.split(","))
    curves = {}
    for optimizer, lr in variants.items():
        out = args.out / optimizer
        cfg = TrainConfig(task="pretrain", data=str(args.data), out=str(out), init=str(init), steps=args.steps,
                          batch_tokens=args.batch_tokens, micro_batch=args.micro_batch, lr=float(lr),
                          warmup=args.warmup, schedule="wsd", decay_frac=0.25, eval_every=args.eval_every,
                          eval_tokens=1 << 18, save_every=args.steps, log_every=10, device=args.device,
                          optimizer=optimizer)
        if run_training(cfg) != 0:
            raise SystemExit(f"{optimizer}: training failed")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        curves[optimizer] = {r["step"]: r for r in rows if "val_loss" in r}
        rates = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
        curves[optimizer]["rate"] = sorted(rates)[len(rates) // 2]

    names = list(curves)
    print(f"\n{config.n_layer} layers x {config.n_embd} wide, context {config.block_size}, {args.steps} steps of "
          f"{args.batch_tokens} tokens, wsd (25% decay), {args.data}")
    print("| step | " + " | ".join(f"{n} (lr {variants[n]}) val loss" for n in names) + " |")
    print("|---:|" + "---:|" * len(names))
    for step in sorted(k for k in curves[names[0]] if k != "rate"):
        print(f"| {step} | " + " | ".join(f"{curves[n][step]['val_loss']:.4f}" for n in names) + " |")
    print("| tokens/s | " + " | ".join(f"{curves[n]['rate']:,.0f}" for n in names) + " |")


if __name__ == "__main__":
    main()
