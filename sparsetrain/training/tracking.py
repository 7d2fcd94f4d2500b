"""Metrics to Weights & Biases (online / offline / disabled) and to a local JSONL, through one call.

`Tracker.log(metrics, step)` appends one JSON line to `OUT/metrics.jsonl` and, unless W&B is
disabled, calls `wandb.log`. Online mode without an API key falls back to offline. A W&B failure
never stops training: it is reported once and the JSONL goes on. In a multi-process run only
process 0's tracker (`primary=True`) records anything; the others' calls do nothing.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any


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
                 resume: bool = False, primary: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.out_dir / "metrics.jsonl"
        self.primary = primary
        self.mode = resolve_wandb_mode(mode) if primary else "disabled"
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
        id_file.write_text(run_id)
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
        if not self.primary:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.run is not None:
            try:
                self.run.log(row, step=int(step))
            except Exception as e:
                self._warn(f"W&B log failed ({type(e).__name__}: {e}); JSONL continues")

    def summary(self, values: dict[str, Any]) -> None:
        """Final values of a run (also written to `summary.json`)."""
        if not self.primary:
            return
        (self.out_dir / "summary.json").write_text(json.dumps(
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
    mid-line) is dropped; a malformed complete line raises."""
    text = Path(path).read_text()
    lines = text.split("\n")
    if lines and lines[-1].strip():  # torn last line
        lines = lines[:-1]
    return [json.loads(line) for line in lines if line.strip()]
