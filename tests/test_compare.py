"""Sparse-then-dense via init_from, `eval` and `compare` on real runs, refusal of unfair comparisons, W&B."""

from __future__ import annotations

import json
import shutil

import pytest

from sparsetrain.cli import main
from sparsetrain.evaluation.compare import ComparisonError, compare_runs, log_to_wandb, write_outputs
from sparsetrain.training.tracking import read_jsonl
from test_schedule import trained_runs  # the module pytest imported (shares its cache)


@pytest.fixture
def runs(text_corpus):
    """A RigL run and a sparse-then-dense run from its step-2 checkpoint (see trained_runs)."""
    return trained_runs(text_corpus)


def test_sparse_then_dense_continues_the_sparse_run(runs):
    sparse, s_sum, std, d_sum = runs
    rows = read_jsonl(std.out_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and [r.get("init_from", False) for r in rows] == [True, True, False]
    sparse_rows = read_jsonl(sparse.out_dir / "metrics.jsonl")
    assert rows[1]["loss"] == sparse_rows[1]["loss"]
    # FLOPs: two sparse steps, each followed by a RigL update (one dense step), then one dense step
    per_step_dense = d_sum["train_flops_dense"] / 3
    per_step_sparse = (s_sum["train_flops_effective"] - 2 * per_step_dense) / 3
    assert per_step_sparse < per_step_dense / 2
    assert d_sum["train_flops_effective"] == pytest.approx(2 * per_step_sparse + 3 * per_step_dense)
    assert d_sum["params_stored"] == d_sum["params_dense"] > s_sum["params_stored"]
    # the first dense step starts from the sparse model: its loss is close to the sparse run's
    assert abs(rows[2]["loss"] - sparse_rows[2]["loss"]) < 0.5


def test_compare_table_json_and_plot(runs, tmp_path, capsys):
    sparse, _, std, _ = runs
    assert main(["compare", str(std.out_dir), str(sparse.out_dir), "--baseline", "std",
                 "--out", str(tmp_path / "cmp"), "--batches", "2"]) == 0
    table = capsys.readouterr().out
    assert "| std |" in table and "| sparse |" in table and "val loss vs std" in table
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    by = {r["run"]: r for r in result["rows"]}
    assert by["std"]["val_loss_vs_base"] == 0 and by["sparse"]["params_vs_base"] < 1
    assert by["sparse"]["flops_vs_base"] < 1
    assert (tmp_path / "cmp" / "val_loss.png").stat().st_size > 1000
    assert (f"re-evaluated now on {by['std']['eval_tokens']:,} validation tokens (the first --batches "
            "batches)") in table and "its stars are these re-evaluated values" in table
    before = (tmp_path / "cmp" / "compare.json").stat().st_mtime_ns
    assert main(["compare", str(std.out_dir), "--out", str(tmp_path / "cmp")]) == 2  # not replaced
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "cmp" / "compare.json").stat().st_mtime_ns == before


def test_compare_refuses_runs_with_another_tokenizer_or_val_data(runs, tmp_path):
    sparse, *_ = runs
    other = tmp_path / "other"
    shutil.copytree(sparse.out_dir, other)  # the same run, as if tokenized differently
    summary = json.loads((other / "summary.json").read_text())
    summary["fingerprint"] = "0" * 64
    (other / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ComparisonError, match="different data.*tokenizer or validation windows"):
        compare_runs([sparse.out_dir, other])


def test_compare_logs_table_and_plot_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    row = {"run": "a", "flow": "static", "init_from": None, "params_stored": 10, "train_flops": 1e9,
           "tokens": 100, "wall_time_s": 1.0, "val_loss": 2.0, "bits_per_byte": 1.5, "eval_tokens": 64,
           "wandb": "offline",
           "wandb_project": "sparsetrain-test"}
    result = {"baseline": None, "fingerprint": "f", "rows": [row],
              "curves": {"a": [{"step": 1, "tokens": 100, "train_flops": 1e9, "val_loss": 2.0}]}}
    paths = write_outputs(result, tmp_path)
    run_dir = log_to_wandb(result, paths, tmp_path)
    assert run_dir is not None and list((tmp_path / "wandb").glob("offline-run-*/*.wandb"))
    assert list((tmp_path / "wandb").rglob("*.png")) and list((tmp_path / "wandb").rglob("comparison*.table.json"))


def test_eval_command_on_a_trained_run(runs, capsys):
    import math

    sparse, s_sum, *_ = runs
    assert main(["eval", str(sparse.out_dir), "--json", "--samples", "2", "--tokens", "8", "--batches", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["step"] == 3 and len(r["samples"]) == 2 and all(s.startswith("ROMEO:\n") for s in r["samples"])
    assert r["perplexity"] == pytest.approx(math.exp(r["val_loss"]))
    assert 0 < r["bits_per_byte"] < 8 * math.log2(s_sum["vocab_size"])
    assert (sparse.out_dir / "eval-3.json").is_file()
    assert main(["eval", str(sparse.out_dir), "--step", "7"]) == 2
    assert "step: 7 is not allowed" in capsys.readouterr().err
