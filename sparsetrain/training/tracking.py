"""Metrics to Weights & Biases (online / offline / disabled) and to a local JSONL, through one call.

`Tracker.log(metrics, step)` appends one JSON line to `OUT/metrics.jsonl` and, unless W&B is
disabled, calls `wandb.log`. Online mode without an API key falls back to offline. A W&B failure
never stops training: it is reported once and the JSONL goes on.

`metrics.jsonl` is the run's history of record; the W&B run is rebuilt from it whenever a tracker
starts, so a killed process (SIGKILL, OOM killer) never leaves W&B with holes or duplicates:

- A resume first cuts `metrics.jsonl` back to the checkpoint it restarts from (`rewrite_jsonl`,
  atomic: a kill during the rewrite leaves the old file or the new one, never half of one), so the
  re-run steps are logged once.
- Offline (the default): W&B writes each process's rows to its own directory
  `OUT/wandb/offline-run-TIME-ID/run-ID.wandb`, and rows not yet written when the process is
  killed are lost from that file. So a starting tracker first moves every earlier offline run
  directory to `OUT/wandb/superseded/` (its `.wandb` file renamed `*.wandb.superseded`), then
  opens a fresh offline run with the same id and logs all rows of `metrics.jsonl` into it, in
  step order, before the new steps (about 2 ms a row: 5000 rows of 13 metrics took 12 s on a
  loaded 2-core machine). `OUT/wandb` then holds exactly one offline run, whose history
  is `metrics.jsonl`; `wandb sync OUT/wandb` (or `wandb sync OUT/wandb/offline-run-*`) uploads it
  and nothing else (wandb sync looks for `*.wandb` one level down only). Sync after the run ends:
  a run directory synced before a crash and then superseded was uploaded with the history it
  held; syncing the new one later adds the steps W&B did not have yet (W&B drops steps at or
  below the run's current step; they are the same rows). Rebuilding, rather than logging only
  the missing rows into a new directory beside the old ones, keeps one file that is the whole
  history: the killed process may also have written rows past the checkpoint that the resumed
  run logs again, and every directory `wandb sync` finds is uploaded. `finish()` waits until
  the service has written the run's last record, so a kill after it loses nothing.
- Online: the resumed W&B run (same id) starts at the server's step `run.starting_step`; rows of
  `metrics.jsonl` from that step on are logged again before the new steps, and steps the server
  already has are not sent (W&B would drop them). Rows the server got from the killed process
  past the restarted checkpoint keep the values that process computed (equal to the re-run's
  when training is deterministic). Earlier offline run directories are superseded here too
  (their rows reach the server from `metrics.jsonl`), so a later `wandb sync` adds nothing twice.

`read_wandb_history(OUT)` reads the offline run's history back from its `.wandb` files (no
network) and `history_problems` compares it with `metrics.jsonl`.

In a multi-process run only process 0's tracker (`primary=True`) records anything; the others'
calls do nothing.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

from sparsetrain.errors import DamagedFileError
from sparsetrain.run_files import append_line, write_atomic
from sparsetrain.training.wandb_records import history_rows, same_value, wait_for_exit_record

SUPERSEDED = "superseded"
_OFFLINE_DIR = re.compile(r"^offline-run-(\d{8}_\d{6})-(\w+)$")


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def resolve_wandb_mode(mode: str) -> str:
    """'online' without credentials becomes 'offline' (no network needed); others unchanged."""
    if mode == "online" and not _has_wandb_key():
        print("W&B: no API key found (WANDB_API_KEY or ~/.netrc); logging offline instead.",
              file=sys.stderr)
        return "offline"
    return mode


class Tracker:
    """Logs metric dicts to `out_dir/metrics.jsonl` and to a W&B run (directory `out_dir/wandb`).

    At start the W&B run receives the rows `metrics.jsonl` already holds (see the module
    docstring), so create the tracker after the file has been cut back to the starting step.
    """

    def __init__(self, out_dir: Path, mode: str, project: str, name: str, config: dict,
                 resume: bool = False, primary: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.out_dir / "metrics.jsonl"
        self.primary = primary
        self.mode = resolve_wandb_mode(mode) if primary else "disabled"
        self.run = None
        self._warned = False
        self._wandb_next_step = 0  # W&B drops a step below the run's current one
        if self.mode != "disabled":
            try:
                import wandb

                run_id = self._run_id(resume)
                supersede_offline_runs(self.out_dir / "wandb")  # online too: this run supersedes them
                self.run = wandb.init(
                    project=project, name=name, config=config, mode=self.mode,
                    dir=str(self.out_dir), resume="allow" if resume else None,
                    id=run_id, settings=wandb.Settings(silent=True),
                )
                if self.mode == "online" and self.run.resumed:
                    self._wandb_next_step = int(self.run.starting_step)
                rows = read_jsonl(self.jsonl_path) if self.jsonl_path.is_file() else []
                for row in rows_to_log(rows, self._wandb_next_step):
                    self._log_wandb(row, row["step"])
            except Exception as e:  # W&B must never stop training
                self._warn(f"W&B init failed ({type(e).__name__}: {e}); metrics go to "
                           f"{self.jsonl_path} only")
                self.run = None

    def _run_id(self, resume: bool) -> str:
        """Reuse the W&B run id across resumes of the same output directory."""
        id_file = self.out_dir / "wandb_run_id"
        if resume and id_file.is_file() and id_file.read_text().strip():
            return id_file.read_text().strip()
        run_id = uuid.uuid4().hex[:12]
        write_atomic(id_file, run_id)
        return run_id

    def _warn(self, message: str) -> None:
        if not self._warned:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            self._warned = True

    @property
    def wandb_dir(self) -> Path | None:
        """The W&B run's local files directory (offline runs sync later with `wandb sync`)."""
        return Path(self.run.dir).parent if self.run is not None else None

    def _log_wandb(self, row: dict, step: int) -> None:
        """One history row, committed at once (not held back until the next step's call)."""
        if step < self._wandb_next_step:
            return
        self.run.log(row, step=step, commit=True)
        self._wandb_next_step = step + 1

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record `metrics` (floats, ints or strings) at `step` in the JSONL and in W&B."""
        if not self.primary:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        append_line(self.jsonl_path, json.dumps(row))
        if self.run is not None:
            try:
                self._log_wandb(row, int(step))
            except Exception as e:
                self._warn(f"W&B log failed ({type(e).__name__}: {e}); JSONL continues")

    def summary(self, values: dict[str, Any]) -> None:
        """Final values of a run (also written to `summary.json`)."""
        if not self.primary:
            return
        write_atomic(self.out_dir / "summary.json", json.dumps(
            {k: _plain(v) for k, v in values.items()}, indent=2))
        if self.run is not None:
            try:
                self.run.summary.update({k: _plain(v) for k, v in values.items()})
            except Exception as e:
                self._warn(f"W&B summary failed ({type(e).__name__}: {e})")

    def finish(self) -> None:
        """Close the W&B run and wait until its file holds every row (a kill after this loses none)."""
        if self.run is not None:
            try:
                run_file = Path(self.run.settings.sync_file)
                self.run.finish()
                if not wait_for_exit_record(run_file):
                    self._warn(f"W&B finish: {run_file} was not completed within 30 s")
            except Exception as e:
                self._warn(f"W&B finish failed ({type(e).__name__}: {e})")
            self.run = None


def _plain(v: Any) -> Any:
    """JSON-serialisable scalar from numpy/jax scalars."""
    if hasattr(v, "item"):
        return v.item()
    return v


def rows_to_log(rows: list[dict], next_step: int) -> list[dict]:
    """The rows of `rows` (metrics.jsonl order) that a W&B run at `next_step` still needs: steps
    from `next_step` on, each step once and strictly increasing (a row whose step is not above
    the previous kept one would be dropped by W&B, so it is left out here)."""
    kept: list[dict] = []
    for row in rows:
        if row["step"] >= next_step and (not kept or row["step"] > kept[-1]["step"]):
            kept.append(row)
    return kept


def supersede_offline_runs(wandb_dir: Path) -> list[Path]:
    """Move every offline run directory of `wandb_dir` to `wandb_dir/superseded/`, renaming its
    `*.wandb` files `*.wandb.superseded` first, so that `wandb sync` no longer finds them.
    Returns the new locations. Each step is one rename: a kill in between leaves a directory that
    sync skips already, and the next start finishes the move."""
    wandb_dir = Path(wandb_dir)
    moved = []
    if not wandb_dir.is_dir():
        return moved
    for run_dir in sorted(p for p in wandb_dir.iterdir() if _OFFLINE_DIR.match(p.name) and p.is_dir()):
        for f in run_dir.glob("*.wandb"):
            f.rename(f.with_name(f.name + "." + SUPERSEDED))
        target_root = wandb_dir / SUPERSEDED
        target_root.mkdir(exist_ok=True)
        target, n = target_root / run_dir.name, 1
        while target.exists():  # a run restarted within the same second reuses the name
            n += 1
            target = target_root / f"{run_dir.name}.{n}"
        run_dir.rename(target)
        moved.append(target)
    return moved


def read_wandb_history(out_dir: Path) -> list[dict]:
    """The W&B history that `wandb sync OUT/wandb` would upload, read back from the offline run
    files (`OUT/wandb/offline-run-TIME-ID/*.wandb`, oldest directory first) with no network.
    One dict per logged row: the logged keys and `_step`."""
    wandb_dir = Path(out_dir) / "wandb"
    runs = sorted((m.group(1), p) for p in (wandb_dir.iterdir() if wandb_dir.is_dir() else [])
                  if (m := _OFFLINE_DIR.match(p.name)))
    return [row for _, run_dir in runs for f in sorted(run_dir.glob("*.wandb")) for row in history_rows(f)]


def history_problems(history: list[dict], rows: list[dict]) -> list[str]:
    """How a W&B history (`read_wandb_history`) differs from metrics.jsonl rows: missing steps
    (holes), repeated or decreasing steps, extra steps, values that differ. Empty when equal."""
    problems = []
    repeated, highest = set(), None
    for s in (h.get("_step") for h in history):
        if s is not None and highest is not None and s <= highest:
            repeated.add(s)  # W&B keeps a run's steps increasing: this row is a repeat or out of order
        highest = s if highest is None or (s is not None and s > highest) else highest
    repeated = sorted(repeated)
    if repeated:
        problems.append(f"steps logged out of order or twice: {repeated}")
    by_step = {h.get("_step"): h for h in history}
    expected = {r["step"] for r in rows}
    if missing := sorted(expected - by_step.keys()):
        problems.append(f"steps missing from W&B: {missing}")
    if extra := sorted(k for k in by_step.keys() - expected if k is not None):
        problems.append(f"steps in W&B but not in metrics.jsonl: {extra}")
    for r in rows:
        h = by_step.get(r["step"])
        if h is None:
            continue
        logged = {k: v for k, v in h.items() if k != "_step"}
        if logged.keys() != r.keys() or not all(same_value(logged[k], r[k]) for k in r):
            problems.append(f"step {r['step']}: W&B {logged} != metrics.jsonl {r}")
    return problems


def rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    """Replace a metrics JSONL file by `rows`, atomically (`run_files.write_atomic`: a kill leaves
    the old content or the new, never a part)."""
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    """All rows of a metrics JSONL file. A last line without its newline (the writer was killed
    mid-line) is dropped; any other line that is not a JSON object raises DamagedFileError."""
    try:
        lines = Path(path).read_bytes().decode("utf-8", errors="replace").split("\n")
    except OSError as e:
        what = "missing" if isinstance(e, FileNotFoundError) else f"does not read ({e})"
        raise DamagedFileError(f"{path}: {what}; restore it from a backup (it is the run's log of "
                               "metrics; the checkpoints do not need it)") from e
    if lines and lines[-1].strip():  # torn last line
        lines = lines[:-1]
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or "step" not in row:
            raise DamagedFileError(
                f"{path}: line {number} is not a metrics row ({line[:60]!r}); delete or fix that line "
                "(the file is the run's log; the checkpoints do not need it)")
        rows.append(row)
    return rows
