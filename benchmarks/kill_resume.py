"""Kill test: SIGKILL the trainer at random moments (some during checkpoint saves, some while
W&B writes its run file), resume, and check that no work and no logged metric is lost.

    python benchmarks/kill_resume.py                 # 20 trials (about 2.5 min each on 2 busy cores)
    python benchmarks/kill_resume.py --trials 3 --out runs/kill-quick

One uninterrupted reference run, then per trial a fresh run directory trained by `sparsetrain
train --resume` (W&B offline) in a subprocess that is killed 1-3 times with SIGKILL and restarted
until it finishes. Trials take turns: kill at a random moment of the run; the moment an Orbax save
is in progress (its temporary directory exists); or 0-20 ms after W&B's service writes to the
run's `.wandb` file (it buffers rows and writes them in bursts, the last one when the run
finishes). After every kill each complete checkpoint must restore; at the end the run's final
parameters must equal the reference's bit for bit, its loss trace (every step) must equal the
reference's (to 1e-6 relative: the threaded loss reduction of XLA:CPU may round the reported
scalar differently from one process to the next), and the W&B history read back from the
offline run files (what `wandb sync` uploads) must equal metrics.jsonl: every step once, in
order, same values. Prints a table and writes kill_resume.json (benchmarks/results/ by default).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOSS_RTOL = 1e-6
WORDS = ("the king queen lord lady sword crown night day love death war peace heart blood "
         "speak come go thou thee my good what sir").split()


def make_corpus(root: Path, docs: int = 24) -> Path:
    """Generated plain-text documents (about 8 KB each), the same every time."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(150)]
        (root / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_recipe(path: Path, corpus: Path, cache: Path, steps: int, every: int, wandb: str = "offline") -> Path:
    """A 2-layer, 64-wide block-sparse GPT that checkpoints every `every` steps; W&B in mode `wandb`."""
    raw = {
        "model": {"preset": "tiny", "n_layers": 2, "d_model": 64, "n_heads": 2, "context": 32},
        "sparsity": {"pattern": "random_balanced", "density": 0.25, "block": 16},
        "data": {"dataset": str(corpus), "vocab_size": 300, "seq_len": 32, "batch_size": 4,
                 "cache_dir": str(cache)},
        "optimizer": {"lr": 1e-2, "warmup_steps": 3},
        "run": {"name": "kill", "steps": steps, "eval_every": every, "eval_batches": 2, "log_every": 1,
                "checkpoint_every": every, "keep_checkpoints": 2, "wandb": wandb, "progress": False},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def trainer(recipe: Path, out_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sparsetrain.cli", "train", str(recipe), "--resume", "--no-progress",
           "--set", f"run.out_dir={out_dir}"]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # its own W&B service, as a user's
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**env, "PYTHONPATH": str(ROOT)})


KILL_MODES = ("random", "save", "wandb")


def wandb_bytes(run_dir: Path) -> int:
    """Bytes in the run's live offline W&B files (0 before the first is created)."""
    return sum(f.stat().st_size for f in (run_dir / "wandb").glob("offline-run-*/*.wandb") if f.is_file())


def wandb_check(run_dir: Path) -> dict:
    """The W&B history read back from the offline files, compared with metrics.jsonl."""
    from sparsetrain.training.tracking import history_problems, read_jsonl, read_wandb_history

    rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    history = read_wandb_history(run_dir)
    problems = history_problems(history, rows)
    return {"wandb_rows": len(history), "jsonl_rows": len(rows), "wandb_equal": not problems,
            "wandb_problems": [p[:300] for p in problems[:4]]}


def saving(ckpt_dir: Path, stale: frozenset = frozenset()) -> bool:
    """An Orbax save is in progress: a temporary step directory exists (other than `stale` ones,
    left by an earlier killed process)."""
    return ckpt_dir.is_dir() and any("tmp" in p.name and p.name not in stale for p in ckpt_dir.iterdir())


def _newest_checkpoint(ckpt_dir: Path) -> int:
    return max((int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()), default=0) if ckpt_dir.is_dir() else 0


def _last_logged_step(jsonl: Path, since: float) -> int:
    """The last step in metrics.jsonl if the file changed after time `since` (epoch seconds), else 0."""
    from sparsetrain.training.tracking import read_jsonl

    try:
        if jsonl.stat().st_mtime < since:
            return 0
        rows = read_jsonl(jsonl)
    except (OSError, ValueError):  # replaced or half-written while we looked
        return 0
    return rows[-1]["step"] if rows else 0


def _kill_trigger(run_dir: Path, mode: str, rng: random.Random, steps: int, stale: frozenset):
    """A poll function that is true at the moment to kill. "random": once this process has logged a
    step drawn uniformly after its checkpoint (then a random 0-0.5 s more, so the kill lands
    anywhere in the following step: train, eval, save or W&B call). "save": a save of this process
    is in progress. "wandb": W&B has just opened this process's run file (the kill lands in the
    init or the replay of metrics.jsonl) or, drawn at random, has just written a burst of rows to
    it (in a short run, the one at the end)."""
    ckpt_dir, jsonl, since = run_dir / "checkpoints", run_dir / "metrics.jsonl", time.time()
    if mode == "save":
        return "save", lambda: saving(ckpt_dir, stale)
    if mode == "random":
        target = rng.randint(_newest_checkpoint(ckpt_dir) + 1, max(steps, _newest_checkpoint(ckpt_dir) + 1))
        return f"after step {target}", lambda: _last_logged_step(jsonl, since) >= target
    opened = rng.random() < 0.5
    old = {f for f in (run_dir / "wandb").glob("offline-run-*/*.wandb")}
    header = {}

    def wandb_write() -> bool:
        files = [f for f in (run_dir / "wandb").glob("offline-run-*/*.wandb") if f not in old]
        if opened or not files:
            return bool(files)
        size = wandb_bytes(run_dir)
        header.setdefault("size", size)
        return size > header["size"]
    return "W&B file opened" if opened else "W&B burst", wandb_write


def kill_once(proc: subprocess.Popen, run_dir: Path, mode: str, rng: random.Random, steps: int,
              timeout_s: float = 600.0) -> dict:
    """SIGKILL `proc` at the moment `mode` (KILL_MODES) picks (see `_kill_trigger`). Returns what
    the kill hit; `finished` if the process ended first."""
    start, ckpt_dir = time.monotonic(), run_dir / "checkpoints"
    stale = frozenset(p.name for p in ckpt_dir.iterdir()) if ckpt_dir.is_dir() else frozenset()
    what, due = _kill_trigger(run_dir, mode, rng, steps, stale)
    while time.monotonic() < start + timeout_s and proc.poll() is None and not due():
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.5) if mode == "random" else rng.uniform(0.0, 0.02))
    if proc.poll() is not None:
        return {"finished": True, "rc": proc.returncode}
    in_save = saving(ckpt_dir, stale)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lost = wandb_check(run_dir)  # what W&B's own file kept of the rows logged so far
    return {"finished": False, "kill_at": what, "at_s": round(time.monotonic() - start, 2),
            "during_save": in_save, "during_wandb_write": mode == "wandb",
            "jsonl_rows_at_kill": lost["jsonl_rows"], "wandb_rows_at_kill": lost["wandb_rows"]}


def check_checkpoints(run_dir: Path) -> tuple[int, list[str]]:
    """Restore every complete checkpoint of `run_dir`; (count restored, errors)."""
    import jax

    from sparsetrain.training.checkpoint import Checkpointer
    from sparsetrain.config import Config, from_dict
    from sparsetrain.training.step import build_setup

    ckpt = Checkpointer(run_dir / "checkpoints", keep_last=1_000_000)
    errors, restored = [], 0
    try:
        for step in ckpt.all_steps():
            try:
                meta = ckpt.read_meta(step)
                setup = build_setup(from_dict(Config, meta["recipe"]), int(meta["vocab_size"]), abstract=True)
                state, meta = ckpt.restore(step, setup.state)
                assert int(meta["step"]) == step and int(state["step"]) == step
                assert all(bool(jax.numpy.isfinite(x).all()) for x in jax.tree.leaves(state["params"]))
                restored += 1
            except Exception as e:  # a corrupt checkpoint is the failure we are looking for
                errors.append(f"step {step}: {type(e).__name__}: {e}")
    finally:
        ckpt.close()
    return restored, errors


def losses(run_dir: Path) -> list[tuple[int, float]]:
    from sparsetrain.training.tracking import read_jsonl

    return [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "metrics.jsonl")]


def final_params(run_dir: Path):
    """numpy leaves of the newest checkpoint's params."""
    import jax
    import numpy as np

    from sparsetrain.training.start import restore_run

    _, _, state, _ = restore_run(run_dir)
    return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def traces_match(trace: list, reference: list, rtol: float = LOSS_RTOL) -> bool:
    """Same steps, losses equal to `rtol` (XLA:CPU's threaded loss reduction may round the reported
    scalar differently from run to run; the parameters themselves are compared bit for bit)."""
    return [s for s, _ in trace] == [s for s, _ in reference] and all(
        abs(a - b) <= rtol * abs(b) for (_, a), (_, b) in zip(trace, reference))


def run_trial(recipe: Path, run_dir: Path, reference: list, kill_at: str, kills: int,
              rng: random.Random, reference_params: list | None = None) -> dict:
    """Train `run_dir` to the end, SIGKILLing it `kills` times at `kill_at` moments (KILL_MODES)."""
    events, restarts, steps = [], 0, len(reference)
    while True:
        proc = trainer(recipe, run_dir)
        if len([e for e in events if not e.get("finished")]) < kills:
            event = kill_once(proc, run_dir, kill_at, rng, steps)
        else:
            proc.wait()
            event = {"finished": True, "rc": proc.returncode}
        if event["finished"]:
            err = proc.stderr.read()[-2000:] if event["rc"] else ""
            events.append({**event, "stderr": err} if err else event)
            break
        restored, errors = check_checkpoints(run_dir)
        events.append({**event, "checkpoints_restored": restored, "corrupt": errors})
        restarts += 1
    trace = losses(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    final_restored, final_errors = check_checkpoints(run_dir)
    corrupt = [c for e in events for c in e.get("corrupt", [])] + final_errors
    return {
        "kills": restarts, "kills_during_save": sum(bool(e.get("during_save")) for e in events),
        "kills_during_wandb_write": sum(bool(e.get("during_wandb_write")) for e in events),
        "wandb_rows_lost_at_kills": sum(e["jsonl_rows_at_kill"] - e["wandb_rows_at_kill"]
                                        for e in events if not e.get("finished")),
        **wandb_check(run_dir),
        "finished_rc": events[-1]["rc"], "resumed": events[-1]["rc"] == 0,
        "trace_equal": traces_match(trace, reference), "trace_bitwise_equal": trace == reference,
        "params_bitwise_equal": (None if reference_params is None or events[-1]["rc"] else
                                 all(a.shape == b.shape and (a == b).all()
                                     for a, b in zip(final_params(run_dir), reference_params))),
        "steps_logged": len(trace),
        "max_abs_loss_diff": max((abs(a[1] - b[1]) for a, b in zip(trace, reference)), default=None),
        "corrupt_checkpoints": corrupt, "events": events,
    }


def totals_of(rows: list[dict], reference_wandb: dict, wall_s: float) -> dict:
    return {
        "trials": len(rows), "trials_killed": sum(r["kills"] > 0 for r in rows),
        "kills": sum(r["kills"] for r in rows),
        "kills_during_save": sum(r["kills_during_save"] for r in rows),
        "kills_during_wandb_write": sum(r["kills_during_wandb_write"] for r in rows),
        "trials_resumed": sum(r["resumed"] for r in rows),
        "traces_equal": sum(r["trace_equal"] for r in rows),
        "traces_bitwise_equal": sum(r["trace_bitwise_equal"] for r in rows),
        "final_params_bitwise_equal": sum(bool(r["params_bitwise_equal"]) for r in rows),
        "max_abs_loss_diff": max(r["max_abs_loss_diff"] or 0.0 for r in rows),
        "corrupt_checkpoints": sum(len(r["corrupt_checkpoints"]) for r in rows),
        "wandb_rows_lost_at_kills": sum(r["wandb_rows_lost_at_kills"] for r in rows),
        "wandb_histories_equal": sum(r["wandb_equal"] for r in rows),
        "reference_wandb_equal": reference_wandb["wandb_equal"],
        "wall_time_s": round(wall_s, 1),
    }


def print_table(rows: list[dict], totals: dict) -> None:
    """One markdown row per trial, then the totals."""
    print("\n| trial | kill at | SIGKILLs | during a save | during a W&B write | W&B rows missing at the kills | "
          "resumed to the end | final params bit-equal | loss trace equal (rtol 1e-6) | bitwise | "
          "W&B history = metrics.jsonl | corrupt checkpoints |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['trial']} | {r['kill_at']} | {r['kills']} | {r['kills_during_save']} | "
              f"{r['kills_during_wandb_write']} | {r['wandb_rows_lost_at_kills']} | {r['resumed']} | "
              f"{r['params_bitwise_equal']} | {r['trace_equal']} | {r['trace_bitwise_equal']} | "
              f"{r['wandb_equal']} ({r['wandb_rows']}/{r['jsonl_rows']} rows) | {len(r['corrupt_checkpoints'])} |")
    t = totals
    print(f"| all {t['trials']} | | {t['kills']} | {t['kills_during_save']} | {t['kills_during_wandb_write']} | "
          f"{t['wandb_rows_lost_at_kills']} | {t['trials_resumed']} | {t['final_params_bitwise_equal']} | "
          f"{t['traces_equal']} | {t['traces_bitwise_equal']} | {t['wandb_histories_equal']} | "
          f"{t['corrupt_checkpoints']} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--every", type=int, default=3, help="checkpoint every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/kill-resume")
    p.add_argument("--json", default="benchmarks/results/kill_resume.json",
                   help="where the results go (relative to the repository root unless absolute)")
    args = p.parse_args(argv)

    out = Path(args.out).absolute()
    recipe = make_recipe(out / "recipe.yaml", make_corpus(out / "corpus"), out / "cache", args.steps, args.every)
    ref_dir = out / "reference"
    t0 = time.monotonic()
    if not (ref_dir / "run_seconds").is_file():  # the reference, timed with its process start
        ref = trainer(recipe, ref_dir)
        if ref.wait():
            print(ref.stderr.read()[-3000:], file=sys.stderr)
            return 1
        (ref_dir / "run_seconds").write_text(f"{time.monotonic() - t0:.3f}")
    run_s = float((ref_dir / "run_seconds").read_text())
    reference, reference_params, reference_wandb = losses(ref_dir), final_params(ref_dir), wandb_check(ref_dir)
    print(f"reference: {len(reference)} steps in {run_s:.0f} s (process start included); W&B history "
          f"equal to metrics.jsonl: {reference_wandb['wandb_equal']}", flush=True)

    rng = random.Random(args.seed)
    rows = []
    for i in range(args.trials):
        run_dir = out / f"trial-{i:02d}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        kill_at = KILL_MODES[i % len(KILL_MODES)]
        result = run_trial(recipe, run_dir, reference, kill_at, rng.randint(1, 3), rng, reference_params)
        rows.append({"trial": i, "kill_at": kill_at, **result})
        print(f"trial {i:2d} (kill at: {kill_at}): {result['kills']} kills ({result['kills_during_save']} during a "
              f"save, {result['kills_during_wandb_write']} during a W&B write), resumed={result['resumed']}, "
              f"trace equal={result['trace_equal']} (bitwise {result['trace_bitwise_equal']}, max diff "
              f"{result['max_abs_loss_diff']:.2g}), final params bitwise equal={result['params_bitwise_equal']}, "
              f"W&B history equal={result['wandb_equal']} {result['wandb_problems']}, "
              f"corrupt={len(result['corrupt_checkpoints'])}", flush=True)

    totals = totals_of(rows, reference_wandb, time.monotonic() - t0)
    print_table(rows, totals)
    out_json = ROOT / args.json  # an absolute --json stays as given
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"settings": vars(args), "totals": totals, "reference_wandb": reference_wandb,
                                    "trials": rows}, indent=2))
    print(f"wrote {args.json}")
    ok = (totals["trials_killed"] == totals["trials_resumed"] == totals["traces_equal"] == totals["final_params_bitwise_equal"]
          == totals["wandb_histories_equal"] == totals["trials"] and not totals["corrupt_checkpoints"]
          and totals["reference_wandb_equal"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
