"""Orbax checkpoints of a training run: keep the last N plus the best by validation loss.

A checkpoint holds the train state pytree (params, sparsity block indices, optimizer state, step,
RNG key data) saved with Orbax's StandardSave, and a JSON item `meta` with the data position, the
recipe, the vocabulary size and the data fingerprint. Orbax writes each step to a temporary
directory and renames it when complete, so an interrupted save leaves the earlier ones intact.
No pickle anywhere.

Many processes (`jax.distributed`): every process calls save and restore together; each writes and
reads only the shards of its own devices, process 0 (Orbax's primary host) writes the metadata,
the JSON item and the final rename, with barriers between. A checkpoint restores in any process
count and mesh, since the restore target's shardings, not the saved ones, place the arrays. The
directory must be on a file system that all processes share.
"""

from __future__ import annotations

import errno
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from sparsetrain.errors import CheckpointMismatchError, CheckpointSaveError


def _is_disk_full(e: BaseException) -> bool:
    while e is not None:
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or \
                "No space left" in str(e) or "Disk quota" in str(e) or "File too large" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _placed(x: Any) -> jax.ShapeDtypeStruct:
    """A restore target leaf with a sharding: `x`'s own, else this process's first device (a
    checkpoint written by several processes restores only onto a sharding given here)."""
    target = ocp.utils.to_shape_dtype_struct(x)
    if getattr(target, "sharding", None) is not None:
        return target
    return jax.ShapeDtypeStruct(target.shape, target.dtype,
                                sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


class Checkpointer:
    """Saves and restores (state, meta) pairs under `directory/<step>`."""

    def __init__(self, directory: Path, keep_last: int):
        self.directory = Path(directory).absolute()
        self.keep_last = keep_last
        self.manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=self.keep_last),
            pp.BestN(get_metric_fn=lambda m: -m["val_loss"], n=1),
        ])
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policy, enable_async_checkpointing=False, create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0)),
        )

    def latest_step(self) -> int | None:
        """Newest complete checkpoint's step (incomplete, temporary saves are ignored)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, val_loss: float) -> None:
        """Save `state` (a pytree of arrays) and `meta` (JSON-serialisable) at `step`.

        Raises:
            CheckpointSaveError: the save failed (a full disk, a lost mount, ...): its partial files
                are removed and the earlier checkpoints are untouched and restorable.
        """
        previous = self.latest_step()
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                metrics={"val_loss": float(val_loss)},
                force=True,
            )
            self.manager.wait_until_finished()
        except Exception as e:
            try:  # let the other items' background writes end before removing their directory
                self.manager.close()
            except Exception:
                pass
            self._remove_partial(step)
            self.manager = self._make_manager()
            kept = (f"the previous checkpoint (step {previous}) is kept and restorable"
                    if previous is not None else "there is no earlier checkpoint")
            full = " (the disk is full)" if _is_disk_full(e) else ""
            raise CheckpointSaveError(
                f"saving the checkpoint of step {step} in {self.directory} failed{full}: "
                f"{type(e).__name__}: {e}; {kept}; resume with --resume after freeing space") from e

    def _remove_partial(self, step: int, settle_s: float = 0.5, limit_s: float = 10.0) -> None:
        """Delete what a failed save of `step` left (its temporary directories, never a complete one).

        The failed item's siblings may still be writing from Orbax's background threads, so
        removal repeats until nothing of `step` has reappeared for `settle_s` seconds.
        """
        complete = set(self.all_steps())
        quiet_since, start = time.monotonic(), time.monotonic()
        while time.monotonic() - start < limit_s:
            left = [p for p in self.directory.glob(f"{step}*")
                    if p.is_dir() and (p.name != str(step) or step not in complete)]
            for path in left:
                shutil.rmtree(path, ignore_errors=True)
            if left:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle_s:
                return
            time.sleep(0.05)

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restore (state, meta) of `step` (newest if None) into the structure of `abstract_state`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(_placed, abstract_state)
        try:
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} does not match this recipe's model "
                f"(parameter names, shapes or optimizer state differ): {type(e).__name__}: "
                f"{str(e)[:300]}") from e
        return out["state"], out["meta"]

    def read_meta(self, step: int | None = None) -> dict:
        """Only the JSON item of a checkpoint (no arrays loaded)."""
        step = self.latest_step() if step is None else step
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return out["meta"]

    def close(self) -> None:
        self.manager.close()
