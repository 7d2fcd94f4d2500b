"""W&B history after a crash: a trainer SIGKILLed with W&B offline and then resumed leaves one
offline run whose history, read back from its `.wandb` file, is metrics.jsonl (no holes, no
duplicates, same values); plus the pieces (rows still to log, supersession, the file reader)."""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from pathlib import Path

import pytest
from wandb.cli.beta_sync import _expand_wandb_files  # what `wandb sync DIR` uploads

from sparsetrain.config import load_recipe
from sparsetrain.training.loop import train
from sparsetrain.training.tracking import (Tracker, history_problems, read_jsonl, read_wandb_history,
                                           rows_to_log, supersede_offline_runs)
from sparsetrain.training.wandb_records import BLOCK_BYTES, history_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kill_resume  # noqa: E402


def _rows(steps, **extra) -> list[dict]:
    return [{"step": s, "loss": 1.0 / s, **extra} for s in steps]


def _history(rows: list[dict]) -> list[dict]:
    """What a W&B history row looks like when read back: the logged keys plus `_step`."""
    return [{**r, "_step": r["step"]} for r in rows]


def test_rows_to_log_skips_what_wandb_has_and_keeps_steps_increasing():
    rows = _rows(range(1, 11))
    assert rows_to_log(rows, 0) == rows  # a fresh offline run gets every row
    assert [r["step"] for r in rows_to_log(rows, 7)] == [7, 8, 9, 10]  # online: server is at step 7
    assert rows_to_log(rows, 11) == []
    messy = _rows([1, 2, 2, 3, 1, 4])
    kept = rows_to_log(messy, 0)
    assert [r["step"] for r in kept] == [1, 2, 3, 4] and kept[1] is messy[1]  # first of a repeat


class _ResumedOnlineRun:
    """A resumed online W&B run whose server history holds steps below `starting_step`; records
    what it is sent and, like W&B, keeps only steps above the last one it holds."""

    resumed = True

    def __init__(self, server_rows: list[dict]):
        self.history = _history(server_rows)
        self.starting_step = server_rows[-1]["step"] + 1
        self.sent: list[int] = []

    def log(self, row, step, commit=None):
        self.sent.append(step)
        if step > self.history[-1]["_step"]:
            self.history.append({**row, "_step": step})

    def finish(self):
        pass


@pytest.mark.parametrize("server_has", [4, 11])  # the stream lost steps 5-9; it got past the checkpoint
def test_online_resume_logs_the_rows_the_server_lacks_then_the_new_steps(tmp_path, monkeypatch, server_has):
    import wandb

    rows = _rows(range(1, 13))
    (tmp_path / "metrics.jsonl").write_text("".join(f"{json.dumps(r)}\n" for r in rows[:9]))  # cut at step 9
    run = _ResumedOnlineRun(rows[:server_has])  # what the killed process got to the server
    offline = tmp_path / "wandb" / "offline-run-20260101_000000-abc"  # an earlier offline attempt
    offline.mkdir(parents=True)
    (offline / "run-abc.wandb").write_bytes(b":W&B")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(wandb, "init", lambda **kw: run)
    tracker = Tracker(tmp_path, "online", "test", "online", {}, resume=True)
    for r in rows[9:]:
        tracker.log({"loss": r["loss"]}, r["step"])
    assert run.sent == list(range(server_has + 1, 13))  # from metrics.jsonl, then new; none twice
    assert history_problems(run.history, read_jsonl(tmp_path / "metrics.jsonl")) == []
    assert list(_expand_wandb_files(tmp_path / "wandb")) == []  # `wandb sync` adds nothing twice


def test_history_problems_finds_holes_duplicates_and_changed_values():
    rows = _rows(range(1, 31))
    assert history_problems(_history(rows), rows) == []
    holes = _history([r for r in rows if not 3 <= r["step"] <= 15])  # a crash lost steps 3-15
    assert history_problems(holes, rows) == [f"steps missing from W&B: {list(range(3, 16))}"]
    twice = _history(rows[:10] + rows[7:])  # a resume re-logged steps 8-10
    assert history_problems(twice, rows) == ["steps logged out of order or twice: [8, 9, 10]"]
    changed = _history(rows)
    changed[4]["loss"] = 0.0
    assert len(problems := history_problems(changed, rows)) == 1 and problems[0].startswith("step 5:")
    assert history_problems(_history(rows) + _history(_rows([31])), rows) == [
        "steps in W&B but not in metrics.jsonl: [31]"]
    assert history_problems(_history(_rows([1], loss=math.nan)), _rows([1], loss=math.nan)) == []


def test_superseded_runs_are_not_found_by_wandb_sync(tmp_path):
    wandb_dir = tmp_path / "wandb"
    for name in ("offline-run-20260101_000000-abc", "offline-run-20260101_000005-abc"):
        (wandb_dir / name / "files").mkdir(parents=True)
        (wandb_dir / name / "run-abc.wandb").write_bytes(b":W&B")
    (wandb_dir / "debug.log").write_text("")
    assert len(list(_expand_wandb_files(wandb_dir))) == 2
    moved = supersede_offline_runs(wandb_dir)
    assert [p.parent.name for p in moved] == ["superseded"] * 2
    assert list(_expand_wandb_files(wandb_dir)) == []  # `wandb sync OUT/wandb` uploads nothing
    assert all(list(_expand_wandb_files(p)) == [] for p in moved)  # nor when pointed at one
    # a run restarted within the same second has the same directory name: both are kept
    (wandb_dir / "offline-run-20260101_000005-abc").mkdir()
    assert supersede_offline_runs(wandb_dir)[0].name == "offline-run-20260101_000005-abc.2"


def test_reader_reads_rows_across_blocks_and_stops_cleanly_at_a_torn_tail(tmp_path):
    tracker = Tracker(tmp_path, "offline", "test", "reader", {})
    rows = [{"step": s, **{f"metric_{k}": s + k / 7 for k in range(12)}} for s in range(1, 121)]
    for r in rows:
        tracker.log({k: v for k, v in r.items() if k != "step"}, r["step"])
    tracker.finish()
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/*.wandb")
    assert run_file.stat().st_size > 2 * BLOCK_BYTES  # records span blocks (FIRST/MIDDLE/LAST chunks)
    full = history_rows(run_file)
    assert history_problems(full, rows) == []
    data = run_file.read_bytes()
    for cut in random.Random(0).sample(range(8, len(data)), 12):  # a writer killed mid-file
        run_file.write_bytes(data[:cut])
        torn = history_rows(run_file)
        assert torn == full[:len(torn)]


def _kill_at_step(proc, jsonl: Path, step: int, timeout_s: float = 120.0) -> int:
    """SIGKILL `proc` once metrics.jsonl holds `step` rows; the number of rows it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.is_file() and len(read_jsonl(jsonl)) >= step:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(read_jsonl(jsonl))


@pytest.mark.parametrize("seed", [0])
def test_sigkill_then_resume_leaves_wandb_history_equal_to_metrics(text_corpus, tmp_path, seed):
    steps = 8
    recipe = kill_resume.make_recipe(tmp_path / "recipe.yaml", text_corpus, tmp_path / "cache", steps=steps,
                                     every=3, wandb="offline")
    run_dir = tmp_path / "run"
    kill_step = random.Random(seed).randint(2, steps - 1)
    logged = _kill_at_step(kill_resume.trainer(recipe, run_dir), run_dir / "metrics.jsonl", kill_step)
    assert kill_step <= logged < steps

    train(load_recipe(recipe, [f"run.out_dir={run_dir}"]), resume=True)

    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # metrics.jsonl: each step once
    history = read_wandb_history(run_dir)
    assert history_problems(history, rows) == []
    assert [h["_step"] for h in history] == list(range(1, steps + 1))
    assert len({p.resolve() for p in _expand_wandb_files(run_dir / "wandb")}) == 1  # one run to sync
    assert list((run_dir / "wandb" / "superseded").glob("offline-run-*"))  # the killed one, set aside
