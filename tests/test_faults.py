"""Faults during training: NaN/inf losses (stop or skip), a full disk during a save, W&B failures,
a tokenizer or model that does not match the checkpoint. Each must keep earlier work intact."""

from __future__ import annotations

import errno
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import sparsetrain.training.step as train_module
from sparsetrain.data.pipeline import BatchIterator
from sparsetrain.training.checkpoint import Checkpointer
from sparsetrain.cli import main
from sparsetrain.config import ConfigError, load_recipe
from sparsetrain.data.pipeline import train_bpe_tokenizer
from sparsetrain.training.tracking import Tracker, read_jsonl
from sparsetrain.training.loop import train
from tests.conftest import tiny_recipe


def poison_batches(monkeypatch, bad_steps: set[int]) -> None:
    """Batches of the listed steps (1-based) make the loss NaN, as a corrupt batch or an overflow
    would: every batch carries a `poison` flag the loss multiplies in."""
    real_next, real_loss = BatchIterator.next, train_module.ModelFunctions.loss
    calls = {"n": 0}

    def next_batch(self):
        calls["n"] += 1
        return {**real_next(self), "poison": np.int32(calls["n"] in bad_steps)}

    def loss(self, params, indices, batch, dropout_key=None):
        value = real_loss(self, params, indices, batch, dropout_key)
        return value * jnp.where(batch.get("poison", 0) == 1, jnp.nan, 1.0)

    monkeypatch.setattr(BatchIterator, "next", next_batch)
    monkeypatch.setattr(train_module.ModelFunctions, "loss", loss)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(text_corpus, tmp_path, monkeypatch):
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus), ["run.steps=6"])
    poison_batches(monkeypatch, {3})
    with pytest.raises(FloatingPointError, match=r"step 3; stopping \(run.nonfinite=stop\).*checkpoint is step 2"):
        train(cfg)
    ckpt = Checkpointer(cfg.out_dir / "checkpoints", 2)
    assert ckpt.all_steps() == [2]
    setup = train_module.build_setup(cfg, 300, abstract=True)
    state, meta = ckpt.restore(None, setup.state)
    assert meta["step"] == 2 and all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state["params"]))
    ckpt.close()
    assert math.isnan(read_jsonl(cfg.out_dir / "metrics.jsonl")[-1]["loss"])


def test_nan_step_is_skipped_with_params_and_moments_unchanged(text_corpus, tmp_path, monkeypatch):
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus), ["run.nonfinite=skip", "run.steps=5"])
    poison_batches(monkeypatch, {2, 3})
    setup = train_module.build_setup(cfg, 300)
    step = train_module.make_train_step(setup.fns, setup.tx, setup.schedule, setup.flow)
    iterator = BatchIterator(np.random.default_rng(0).integers(0, 300, (64, 33)).astype(np.int32), 4, 0)
    state = setup.state
    state, m1 = step(state, iterator.next())
    before = jax.tree.map(np.asarray, state)
    state, m2 = step(state, iterator.next())  # poisoned
    after = jax.tree.map(np.asarray, state)
    assert math.isfinite(m1["loss"]) and math.isnan(m2["loss"])
    for a, b in zip(jax.tree.leaves(before["params"]), jax.tree.leaves(after["params"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(before["opt_state"]), jax.tree.leaves(after["opt_state"])):
        if a.dtype.kind == "f":  # AdamW moments; apply_if_finite's counters do change
            np.testing.assert_array_equal(a, b)


def test_skip_policy_trains_through_and_stops_after_too_many(text_corpus, tmp_path, monkeypatch):
    cfg = load_recipe(tiny_recipe(tmp_path / "a", text_corpus), ["run.nonfinite=skip", "run.steps=6"])
    poison_batches(monkeypatch, {2, 3})
    summary = train(cfg)
    rows = read_jsonl(cfg.out_dir / "metrics.jsonl")
    assert summary["skipped_steps"] == 2 and math.isfinite(summary["final_val_loss"])
    assert [r["step"] for r in rows if r.get("skipped")] == [2, 3]
    cfg = load_recipe(tiny_recipe(tmp_path / "b", text_corpus),
                      ["run.nonfinite=skip", "run.max_skipped_steps=2", "run.steps=6"])
    poison_batches(monkeypatch, {3, 4, 5})
    with pytest.raises(FloatingPointError, match="3 non-finite steps in a row.*checkpoint is step 4"):
        train(cfg)


def test_full_disk_during_save_keeps_the_previous_checkpoint(text_corpus, tmp_path, monkeypatch, capsys):
    """The second save fails after its arrays are written (its JSON item hits ENOSPC): the CLI exits
    with status 4 naming the kept step, no partial directory is left, and --resume finishes the run."""
    recipe = tiny_recipe(tmp_path, text_corpus)
    real = ocp.JsonCheckpointHandler.async_save
    saves = {"n": 0}

    async def full_disk(self, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", full_disk)
    assert main(["train", str(recipe), "--no-progress", "--set", "run.steps=6"]) == 4
    err = capsys.readouterr().err
    assert "checkpoint error" in err and "step 4" in err and "disk is full" in err and "(step 2) is kept" in err
    cfg = load_recipe(recipe, ["run.steps=6"])
    ckpt_dir = cfg.out_dir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["2"]
    monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", real)  # space freed
    summary = train(cfg, resume=True)
    assert summary["steps"] == 6
    assert [r["step"] for r in read_jsonl(cfg.out_dir / "metrics.jsonl")] == list(range(1, 7))


def test_resume_refuses_another_tokenizer_or_model(text_corpus, tmp_path):
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus), ["run.steps=4"])
    train(cfg, stop_after=2)
    wider = load_recipe(tmp_path / "recipe.yaml", ["model.d_model=128", "run.steps=4"])
    with pytest.raises(ConfigError, match="model: the recipe's model section differs from the checkpoint's"):
        train(wider, resume=True)
    assert load_recipe(cfg.out_dir / "recipe.yaml").model.d_model == 64  # the run's recipe is untouched
    other = train_bpe_tokenizer(["completely different text " * 50], 280)
    other_path = tmp_path / "other.json"
    other.save(str(other_path))
    with pytest.raises(ValueError, match="differs from the run's own"):  # the recipe names another one
        train(load_recipe(tmp_path / "recipe.yaml", ["run.steps=4", f"data.tokenizer={other_path}"]), resume=True)
    other.save(str(cfg.out_dir / "tokenizer.json"))  # someone replaced the run's own tokenizer
    with pytest.raises(ConfigError, match="data: the tokenizer or validation data differ"):
        train(cfg, resume=True)


def test_resume_accepts_a_checkpoint_written_before_a_model_field_existed():
    """A field added later (model.unroll_layers) takes its default when comparing recipes."""
    from sparsetrain.config import Config, from_dict
    from sparsetrain.training.start import check_resumable

    cfg = from_dict(Config, {"model": {"preset": "tiny"}})
    old = cfg.to_dict()
    del old["model"]["unroll_layers"]  # as saved by an earlier version
    check_resumable(cfg, {"recipe": old})
    old["model"]["d_model"] = 128
    with pytest.raises(ConfigError, match="model: the recipe's model section differs"):
        check_resumable(cfg, {"recipe": old})


def test_wandb_failures_never_stop_training(text_corpus, tmp_path, monkeypatch):
    import wandb

    def no_network(*args, **kwargs):
        raise wandb.errors.CommError("Network error (ConnectionError): no route to api.wandb.ai")

    monkeypatch.setattr(wandb, "init", no_network)
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus), ["run.steps=3", "run.wandb=offline"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(cfg)
    assert summary["steps"] == 3
    assert [r["step"] for r in read_jsonl(cfg.out_dir / "metrics.jsonl")] == [1, 2, 3]
    assert sum("W&B init failed" in str(w.message) for w in caught) == 1


def test_wandb_service_errors_warn_once_and_jsonl_goes_on(tmp_path):
    class FailingRun:  # a run whose service went away: every call raises
        dir = str(tmp_path)

        def log(self, *a, **k):
            raise ConnectionError("wandb service: connection reset")

        summary = property(lambda self: (_ for _ in ()).throw(ConnectionError("reset")))

        def finish(self):
            raise ConnectionError("reset")

    tracker = Tracker(tmp_path, "disabled", "p", "n", {})
    tracker.run = FailingRun()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 6):
            tracker.log({"loss": 1.0 / step}, step)
        tracker.summary({"final_loss": 0.2})
        tracker.finish()
    assert len(caught) == 1 and "W&B log failed" in str(caught[0].message)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert (tmp_path / "summary.json").is_file()
