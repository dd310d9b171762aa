"""`gptui-train export` and `gptui bench` through their CLIs."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from gptui.core.backends import load_backend
from gptui.core.backends.contract import LoadOptions
from gptui.core.checkpoint import load_model, read_card
from gptui.core.paths import cache_dir
from gptui.training.cli import main as gptui_train
from gptui.tui.cli import main as gptui

from backend_fixtures import exported_dir, random_ids, reference_logits  # noqa: F401


def files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_writes_onnx_an_hf_copy_and_sizes(exported_dir):
    card = read_card(exported_dir)
    sizes = card["sizes"]
    assert sizes["onnx-fp32"] == (exported_dir / "onnx" / "model-fp32.onnx").stat().st_size
    # the tied embedding is stored once in both; tiny's 32-wide rows pay more for block scales than real models
    assert sizes["onnx-int8"] <= 0.35 * sizes["onnx-fp32"]
    assert {"safetensors", "hf"} <= set(sizes)


def test_the_hf_copy_reproduces_our_logits(exported_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(exported_dir / "hf").eval()
    ids = random_ids(48, seed=30)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0]
    assert (theirs - reference_logits(exported_dir, ids)).abs().max().item() < 1e-4


def test_backends_use_the_exported_artifacts_without_building(exported_dir):
    for name in ("onnx-fp32", "onnx-int8"):
        backend = load_backend(name, exported_dir, LoadOptions(progress=lambda f, m: pytest.fail(f"rebuilt: {m}")))
        assert backend.path.parent == exported_dir / "onnx"
    assert not (cache_dir() / "onnx").exists()


def test_export_is_deterministic(tiny_model_dir, tmp_path):
    runner = CliRunner()
    for out in ("a", "b"):
        result = runner.invoke(gptui_train, ["export", str(tiny_model_dir), "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert [name for name in a if a[name] != b[name]] == []
    assert {"onnx/model-fp32.onnx", "onnx/model-int8.onnx", "hf/model.safetensors", "model.safetensors"} <= a.keys()


def test_export_keeps_fp16_weights_and_builds_onnx_from_them(tmp_path, tiny_model_dir):
    result = CliRunner().invoke(gptui_train, ["export", str(tiny_model_dir), "--out", str(tmp_path / "e"), "--no-hf"])
    assert result.exit_code == 0, result.output
    model, _ = load_model(tmp_path / "e", dtype=torch.float16)
    assert model.transformer.wte.weight.dtype == torch.float16
    backend = load_backend("onnx-fp32", tmp_path / "e")
    ids = random_ids(20, seed=31)
    assert (backend.prefill(ids) - reference_logits(tmp_path / "e", ids)[-1]).abs().max().item() < 1e-4
    assert not (tmp_path / "e" / "hf").exists()


def test_export_refuses_to_overwrite_an_unrelated_folder(tiny_model_dir, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(gptui_train, ["export", str(tiny_model_dir), "--out", str(tmp_path / "precious")])
    assert result.exit_code == 1 and "--force" in result.output and "Traceback" not in result.output
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_export_of_a_missing_model_is_one_line(tmp_path):
    result = CliRunner().invoke(gptui_train, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1


def test_bench_measures_every_backend_and_writes_markdown_and_json(exported_dir, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "a.py").write_text("def add(a, b):\n    return a + b\n\n" * 20)
    args = ["bench", "--model", str(exported_dir), "--threads", "1", "--runs", "1", "--prompt-tokens", "16",
            "--new-tokens", "4", "--eval-dir", str(code), "--eval-tokens", "100",
            "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md")]
    result = CliRunner().invoke(gptui, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b.json").read_text())
    rows = {r["backend"]: r for r in data["rows"]}
    assert {"torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8"} <= rows.keys()
    for name in ("torch-fp32", "onnx-fp32", "onnx-int8"):
        assert rows[name]["decode_tokens_per_s"] > 0 and rows[name]["ttft_ms"] > 0 and rows[name]["bytes"] > 0
    # the fp32 backends score the same text identically
    assert rows["onnx-fp32"]["loss"] == pytest.approx(rows["torch-fp32"]["loss"], abs=1e-3)
    if "hf-generate (fp32, cpu)" in rows:
        assert rows["hf-generate (fp32, cpu)"]["loss"] == pytest.approx(rows["torch-fp32"]["loss"], abs=1e-3)
        assert rows["torch-fp32"]["decode_vs_hf"] > 0
    table = (tmp_path / "b.md").read_text()
    assert all(f"| {name} |" in table for name in rows)


def test_bench_rejects_an_unknown_backend(exported_dir):
    result = CliRunner().invoke(gptui, ["bench", "--model", str(exported_dir), "--backends", "torch-fp32,warp-drive"])
    assert result.exit_code == 1 and "unknown backend" in result.output and "Traceback" not in result.output


def test_bench_cli_times_real_gptui_processes_beside_the_in_process_figures(exported_dir, tmp_path):
    args = ["bench", "--model", str(exported_dir), "-b", "onnx-int8", "--threads", "1", "--runs", "1",
            "--prompt-tokens", "16", "--new-tokens", "4", "--eval-tokens", "0", "--no-peers", "--cli",
            "--json", str(tmp_path / "b.json")]
    result = CliRunner().invoke(gptui, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "b.json").read_text())["cli_rows"]
    assert row["backend"] == "onnx-int8" and row["wall_s"] > row["startup_s"] > 0
    assert row["decode_tokens_per_s"] > 0 and row["decode_vs_bench"] > 0 and row["tokens"] >= 1
    assert "| onnx-int8 | " in result.output and "decode vs bench" in result.output
