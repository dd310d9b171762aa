"""SFT: packed rows train on response tokens only, and `gptui-train sft` runs end to end."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from training_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from training_helpers import prepared_code, prepared_sft, tiny_checkpoint, train_args

from gptui.core.checkpoint import Checkpoint, load_model
from gptui.core.tokenizer import EOT_ID
from gptui.training.cli import main
from gptui.training.data import PackedExamples, Sampler
from gptui.training.loss import IGNORE, LossFunction
from gptui.training.shards import read_manifest


def packed(folder, block_size=64):
    manifest = read_manifest(folder)
    return PackedExamples(folder, manifest["splits"]["train"], block_size, seed=0, eot=EOT_ID), manifest


def test_rows_hold_whole_examples_and_target_only_responses(tmp_path_factory):
    folder = prepared_sft(tmp_path_factory)
    rows, manifest = packed(folder)
    info = manifest["splits"]["train"]
    assert rows.too_long == 0 and rows.examples == info["examples"]  # the fixture's examples all fit a row
    x, y = rows.rows(0, np.arange(rows.epoch_size(0)))
    assert int((y != IGNORE).sum()) == info["response_tokens"]
    # every target is exactly the next input token, and every target position is a response token
    assert np.array_equal(y[:, :-1][y[:, :-1] != IGNORE], x[:, 1:][y[:, :-1] != IGNORE])
    assert np.array_equal(rows.mask[:, 1:], y != IGNORE)


def test_prompt_tokens_do_not_contribute_to_the_loss(tmp_path_factory):
    folder = prepared_sft(tmp_path_factory)
    rows, _ = packed(folder)
    model, _ = load_model(tiny_checkpoint(tmp_path_factory))
    ids = np.arange(4)
    x, y = rows.rows(0, ids)
    full = rows.tokens[ids, 1:].astype(np.int64)  # every next token, prompt or response
    x_t, y_t, full_t = map(torch.from_numpy, (x, y, full))
    with torch.no_grad():
        per_token = F.cross_entropy(model(x_t).flatten(0, 1), full_t.flatten(), reduction="none").view(y.shape)
        loss = LossFunction("plain")(model, x_t, y_t)
        chunked = LossFunction("chunked", chunk_rows=37)(model, x_t, y_t)
    response = torch.from_numpy(y != IGNORE)
    assert response.any() and (~response).any()
    torch.testing.assert_close(loss, per_token[response].sum())
    torch.testing.assert_close(chunked, per_token[response].sum())
    assert not torch.isclose(loss, per_token.sum())  # the test can tell the difference
    # the trainer divides by the step's target count: responses only
    sampler = Sampler(rows, seed=0, micro_batch=4, accum=1, world=1)
    _, y0 = sampler.micro_batch_rows(0, 0, 0)
    assert sampler.step_targets(0) == int((y0 != IGNORE).sum())


def test_sft_command_fine_tunes_a_checkpoint(tmp_path, tmp_path_factory):
    base = tiny_checkpoint(tmp_path_factory)
    out = tmp_path / "sft"
    result = CliRunner().invoke(main, ["sft", *train_args(prepared_sft(tmp_path_factory), out, steps=6, init=base,
                                                          eval_every=3, eval_tokens=128, save_every=3)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7)) and "val_loss" in rows[-1]
    provenance = Checkpoint.open(out / "latest").provenance
    assert provenance["training"]["task"] == "sft"
    assert provenance["init"]["from"] == str(base)
    tuned, _ = load_model(out / "latest")
    original, _ = load_model(base)
    assert not torch.equal(tuned.transformer.h[0].attn.c_attn.weight, original.transformer.h[0].attn.c_attn.weight)


def test_mixed_rows_replay_code_windows_at_the_rate_and_count_their_targets(tmp_path_factory):
    from gptui.training.data import MixedRows, open_rows
    from gptui.training.shards import PRETRAIN, read_manifest

    sft_dir, code_dir = prepared_sft(tmp_path_factory), prepared_code(tmp_path_factory)
    sft_rows = open_rows(sft_dir, read_manifest(sft_dir), "train", 64, 0)
    code_rows = open_rows(code_dir, read_manifest(code_dir, PRETRAIN), "train", 64, 0)
    mixed = MixedRows(sft_rows, code_rows, 0.5)
    n = mixed.epoch_size(0)
    assert n == 2 * sft_rows.epoch_size(0)
    ids = np.arange(n)
    x, y = mixed.rows(0, ids)
    n_sft = sft_rows.epoch_size(0)
    assert np.array_equal(x[:n_sft], sft_rows.rows(0, ids[:n_sft])[0])
    assert np.array_equal(x[n_sft:], code_rows.rows(0, ids[: n - n_sft])[0])
    assert (y[n_sft:] != IGNORE).all() and (y[:n_sft] == IGNORE).any()
    assert mixed.targets(0, ids) == int((y != IGNORE).sum())
    # the next epoch replays the code windows that follow
    x1, _ = mixed.rows(1, ids[n_sft:])
    expected = code_rows.rows(0, (np.arange(n - n_sft) + (n - n_sft)) % code_rows.epoch_size(0))[0]
    assert np.array_equal(x1, expected)


def test_sft_with_mix_data_trains_and_records_it(tmp_path, tmp_path_factory):
    base = tiny_checkpoint(tmp_path_factory)
    out = tmp_path / "sft"
    result = CliRunner().invoke(main, ["sft", *train_args(prepared_sft(tmp_path_factory), out, steps=4, init=base,
                                                          eval_every=4, eval_tokens=128, save_every=4,
                                                          mix_data=prepared_code(tmp_path_factory), mix_rate=0.3)])
    assert result.exit_code == 0, result.output
    training = Checkpoint.open(out / "latest").provenance["training"]
    assert training["mix_rate"] == 0.3 and training["mix_data"]["type"] == "python_files"
