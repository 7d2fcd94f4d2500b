"""The real training path end to end on a tiny GPT (the Flax lm1b idea), resume, tracking."""

from __future__ import annotations

import json
import math

import pytest

from sparsetrain.cli import main
from sparsetrain.config import ConfigError, load_recipe
from sparsetrain.training.tracking import read_jsonl
from sparsetrain.training.loop import train
from sparsetrain.training.wandb_records import history_rows
from tests.conftest import tiny_recipe


def test_one_step_end_to_end(text_corpus, tmp_path):
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus), ["run.steps=1"])
    summary = train(cfg)
    out = cfg.out_dir
    assert summary["steps"] == 1 and math.isfinite(summary["final_loss"])
    # an untrained model predicts near-uniformly over the vocabulary
    assert abs(summary["final_loss"] - math.log(summary["vocab_size"])) < 0.5
    assert summary["params_stored"] < summary["params_dense"]
    assert (out / "tokenizer.json").is_file() and (out / "recipe.yaml").is_file()
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1]
    assert (out / "checkpoints" / "1").is_dir()


def test_resume_gives_identical_loss_sequence(text_corpus, tmp_path):
    steps = ["run.steps=30", "run.checkpoint_every=10", "run.eval_every=10"]
    straight = load_recipe(tiny_recipe(tmp_path / "a", text_corpus), steps)
    train(straight)
    split = load_recipe(tiny_recipe(tmp_path / "b", text_corpus), steps)
    train(split, stop_after=15)
    with pytest.raises(ConfigError, match="already has checkpoints.*--resume"):
        train(split)  # refuses to overwrite a run
    train(split, resume=True)
    a = read_jsonl(straight.out_dir / "metrics.jsonl")
    b = read_jsonl(split.out_dir / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 31))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    val_a = {r["step"]: r["val_loss"] for r in a if "val_loss" in r}
    val_b = {r["step"]: r["val_loss"] for r in b if "val_loss" in r}
    assert sorted(val_a) == [10, 20, 30] and set(val_b) == {10, 15, 20, 30}  # 15: the stop's save
    assert all(val_a[s] == val_b[s] for s in val_a)


def test_wandb_offline_and_jsonl_hold_the_metrics(text_corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus), ["run.steps=3", "run.wandb=offline"])
    train(cfg)
    rows = read_jsonl(cfg.out_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all("loss" in r for r in rows)
    run_dirs = list((cfg.out_dir / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    logged = [h for h in history_rows(next(run_dirs[0].glob("*.wandb"))) if "loss" in h]
    assert [h["loss"] for h in logged] == [r["loss"] for r in rows]


def test_cli_reports_bad_recipe_before_training(text_corpus, tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, text_corpus)
    assert main(["train", str(recipe), "--set", "sparsity.density=2"]) == 2
    err = capsys.readouterr().err
    assert "sparsity.density: 2.0 is not allowed; allowed: a fraction in (0, 1]" in err
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_cli_info_on_13b_sparse(capsys):
    assert main(["info", "recipes/gpt3-13b-sparse.yaml", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert 12.8e9 <= info["params_dense"] <= 12.9e9
    linear = 12 * 40 * 5120 ** 2
    assert info["params_dense"] - info["params_stored"] == pytest.approx(linear * 7 / 8, rel=1e-6)
    # AdamW: two float32 moments per parameter, plus a few step counters
    assert 0 <= info["optimizer_bytes"] - 2 * info["weight_bytes"] < 64
