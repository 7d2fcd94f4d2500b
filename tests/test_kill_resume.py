"""The short kill test: SIGKILL the trainer in a subprocess while a checkpoint save is in progress,
resume, and get the uninterrupted run's loss trace with every checkpoint restorable and W&B's
offline history equal to metrics.jsonl (benchmarks/kill_resume.py runs many such trials, also at
random moments and during W&B writes)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from sparsetrain.config import load_recipe
from sparsetrain.training.loop import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kill_resume  # noqa: E402


def test_sigkill_during_a_save_then_resume_loses_nothing(text_corpus, tmp_path):
    recipe = kill_resume.make_recipe(tmp_path / "recipe.yaml", text_corpus, tmp_path / "cache", steps=6, every=2)
    reference_cfg = load_recipe(recipe, [f"run.out_dir={tmp_path / 'reference'}"])
    train(reference_cfg)
    reference = kill_resume.losses(reference_cfg.out_dir)
    result = kill_resume.run_trial(recipe, tmp_path / "killed", reference, kill_at="save", kills=1,
                                   rng=random.Random(0),
                                   reference_params=kill_resume.final_params(reference_cfg.out_dir))
    assert result["kills"] == 1 and result["resumed"], result["events"]
    assert result["kills_during_save"] == 1, result["events"]  # the kill hit an unfinished save
    assert result["corrupt_checkpoints"] == []
    assert result["params_bitwise_equal"]  # the resumed run ends in exactly the same state
    assert result["trace_equal"], (result["max_abs_loss_diff"], result["steps_logged"])
    assert result["wandb_equal"], result["wandb_problems"]  # W&B offline history = metrics.jsonl
