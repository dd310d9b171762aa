import json

import pytest
import torch

from gptui.core import checkpoint
from gptui.core.atomic import recover
from gptui.core.checkpoint import Checkpoint, load_model, save_checkpoint, update_card, weights_fingerprint
from gptui.core.errors import GptuiError
from gptui.core.registry import inspect, list_models, resolve

from conftest import make_tiny


def logits_of(model):
    with torch.no_grad():
        return model(torch.arange(10)[None])


def test_round_trip_keeps_logits_config_and_encoding(tmp_path):
    model = make_tiny()
    save_checkpoint(tmp_path / "m", model, "gpt2-code", provenance={"why": "test"}, card={"loss": 1.0})
    loaded, encoding = load_model(tmp_path / "m")
    assert encoding == "gpt2-code"
    assert loaded.config == model.config
    assert torch.equal(logits_of(loaded), logits_of(model))
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    ckpt = Checkpoint.open(tmp_path / "m")
    assert ckpt.provenance == {"why": "test"} and ckpt.card == {"loss": 1.0}
    assert ckpt.fingerprint == weights_fingerprint(tmp_path / "m") and ckpt.files == [tmp_path / "m" / "model.safetensors"]


def test_sharded_weights_load_the_same(tmp_path):
    model = make_tiny()
    save_checkpoint(tmp_path / "m", model, "gpt2-code", max_shard_bytes=1_000_000, dtype=torch.float16)
    shards = sorted(p.name for p in (tmp_path / "m").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "m" / "model.safetensors.index.json").exists()
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    # the embedding alone is larger than a shard: it is cut into row blocks, none over the limit
    assert "transformer.wte.weight" in index["split_tensors"]
    assert max((tmp_path / "m" / s).stat().st_size for s in shards) <= 1_000_000
    loaded, _ = load_model(tmp_path / "m")
    torch.testing.assert_close(logits_of(loaded), logits_of(model.half().float()), atol=1e-4, rtol=0)


def test_truncated_weights_are_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "m", make_tiny(), "gpt2-code")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(GptuiError, match="corrupted or truncated"):
        load_model(tmp_path / "m")
    assert not inspect(tmp_path / "m", "path", deep=True).ok


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    save_checkpoint(tmp_path / "m", make_tiny(), "gpt2-code")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model"]["n_embd"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptuiError, match="do not match"):
        load_model(tmp_path / "m")


def test_missing_folder_and_bad_config_are_clear_errors(tmp_path):
    with pytest.raises(GptuiError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(GptuiError, match="unreadable"):
        load_model(tmp_path / "bad")


def test_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    first = make_tiny(seed=1)
    save_checkpoint(tmp_path / "m", first, "gpt2-code")

    def crash_midway(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "m", make_tiny(seed=2), "gpt2-code")
    monkeypatch.undo()
    loaded, _ = load_model(tmp_path / "m")
    assert torch.equal(logits_of(loaded), logits_of(first))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no partial folders left behind


def test_a_save_killed_between_renames_is_recovered(tmp_path):
    first = make_tiny(seed=1)
    save_checkpoint(tmp_path / "m", first, "gpt2-code")
    (tmp_path / "m").rename(tmp_path / ".m.old")  # the state after the first rename of a swap
    with pytest.raises(GptuiError, match="does not exist"):
        Checkpoint.open(tmp_path / "m")  # opening renames nothing: recovery is its own step
    recover(tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert torch.equal(logits_of(loaded), logits_of(first))


def test_card_updates_merge_and_fingerprint_tracks_weights(tmp_path):
    save_checkpoint(tmp_path / "m", make_tiny(seed=1), "gpt2-code", card={"sizes": {"fp32": 1}})
    card = update_card(tmp_path / "m", sizes={"int8": 2}, loss=3.0)
    assert card == {"sizes": {"fp32": 1, "int8": 2}, "loss": 3.0}
    before = weights_fingerprint(tmp_path / "m")
    save_checkpoint(tmp_path / "m", make_tiny(seed=2), "gpt2-code")
    assert weights_fingerprint(tmp_path / "m") != before


def test_registry_finds_user_models_and_marks_broken_ones(tmp_path, monkeypatch):
    models = tmp_path / "data" / "models"
    monkeypatch.setenv("GPTUI_DATA_DIR", str(tmp_path / "data"))
    save_checkpoint(models / "good", make_tiny(), "gpt2-code")
    save_checkpoint(models / "broken", make_tiny(), "gpt2-code")
    (models / "broken" / "model.safetensors").unlink()
    found = {m.name: m for m in list_models() if m.where == "user"}
    assert found["good"].ok and found["good"].params == make_tiny().num_params()
    assert not found["broken"].ok and "missing" in found["broken"].error
    assert resolve("good") == models / "good"
    assert resolve(str(models / "good")) == models / "good"
    with pytest.raises(GptuiError, match="unknown model"):
        resolve("nonexistent")


def test_opening_a_model_by_path_recovers_an_interrupted_swap(tmp_path):
    save_checkpoint(tmp_path / "m", make_tiny(seed=1), "gpt2-code")
    (tmp_path / "m").rename(tmp_path / ".m.old")
    assert resolve(str(tmp_path / "m")) == tmp_path / "m"
    assert Checkpoint.open(tmp_path / "m").encoding == "gpt2-code" and not (tmp_path / ".m.old").exists()
