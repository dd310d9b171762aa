"""Pretraining on CPU with the tiny preset: learning, exact resume, signals, NaN, atomic checkpoints,
and every bad input the issue lists (CliRunner, plus real processes)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_prepare import one_error
from training_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from training_helpers import CORPUS, prepared_code, prepared_sft, tiny_checkpoint, train_args

from gptui.core.checkpoint import load_model, load_state_dict
from gptui.core.errors import GptuiError
from gptui.training import checkpointing
from gptui.training.cli import main
from gptui.training.optim import get_lr
from gptui.training.trainer import TrainConfig, run_training


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_code(tmp_path_factory)


def config(data, out, **overrides) -> TrainConfig:
    base = dict(task="pretrain", data=str(data), out=str(out), preset="tiny", steps=20, batch_tokens=128,
                micro_batch=1, lr=3e-3, warmup=3, eval_every=10, eval_tokens=512, save_every=10, device="cpu")
    return TrainConfig(**{**base, **overrides})


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def pretrain(*args):
    return CliRunner().invoke(main, ["pretrain", *map(str, args)])


def test_get_lr_warms_up_then_decays_to_min():
    lrs = [get_lr(s, 100, 1.0, 0.1, 10) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[100] == pytest.approx(0.1)


def test_wsd_holds_the_peak_then_decays_linearly_and_can_be_lengthened_before_the_decay():
    lrs = [get_lr(s, 100, 1.0, 0.0, 10, "wsd", 0.2) for s in range(101)]
    assert lrs[9] == lrs[50] == lrs[79] == 1.0  # stable until the last 20 steps
    assert lrs[80] == pytest.approx(19 / 20) and lrs[99] == 0.0 and lrs[100] == 0.0
    assert all(a - b == pytest.approx(1 / 20) for a, b in zip(lrs[79:99], lrs[80:100]))
    longer = [get_lr(s, 200, 1.0, 0.0, 10, "wsd", 0.2) for s in range(80)]
    assert longer == lrs[:80]


def _undo_fim(doc: list[int], pre: int, mid: int, suf: int) -> list[int]:
    """prefix + middle + suffix of one rearranged document."""
    assert doc[0] == pre
    s, m = doc.index(suf), doc.index(mid)
    return doc[1:s] + doc[m + 1 :] + doc[s + 1 : m]


def test_fim_rearranges_whole_documents_prefix_suffix_middle_and_keeps_the_row_length():
    import numpy as np

    from gptui.training.data import fim_permute

    eot, pre, mid, suf = 0, 97, 98, 99
    docs = [list(range(1, 12)), list(range(20, 40)), list(range(50, 90))]
    row = np.array(docs[0] + [eot] + docs[1] + [eot] + docs[2], dtype=np.uint16)
    rng = np.random.default_rng(0)
    assert np.array_equal(fim_permute(row, rng, 0.0, eot, (pre, mid, suf)), row)
    out = fim_permute(row, np.random.default_rng(1), 1.0, eot, (pre, mid, suf))
    assert len(out) == len(row) and out.dtype == row.dtype
    parts = np.split(out, np.flatnonzero(out == eot) + 1)
    assert _undo_fim(parts[0][:-1].tolist(), pre, mid, suf) == docs[0]
    assert _undo_fim(parts[1][:-1].tolist(), pre, mid, suf) == docs[1]
    assert parts[2][0] == pre  # the last document is cut back by the six sentinels before it
    rates = [np.mean([fim_permute(row, np.random.default_rng(i), 0.5, eot, (pre, mid, suf))[0] == pre
                      for i in range(400)])]
    assert 0.4 < rates[0] < 0.6


def test_fim_rows_are_seeded_and_validation_stays_left_to_right(data):
    import numpy as np

    from gptui.core.tokenizer import fim_ids, get_encoding
    from gptui.training.data import open_rows
    from gptui.training.shards import PRETRAIN, read_manifest

    manifest = read_manifest(data, PRETRAIN)
    pre = fim_ids(get_encoding(manifest["encoding"]))[0]
    plain = open_rows(data, manifest, "train", 64, 0)
    fim = open_rows(data, manifest, "train", 64, 0, fim_rate=1.0)
    ids = np.arange(min(8, plain.epoch_size(0)))
    x_plain, _ = plain.rows(0, ids)
    x_fim, y_fim = fim.rows(0, ids)
    assert (x_fim == pre).any() and not (x_plain == pre).any()
    assert np.array_equal(x_fim[:, 1:], y_fim[:, :-1])
    assert np.array_equal(x_fim, fim.rows(0, ids)[0])  # same (seed, epoch, row): same rows
    assert not np.array_equal(x_fim, fim.rows(1, ids)[0])  # a new epoch cuts documents afresh
    val_rows = open_rows(data, manifest, "val", 64, 0)
    assert not (val_rows.rows(0, ids[:2])[0] == pre).any()


@pytest.mark.parametrize("kind", ["chunked", "fused"])
def test_loss_kinds_match_plain_loss_and_gradients(kind):
    from gptui.core.config import preset
    from gptui.core.model import GPT
    from gptui.training.loss import LossFunction

    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=500))
    x, y = torch.randint(0, 500, (3, 64)), torch.randint(0, 500, (3, 64))
    y[0, :20] = -1  # positions that are not trained on
    results = []
    for name in ("plain", kind):
        model.zero_grad()
        loss = LossFunction(name, chunk_rows=50)(model, x, y)
        (loss * 0.5).backward()  # a scale other than 1 must reach every gradient
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_grads), (other, other_grads) = results
    torch.testing.assert_close(other, plain)
    for name in plain_grads:
        torch.testing.assert_close(other_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4)


def test_eval_loss_in_chunks_equals_the_plain_loss():
    from gptui.core.config import preset
    from gptui.core.model import GPT
    from gptui.training.loss import eval_loss, plain_loss

    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=500)).eval()
    x, y = torch.randint(0, 500, (3, 64)), torch.randint(0, 500, (3, 64))
    y[1, 5:30] = -1
    with torch.no_grad():
        torch.testing.assert_close(eval_loss(model, x, y, chunk_rows=50), plain_loss(model, x, y))


def test_fused_loss_under_autocast_feeds_the_head_bf16_and_matches_the_plain_gradients():
    from gptui.core.config import preset
    from gptui.core.model import GPT
    from gptui.training.loss import LossFunction, head_input

    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=500))
    x, y = torch.randint(0, 500, (2, 64)), torch.randint(0, 500, (2, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head_input(model, x).dtype == torch.bfloat16  # no fp32 (rows, C) tensor for the head
    grads = []
    for name in ("plain", "fused"):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = LossFunction(name)(model, x, y)
        (loss / y.numel()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert all(g.dtype == torch.float32 for g in grads)
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cosine > 0.999, cosine
    assert grads[1].norm() / grads[0].norm() == pytest.approx(1, abs=0.01)  # the 1/numel scale reached them


def test_loss_falls_on_real_code(data, tmp_path):
    out = tmp_path / "run"
    result = pretrain(*train_args(data, out, steps=30, preset="tiny", lr="1e-2"))
    assert result.exit_code == 0, result.output
    rows = metrics(out)
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    uniform = math.log(50304)  # the loss of a model that knows nothing
    assert rows[0]["loss"] > uniform - 0.5
    assert len(val) == 3 and val[-1] < val[0] < uniform - 2
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "memory_gb"} <= set(rows[0])
    model, encoding = load_model(out / "latest")
    assert encoding == "gpt2-code" and model.config.n_layer == 2
    card = json.loads((out / "best" / "card.json").read_text())
    assert card["training"]["val_loss"] == pytest.approx(min(val))


def test_every_micro_step_trains_on_its_own_rows_despite_reading_ahead(data, tmp_path):
    from gptui.training import distributed
    from gptui.training.trainer import Trainer

    trainer = Trainer(config(data, tmp_path / "run", batch_tokens=3 * 64, micro_batch=1), distributed.setup("cpu"))
    fed = []
    forward = trainer.module.forward
    trainer.module.forward = lambda x, y: fed.append(x.clone()) or forward(x, y)
    for step in range(3):
        trainer.train_step(step)
    expected = [torch.from_numpy(trainer.sampler.micro_batch_rows(step, micro, 0)[0]).long()
                for step in range(3) for micro in range(3)]
    assert len(fed) == 9 and all(torch.equal(a.long(), b) for a, b in zip(fed, expected))
    assert len({tuple(x.flatten().tolist()) for x in fed}) == 9


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_interrupted_and_resumed_run_ends_exactly_like_an_uninterrupted_one(data, tmp_path, optimizer):
    steps = dict(steps=80, eval_every=40, save_every=80, optimizer=optimizer)
    assert run_training(config(data, tmp_path / "straight", **steps)) == 0

    def stop_at_40(trainer):
        if trainer.step == 40:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-run, like a scheduler's SIGTERM

    assert run_training(config(data, tmp_path / "split", **steps), on_step=stop_at_40) == 143
    assert metrics(tmp_path / "split")[-1]["step"] == 40
    assert run_training(config(data, tmp_path / "split", **steps), resume=True) == 0

    straight, split = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 81))
    assert split[-1]["loss"] == straight[-1]["loss"] and split[-1]["val_loss"] == straight[-1]["val_loss"]
    a, b = load_state_dict(tmp_path / "straight" / "latest"), load_state_dict(tmp_path / "split" / "latest")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_the_cli_reuses_the_run_settings(data, tmp_path):
    out = tmp_path / "run"
    assert pretrain(*train_args(data, out, steps=10, preset="tiny")).exit_code == 0
    result = pretrain("--out", out, "--resume", "--steps", "14")
    assert result.exit_code == 0, result.output
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 15))
    assert json.loads((out / "run.json").read_text())["micro_batch"] == 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    out = tmp_path / "run"

    def poison(trainer):
        if trainer.step == 5:  # after step 5; step 6 then computes a NaN loss
            with torch.no_grad():
                trainer.model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))

    with pytest.raises(GptuiError, match=r"loss became nan by step 6.*last good checkpoint .*latest \(step 4\)"):
        run_training(config(data, out, save_every=2), on_step=poison)
    state = load_state_dict(out / "latest")
    assert all(torch.isfinite(t).all() for t in state.values())
    assert json.loads((out / "latest" / "card.json").read_text())["training"]["step"] == 4


def test_a_crash_while_saving_leaves_the_previous_checkpoint(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert run_training(config(data, out, steps=4, save_every=2)) == 0
    before = load_state_dict(out / "latest")

    def broken_save(obj, f):
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", broken_save)
    with pytest.raises(GptuiError, match="cannot write a checkpoint .*No space left"):
        run_training(config(data, out, steps=8, save_every=2), resume=True)
    after = load_state_dict(out / "latest")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert checkpointing.load_training_state(out / "latest")["step"] == 4
    assert not list(out.glob(".latest*"))


def test_a_kill_between_the_two_renames_is_recovered(data, tmp_path):
    out = tmp_path / "run"
    assert run_training(config(data, out, steps=2, save_every=2)) == 0
    os.replace(out / "latest", out / ".latest.old")  # what a kill after the first rename leaves
    assert checkpointing.load_training_state(out / "latest")["step"] == 2
    load_model(out / "latest")


def bad_input_cases(data, sft_data, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("keep me")
    no_val = tmp_path / "no_val"
    assert CliRunner().invoke(main, ["prepare", str(CORPUS), "--out", str(no_val), "--val-fraction", "0"]).exit_code == 0
    return [
        (train_args(data, existing, preset="tiny"), "already exists (pass --resume"),
        (train_args(data, not_a_dir / "run", preset="tiny"), "cannot write"),
        (train_args(no_val, tmp_path / "r1", preset="tiny"), "validation split is too small"),
        (train_args(data, tmp_path / "r2", preset="tiny", batch_tokens=100), "must be a positive multiple"),
        (train_args(sft_data, tmp_path / "r3", preset="tiny"), "holds sft data"),
        (train_args(tmp_path, tmp_path / "r4", preset="tiny"), "not a prepared data folder"),
        (["--out", str(tmp_path / "r5"), "--resume"], "nothing to resume"),
        (["--out", str(tmp_path / "r6")], "--data is required"),
        (train_args(data, tmp_path / "r7", preset="huge"), "unknown preset"),
        (train_args(data, tmp_path / "r8", preset="tiny", encoding="gpt2"), "tokenised with gpt2-code"),
    ]


def test_bad_inputs_are_one_line_and_overwrite_nothing(data, tmp_path, tmp_path_factory):
    for args, message in bad_input_cases(data, prepared_sft(tmp_path_factory), tmp_path):
        result = pretrain(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in one_error(result.output), (message, result.output)
    assert (tmp_path / "existing" / "keep.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "existing").iterdir()) == ["keep.txt"]
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 9))


def test_missing_tensorboard_is_one_line(data, tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed here")
    result = pretrain(*train_args(data, tmp_path / "run", preset="tiny"), "--tensorboard")
    assert result.exit_code == 1 and "pip install tensorboard" in one_error(result.output)
    assert not (tmp_path / "run").exists()


def test_sft_needs_init(tmp_path, tmp_path_factory):
    sft_data = prepared_sft(tmp_path_factory)
    result = CliRunner().invoke(main, ["sft", *train_args(sft_data, tmp_path / "run")])
    assert result.exit_code == 1 and "--init CHECKPOINT" in one_error(result.output)
    model = tiny_checkpoint(tmp_path_factory)
    code_data = prepared_code(tmp_path_factory)
    result = CliRunner().invoke(main, ["sft", *train_args(code_data, tmp_path / "run", init=model)])
    assert result.exit_code == 1 and "holds pretrain data" in one_error(result.output)


def test_real_process_ctrl_c_saves_and_exits_130_then_resumes(data, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "gptui.training", "pretrain", *train_args(data, out, steps=100000, preset="tiny",
                                                                                 save_every=100000)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "stopped at step" in stderr
    step = checkpointing.load_training_state(out / "latest")["step"]
    assert step == metrics(out)[-1]["step"] >= 1
    resumed = pretrain("--out", out, "--resume", "--steps", str(step + 2))
    assert resumed.exit_code == 0, resumed.output
    assert metrics(out)[-1]["step"] == step + 2


def test_real_process_bad_input_is_one_line(data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gptui.training", "pretrain",
                           *train_args(data, tmp_path / "run", preset="tiny", batch_tokens=100)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "Error: --batch-tokens 100 must be a positive multiple of micro-batch x context x processes = 1 x 64 x 1 = 64"]
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_loss_kernel_matches_its_torch_contract_on_a_gpu(dtype):
    from gptui.training.fused_loss import loss_and_grad_torch_, loss_rows_and_grad_

    torch.manual_seed(0)
    logits = (torch.randn(300, 50304, device="cuda") * 4).to(dtype)
    targets = torch.randint(0, 50304, (300,), device="cuda")
    targets[::7] = -1
    expected = logits.clone()
    expected_loss = loss_and_grad_torch_(expected, targets)
    got_loss = loss_rows_and_grad_(logits, targets)
    torch.testing.assert_close(got_loss, expected_loss, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(logits.float(), expected.float(), atol=1e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)
    assert logits[::7].abs().max().item() == 0  # rows without a target get no gradient


def test_pretrain_mix_data_upweights_a_second_corpus_with_fim(data, tmp_path, tmp_path_factory):
    """--mix-data on pretrain: a share of every epoch's rows are windows of the second folder,
    rearranged for fill-in-the-middle like the main corpus, and the provenance says so."""
    from gptui.core.checkpoint import Checkpoint
    from gptui.core.tokenizer import fim_ids, get_encoding
    from gptui.training import distributed
    from gptui.training.data import MixedRows
    from gptui.training.prepare_code import prepare_code
    from gptui.training.trainer import Trainer

    src = tmp_path / "exercises"
    src.mkdir()
    for i in range(12):
        (src / f"ex{i}.py").write_text(f'def square_{i}(x):\n    """Return x squared plus {i}."""\n'
                                       f"    return x * x + {i}\n\n\nprint(square_{i}({i}))\n" * 20)
    mix = tmp_path / "mix"
    prepare_code([src], mix, val_fraction=0.2, seed=0, num_proc=1, cache=tmp_path / "cache")
    trainer = Trainer(config(data, tmp_path / "run", mix_data=str(mix), mix_rate=0.5, fim_rate=1.0),
                      distributed.setup("cpu"))
    rows = trainer.train_rows
    assert isinstance(rows, MixedRows) and rows.n_code == rows.n_sft  # rate 0.5: as many mixed rows as main ones
    x, _ = rows.rows(0, rows.n_sft + np.arange(4))
    encoding = get_encoding("gpt2-code")
    sentinels = fim_ids(encoding)

    def text(ids: np.ndarray) -> str:
        return encoding.decode([t for t in ids.ravel().tolist() if t not in sentinels])

    assert "square_" in text(x)  # the mixed rows come from the second corpus ...
    assert np.isin(x, sentinels).any()  # ... rearranged at the run's FIM rate
    assert "square_" not in text(rows.rows(0, np.arange(4))[0])

    out = tmp_path / "cli"
    result = pretrain(*train_args(data, out, steps=2, preset="tiny", mix_data=mix, mix_rate=0.25))
    assert result.exit_code == 0, result.output
    training = Checkpoint.open(out / "latest").provenance["training"]
    assert training["mix_rate"] == 0.25 and training["mix_data"]["type"] == "python_files"


def test_muon_takes_the_block_matrices_and_adamw_everything_else(data, tmp_path):
    from gptui.core.config import preset
    from gptui.core.model import GPT
    from gptui.training.optim import MuonAdamW, build_optimizer

    model = GPT(preset("tiny", vocab_size=50284))
    optimizer = build_optimizer(model, 1e-3, 0.1, torch.device("cpu"), "muon")
    assert isinstance(optimizer, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in optimizer.muon.param_groups for p in g["params"]]
    adamw = [names[id(p)] for g in optimizer.adamw.param_groups for p in g["params"]]
    assert sorted(muon + adamw) == sorted(names.values())  # every parameter once (the head is tied to wte)
    assert muon and all(n.startswith("transformer.h.") and n.endswith(".weight") and "ln_" not in n for n in muon)
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.bias"} <= set(adamw)
    assert len(optimizer.param_groups) == 3  # the schedule sets the lr of all three


def test_muon_trains_and_a_resume_with_another_optimizer_is_one_line(data, tmp_path):
    out = tmp_path / "run"
    result = pretrain(*train_args(data, out, steps=20, preset="tiny", lr="1e-2", optimizer="muon"))
    assert result.exit_code == 0, result.output
    val = [r["val_loss"] for r in metrics(out) if "val_loss" in r]
    assert val[-1] < val[0] < math.log(50304) - 2
    from gptui.core.checkpoint import Checkpoint
    assert Checkpoint.open(out / "latest").provenance["training"]["optimizer"] == "muon"
    bad = pretrain("--out", out, "--resume", "--steps", "24", "--optimizer", "adamw")
    assert bad.exit_code == 1 and one_error(bad.output) and "--optimizer" in bad.output
