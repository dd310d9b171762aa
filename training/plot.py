"""`gptui-train plot`: training and validation loss curves (and tokens/s) of runs, to a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import GptuiError


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl" if run.is_dir() else run
    try:
        lines = path.read_text().splitlines()
    except OSError:
        raise GptuiError(f"{path}: no metrics (is {run} a training run folder?)") from None
    records = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise GptuiError(f"{path}:{n}: not JSON") from None
    if not records:
        raise GptuiError(f"{path}: empty")
    return records


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get(key) is not None:
            xs.append(r.get("tokens", r.get("step", 0)) / (1e6 if "tokens" in r else 1))
            ys.append(r[key])
    return xs, ys


def plot_runs(runs: list[Path], out: Path, title: str = "") -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GptuiError("plotting needs matplotlib: pip install 'gptui[plot]'") from None
    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        records = read_metrics(run)
        label = run.name if run.is_dir() else run.parent.name
        unit = "tokens (M)" if "tokens" in records[0] else "step"
        line = ax_loss.plot(*_series(records, "loss"), alpha=0.35, linewidth=1)[0]
        ax_loss.plot(*_series(records, "val_loss"), "o-", color=line.get_color(), label=f"{label} validation", markersize=3)
        ax_loss.plot([], [], color=line.get_color(), alpha=0.35, label=f"{label} training")
        ax_speed.plot(*_series(records, "tokens_per_s"), color=line.get_color(), label=label)
    ax_loss.set(xlabel=unit, ylabel="loss (nats/token)", title=title or "loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_speed.set(xlabel=unit, ylabel="tokens/s", title="training throughput")
    ax_speed.grid(alpha=0.3)
    ax_speed.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
