"""Trade instruction-following against completion quality after SFT (bench/NOTES.md, session 10).

  python bench/sft_blend.py blend BASE TUNED ALPHA OUT   weights base + ALPHA * (tuned - base), card of TUNED
  python bench/sft_blend.py pick RUNS NAME...            the NAME (a folder under RUNS with eval-NAME.json
                                                         and funceval-NAME.json there) that passes the most
                                                         greedy tasks while its held-out loss stays within
                                                         2% of base's (else the lowest loss); ties: lower loss
"""
import json
import sys
from pathlib import Path

MAX_COST = 0.02


def blend(base: str, tuned: str, alpha: float, out: str) -> None:
    from gptui.core.checkpoint import Checkpoint, load_model, read_card, save_checkpoint

    model, encoding = load_model(tuned)
    base_model, _ = load_model(base)
    if base_model.config.to_dict() != model.config.to_dict():
        sys.exit(f"error: {base} and {tuned} are different architectures")
    base_state, seen = base_model.state_dict(), set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:  # tied embeddings: blend the shared tensor once
            seen.add(tensor.data_ptr())
            tensor.copy_(base_state[name].lerp(tensor, alpha))
    provenance = Checkpoint.open(tuned).provenance
    card = {**read_card(tuned), "blend": {"base": str(base), "tuned": str(tuned), "alpha": alpha}}
    save_checkpoint(out, model, encoding, provenance=provenance, card=card)


def pick(runs: Path, names: list[str], max_cost: float = MAX_COST) -> str:
    base_loss = json.loads((runs / "eval-base.json").read_text())["loss"]
    rows = []
    for name in names:
        loss = json.loads((runs / f"eval-{name}.json").read_text())["loss"]
        passed = json.loads((runs / f"funceval-{name}.json").read_text())["greedy_pass@1"]
        rows.append((name, loss, passed))
        print(f"{name:10} loss {loss:.4f} ({loss / base_loss - 1:+.2%} vs base)  greedy pass@1 {passed:.1%}",
              file=sys.stderr)
    within = [r for r in rows if r[1] <= base_loss * (1 + max_cost)] or [min(rows, key=lambda r: r[1])]
    return max(within, key=lambda r: (r[2], -r[1]))[0]


if __name__ == "__main__":
    if sys.argv[1:2] == ["blend"] and len(sys.argv) == 6:
        blend(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
    elif sys.argv[1:2] == ["pick"] and len(sys.argv) > 3:
        print(pick(Path(sys.argv[2]), sys.argv[3:]))
    else:
        sys.exit(__doc__)
