"""Metrics to Weights & Biases (online / offline / disabled) and to a local JSONL, through one call.

`Tracker.log(metrics, step)` appends one JSON line to `OUT/metrics.jsonl` and, unless W&B is
disabled, calls `wandb.log`. Online mode without an API key falls back to offline. A W&B failure
never stops training: it is reported once and the JSONL goes on.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

from sparsetrain.errors import DamagedFileError
from sparsetrain.run_files import append_line, write_atomic


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
    """Logs metric dicts to `out_dir/metrics.jsonl` and to a W&B run (directory `out_dir/wandb`)."""

    def __init__(self, out_dir: Path, mode: str, project: str, name: str, config: dict,
                 resume: bool = False):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.out_dir / "metrics.jsonl"
        self.mode = resolve_wandb_mode(mode)
        self.run = None
        self._warned = False
        if self.mode != "disabled":
            try:
                import wandb

                self.run = wandb.init(
                    project=project, name=name, config=config, mode=self.mode,
                    dir=str(self.out_dir), resume="allow" if resume else None,
                    id=self._run_id(resume), settings=wandb.Settings(silent=True),
                )
            except Exception as e:  # W&B must never stop training
                self._warn(f"W&B init failed ({type(e).__name__}: {e}); metrics go to "
                           f"{self.jsonl_path} only")

    def _run_id(self, resume: bool) -> str:
        """Reuse the W&B run id across resumes of the same output directory."""
        id_file = self.out_dir / "wandb_run_id"
        if resume and id_file.is_file():
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

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record `metrics` (floats, ints or strings) at `step` in the JSONL and in W&B."""
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        append_line(self.jsonl_path, json.dumps(row))
        if self.run is not None:
            try:
                self.run.log(row, step=int(step))
            except Exception as e:
                self._warn(f"W&B log failed ({type(e).__name__}: {e}); JSONL continues")

    def summary(self, values: dict[str, Any]) -> None:
        """Final values of a run (also written to `summary.json`)."""
        write_atomic(self.out_dir / "summary.json", json.dumps(
            {k: _plain(v) for k, v in values.items()}, indent=2))
        if self.run is not None:
            try:
                self.run.summary.update({k: _plain(v) for k, v in values.items()})
            except Exception as e:
                self._warn(f"W&B summary failed ({type(e).__name__}: {e})")

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as e:
                self._warn(f"W&B finish failed ({type(e).__name__}: {e})")
            self.run = None


def _plain(v: Any) -> Any:
    """JSON-serialisable scalar from numpy/jax scalars."""
    if hasattr(v, "item"):
        return v.item()
    return v


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
