"""`gptui-train eval`: loss, perplexity and bits per byte, through torch directly or a backend."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from test_prepare import one_error
from training_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from training_helpers import prepared_code, prepared_sft, tiny_checkpoint

from gptui.core.tokenizer import encode, get_encoding
from gptui.training.cli import main


def evaluate(*args):
    result = CliRunner().invoke(main, ["eval", *map(str, args)])
    return result, (json.loads(result.stdout) if result.exit_code == 0 and "--json" in args else None)


def test_prepared_split_as_json(tmp_path_factory):
    model, data = tiny_checkpoint(tmp_path_factory), prepared_code(tmp_path_factory)
    result, report = evaluate(model, "--data", data, "--split", "val", "--max-tokens", "300", "--json")
    assert result.exit_code == 0, result.output
    assert report["tokens"] >= 300 and report["bytes"] > report["tokens"]
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert report["bits_per_byte"] == pytest.approx(report["loss"] * report["tokens"] / math.log(2) / report["bytes"])
    text, _ = evaluate(model, "--data", data, "--max-tokens", "300")
    assert f"loss {report['loss']:.4f} nats/token" in text.stdout


def test_backend_matches_torch(tmp_path_factory):
    model, data = tiny_checkpoint(tmp_path_factory), prepared_code(tmp_path_factory)
    _, direct = evaluate(model, "--data", data, "--max-tokens", "130", "--json")
    result, backend = evaluate(model, "--data", data, "--max-tokens", "130", "--backend", "torch-fp32", "--json")
    assert result.exit_code == 0, result.output
    assert backend["backend"] == "torch-fp32" and backend["tokens"] == direct["tokens"]
    assert backend["loss"] == pytest.approx(direct["loss"], abs=1e-4)


def test_py_dir_counts_the_bytes_it_predicts(tmp_path, tmp_path_factory):
    source = "def double(x):\n    return 2 * x  # café\n"
    (tmp_path / "a.py").write_text(source)
    result, report = evaluate(tiny_checkpoint(tmp_path_factory), "--py-dir", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    enc = get_encoding("gpt2-code")
    ids = encode(enc, source)
    assert report["tokens"] == len(ids)  # every token after the first, then <|endoftext|>
    assert report["bytes"] == len(source.encode()) - len(enc.decode_single_token_bytes(ids[0]))


def test_sft_split_scores_responses_only(tmp_path_factory):
    result, report = evaluate(tiny_checkpoint(tmp_path_factory), "--data", prepared_sft(tmp_path_factory), "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads((prepared_sft(tmp_path_factory) / "manifest.json").read_text())
    assert report["tokens"] == manifest["splits"]["val"]["response_tokens"]


@pytest.mark.parametrize("extra, message", [
    ([], "exactly one of --data PREPARED or --py-dir DIR"),
    (["--backend", "nonsense"], "unknown backend"),
    (["--split", "test"], "'test' split is empty"),
])
def test_bad_eval_inputs(tmp_path_factory, extra, message):
    model, data = tiny_checkpoint(tmp_path_factory), prepared_code(tmp_path_factory)
    args = extra if not extra else ["--data", data, *extra]
    result, _ = evaluate(model, *args)
    assert result.exit_code == 1 and message in one_error(result.output)


def test_unknown_model(tmp_path):
    result, _ = evaluate(tmp_path / "nope", "--py-dir", tmp_path)
    assert result.exit_code == 1 and "does not exist" in one_error(result.output)
