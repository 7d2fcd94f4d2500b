"""Orbax checkpoints of a training run: keep the last N plus the best by validation loss.

A checkpoint holds the train state pytree (params, sparsity block indices, optimizer state, step,
RNG key data) saved with Orbax's StandardSave, and a JSON item `meta` with the data position, the
recipe, the vocabulary size and the data fingerprint. Orbax writes each step to a temporary
directory and renames it when complete, so an interrupted save leaves the earlier ones intact.
No pickle anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


class Checkpointer:
    """Saves and restores (state, meta) pairs under `directory/<step>`."""

    def __init__(self, directory: Path, keep_last: int):
        self.directory = Path(directory).absolute()
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep_last),
            pp.BestN(get_metric_fn=lambda m: -m["val_loss"], n=1),
        ])
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policy, enable_async_checkpointing=False, create=True),
        )

    def latest_step(self) -> int | None:
        """Newest complete checkpoint's step (incomplete, temporary saves are ignored)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, val_loss: float) -> None:
        """Save `state` (a pytree of arrays) and `meta` (JSON-serialisable) at `step`."""
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics={"val_loss": float(val_loss)},
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restore (state, meta) of `step` (newest if None) into the structure of `abstract_state`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
        )
        return out["state"], out["meta"]

    def read_meta(self, step: int | None = None) -> dict:
        """Only the JSON item of a checkpoint (no arrays loaded)."""
        step = self.latest_step() if step is None else step
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return out["meta"]

    def close(self) -> None:
        self.manager.close()
