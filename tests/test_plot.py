import json

import pytest

from gptui.core.errors import GptuiError
from gptui.training.plot import plot_runs

pytest.importorskip("matplotlib")


def test_plot_writes_a_png_of_the_curves(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, 21):
            record = {"step": step, "tokens": step * 4096, "loss": 5 / step, "tokens_per_s": 1000 + step}
            if step % 5 == 0:
                record["val_loss"] = 5.5 / step
            f.write(json.dumps(record) + "\n")
    out = plot_runs([run], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_of_a_folder_without_metrics_is_a_user_error(tmp_path):
    with pytest.raises(GptuiError, match="no metrics"):
        plot_runs([tmp_path], tmp_path / "x.png")
