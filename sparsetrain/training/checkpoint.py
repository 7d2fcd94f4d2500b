"""Orbax checkpoints of a training run: keep the last N plus the best by validation loss.

A checkpoint holds the train state pytree (params, sparsity block indices, optimizer state, step,
RNG key data) saved with Orbax's StandardSave, and a JSON item `meta` with the data position, the
recipe, the vocabulary size, the data fingerprint and a CRC-32 of every array. Orbax writes each
step to a temporary directory and renames it when complete, so an interrupted save leaves the
earlier ones intact. No pickle anywhere.

Damage (a file of a complete checkpoint truncated, deleted or garbled later) is told apart from a
checkpoint of another model: the stored array layout (`state/_METADATA`) must read and match the
model's, then every array must read and match the CRC-32 recorded at save (TensorStore's
zstd chunks carry no checksum, so flipped bytes would otherwise restore as wrong numbers).
`restore_newest` skips damaged checkpoints, naming each on stderr, and leaves them on disk.

Retention is ours, not Orbax's: Orbax's manager keeps the metrics it ranks by in memory only
(they reach disk only with `best_fn`), so checkpoints that existed before a resume had no metric
and were never pruned. `_prune` ranks every checkpoint on disk by the `val_loss` in its meta.

Many processes (`jax.distributed`): every process calls save and restore together; each writes and
reads only the shards of its own devices, process 0 (Orbax's primary host) writes the metadata,
the JSON item and the final rename, with barriers between. A checkpoint restores in any process
count and mesh, since the restore target's shardings, not the saved ones, place the arrays. The
directory must be on a file system that all processes share.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from sparsetrain.errors import CheckpointMismatchError, CheckpointSaveError, DamagedCheckpointError, \
    DamagedFileError, InputError, is_disk_full
from sparsetrain.training.save_noise import held_back

DAMAGED_DIRNAME = "damaged"  # checkpoints/damaged/<step>: a damaged step moved aside before a new save
DELETING_PREFIX = ".deleting-"  # checkpoints/.deleting-<step>: a pruned step while it is removed


def _name(path) -> str:
    """'opt_state/1/0/mu/layers/wq' for a pytree key path (dict keys, attributes, indices alike)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _layout(tree: Any) -> dict[str, tuple]:
    """{array name: (shape, dtype name)} of a pytree of arrays or array metadata."""
    return {_name(p): (tuple(x.shape), np.dtype(x.dtype).name)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _shown(entry: tuple | None) -> str:
    """'int32[2, 4, 1]' for a (shape, dtype name) layout entry; 'absent' for None."""
    return "absent" if entry is None else f"{entry[1]}{list(entry[0])}"


def array_crcs(state: Any) -> dict[str, str] | None:
    """{array name: CRC-32 hex of its bytes}; None when an array is not all in this process."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    if not all(getattr(x, "is_fully_addressable", True) for _, x in leaves):
        return None
    return {_name(p): f"{zlib.crc32(np.ascontiguousarray(jax.device_get(x)).reshape(-1).view(np.uint8)):08x}"
            for p, x in leaves}  # the bytes as they are, no copy (bfloat16 included)


def _one_line(e: BaseException, limit: int = 240) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


class _QuietFailedReads:
    """An unraisable-exception hook that drops the reports a failed TensorStore read leaves behind
    (Orbax's other read coroutines, closed with the array error, and their callbacks into the
    asyncio loop Orbax has already closed): the failure itself is raised, once, as damage.
    Anything else goes to the hook that was installed before."""

    NOISE = ("Event loop is closed", "Encountered error while reading array")

    def __init__(self):
        self.previous = sys.unraisablehook

    def __call__(self, unraisable) -> None:
        text = f"{unraisable.exc_value} {unraisable.exc_value.__cause__ if unraisable.exc_value else ''}"
        if not any(n in text for n in self.NOISE):
            self.previous(unraisable)

    def install(self) -> None:
        if sys.unraisablehook is not self:
            self.previous, sys.unraisablehook = sys.unraisablehook, self


_QUIET = _QuietFailedReads()


def _placed(x: Any) -> jax.ShapeDtypeStruct:
    """A restore target leaf with a sharding: `x`'s own, else this process's first device (a
    checkpoint written by several processes restores only onto a sharding given here)."""
    target = ocp.utils.to_shape_dtype_struct(x)
    if getattr(target, "sharding", None) is not None:
        return target
    return jax.ShapeDtypeStruct(target.shape, target.dtype,
                                sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


def steps_on_disk(directory: Path) -> list[int]:
    """Steps of the complete checkpoints in `directory`, read from the folder names alone (Orbax
    finalises a save by renaming `STEP.orbax-checkpoint-tmp-*` to `STEP`). No CheckpointManager is
    made: in a multi-process run that would be a collective step only some processes take."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


class Checkpointer:
    """Saves and restores (state, meta) pairs under `directory/<step>`."""

    def __init__(self, directory: Path, keep_last: int):
        self.directory = Path(directory).absolute()
        self.keep_last = keep_last
        self._val_loss: dict[int, float | None] = {}  # step -> val_loss of its meta (None: unreadable)
        self.damaged: set[int] = set()  # steps found damaged by this instance
        self._remove_deleting()
        self.manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(  # every step is kept by Orbax; `_prune` decides
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=pp.PreserveAll(), enable_async_checkpointing=False, create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0)),
        )

    def latest_step(self) -> int | None:
        """Newest complete checkpoint's step (incomplete, temporary saves are ignored)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, val_loss: float) -> None:
        """Save `state` (a pytree of arrays) and `meta` (JSON-serialisable) at `step`, then prune.

        A checkpoint already at `step` (one skipped as damaged, or a newer one when resuming from
        an older step) is first moved to `directory/damaged/<step>` or `directory/replaced/<step>`:
        nothing on disk is overwritten.

        Raises:
            CheckpointSaveError: the save failed (a full disk, a lost mount, ...): its partial files
                are removed and the earlier checkpoints are untouched and restorable.
        """
        if step in self.all_steps():
            self._move_aside(step)
        previous = self.latest_step()
        meta = {**meta, "array_crc32": array_crcs(state)}
        with held_back() as held:  # Orbax's own failure reports: one line says it all
            try:
                self.manager.save(
                    step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                    force=True)
                self.manager.wait_until_finished()
            except Exception as e:
                held.failed()
                error = e
                try:  # let the other items' background writes end before removing their directory
                    self.manager.close()
                except Exception:
                    pass
                self._remove_partial(step)
                self.manager = self._make_manager()
        if not held.ok:
            kept = (f"the previous checkpoint (step {previous}) is kept and restorable"
                    if previous is not None else "there is no earlier checkpoint")
            full = " (the disk is full)" if is_disk_full(error) else ""
            raise CheckpointSaveError(
                f"saving the checkpoint of step {step} in {self.directory} failed{full}: "
                f"{type(error).__name__}: {str(error)[:200]}; {kept}; resume with --resume after freeing "
                "space") from error
        self._val_loss[step] = float(val_loss)
        self._prune(step)

    def _move_aside(self, step: int) -> None:
        """Move the checkpoint at `step` to damaged/<step> (or replaced/<step>, if it restored)."""
        folder = self.directory / (DAMAGED_DIRNAME if step in self.damaged else "replaced")
        folder.mkdir(exist_ok=True)
        target, n = folder / str(step), 1
        while target.exists():
            target, n = folder / f"{step}.{n}", n + 1
        (self.directory / str(step)).rename(target)
        self.manager.reload()
        self._val_loss.pop(step, None)
        self.damaged.discard(step)
        print(f"sparsetrain: checkpoint step {step} in {self.directory} was moved to {target} before saving step "
              f"{step} again", file=sys.stderr)

    def _prune(self, newest: int) -> None:
        """Keep the last `keep_last` checkpoints up to `newest`, the best by val_loss, and every
        checkpoint whose meta does not read (damaged: kept for inspection); delete the others.
        Steps after `newest` (left by an earlier attempt) are not this attempt's to delete."""
        steps = [s for s in self.all_steps() if s <= newest]
        losses = {s: self._meta_val_loss(s) for s in steps}
        keep = set(steps[-self.keep_last:]) | {s for s, v in losses.items() if v is None} | self.damaged
        finite = {s: v for s, v in losses.items() if v is not None and math.isfinite(v)}
        if finite:
            keep.add(min(finite, key=lambda s: (finite[s], -s)))  # the newest of equal bests
        for s in steps:
            if s not in keep:
                self._delete(s)
                self._val_loss.pop(s, None)

    def _delete(self, step: int) -> None:
        """Delete the checkpoint at `step` all at once: it is renamed to `.deleting-<step>` (one
        atomic rename: a kill never leaves a half-deleted step that still looks like a checkpoint),
        then removed. Many processes: Orbax's own delete (its primary host removes it)."""
        if jax.process_count() > 1:
            self.manager.delete(step)
            return
        doomed = self.directory / f"{DELETING_PREFIX}{step}"
        (self.directory / str(step)).rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        self.manager.reload()

    def _remove_deleting(self) -> None:
        """Finish deletions a killed process left (`.deleting-<step>` directories)."""
        if jax.process_count() == 1 and self.directory.is_dir():
            for doomed in self.directory.glob(f"{DELETING_PREFIX}*"):
                shutil.rmtree(doomed, ignore_errors=True)

    def _meta_val_loss(self, step: int) -> float | None:
        if step not in self._val_loss:
            try:
                value = self.read_meta(step).get("val_loss")
            except DamagedCheckpointError:
                self._val_loss[step] = None
            else:  # an imported model's checkpoint has no val_loss: never the best
                self._val_loss[step] = float(value) if isinstance(value, (int, float)) else math.nan
        return self._val_loss[step]

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

    def _damaged(self, step: int, reason: str, e: BaseException | None = None) -> DamagedCheckpointError:
        self.damaged.add(step)
        return DamagedCheckpointError(self.directory, step, reason + (f": {_one_line(e)}" if e else ""))

    def read_meta(self, step: int | None = None) -> dict:
        """Only the JSON item of a checkpoint (no arrays loaded). DamagedCheckpointError if unreadable."""
        step = self.latest_step() if step is None else step
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise self._damaged(step, "its meta does not read", e) from e
        if not isinstance(meta, dict) or "step" not in meta:
            raise self._damaged(step, "its meta is not a checkpoint's")
        return meta

    def _check_layout(self, step: int, abstract_state: Any) -> None:
        """CheckpointMismatchError if the stored arrays' names, shapes or dtypes are not the model's."""
        try:
            stored = _layout(ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state"))
        except Exception as e:
            raise self._damaged(step, "its array metadata does not read", e) from e
        wanted = _layout(abstract_state)
        if stored != wanted:
            names = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
            diff = "; ".join(f"{k}: stored {_shown(stored.get(k))}, model {_shown(wanted.get(k))}"
                             for k in names[:3])
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} does not match this recipe's model "
                f"(parameter names, shapes or optimizer state differ: {diff})")

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restore (state, meta) of `step` (newest if None) into the structure of `abstract_state`.

        Raises:
            CheckpointMismatchError: the checkpoint is of another model (names, shapes, dtypes).
            DamagedCheckpointError: a file of it is missing, truncated or garbled.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        _QUIET.install()  # before the first TensorStore read
        meta = self.read_meta(step)
        self._check_layout(step, abstract_state)
        target = jax.tree.map(_placed, abstract_state)
        try:
            args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
            state = self.manager.restore(step, args=args)["state"]
        except Exception as e:
            raise self._damaged(step, "its arrays do not read", e) from e
        saved, now = meta.get("array_crc32"), array_crcs(state)
        if saved and now is not None:
            bad = sorted(k for k in saved if now.get(k) != saved[k])
            if bad:
                raise self._damaged(step, f"{len(bad)} arrays differ from the CRC-32 recorded when it was "
                                    f"saved: {', '.join(bad[:3])}")
        return state, meta

    def restore_newest(self, prepare: Callable[[dict], Any], step: int | None = None,
                       using: str = "using") -> tuple[Any, dict]:
        """(state, meta) of the newest checkpoint that restores, or of `step` if given.

        Args:
          prepare: meta -> the abstract state to restore into; it may refuse the checkpoint (a
            ConfigError of another recipe, ...), which is raised as is.
          using: what the caller does with it, for the line that names each damaged checkpoint
            skipped: "checkpoint step 30 in DIR is damaged (WHAT); it is kept for inspection and
            skipped; USING step 20".

        Raises:
          FileNotFoundError: there is no checkpoint. InputError: `step` is not one of them.
          DamagedFileError: `step`, or every checkpoint, is damaged (all are left on disk).
          CheckpointMismatchError: a checkpoint is of another model (not skipped: not damage).
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step is not None and step not in steps:
            raise InputError(f"step: {step} is not allowed; {self.directory} has checkpoints at steps {steps}")
        skipped: list[DamagedCheckpointError] = []
        for s in [step] if step is not None else steps[::-1]:
            try:
                state, meta = self.restore(s, prepare(self.read_meta(s)))
            except DamagedCheckpointError as e:
                skipped.append(e)
                continue
            for e in skipped:
                print(f"sparsetrain: {e}; it is kept for inspection and skipped; {using} step {s}",
                      file=sys.stderr)
            return state, meta
        if step is not None:
            others = [s for s in steps if s != step]
            raise DamagedFileError(f"{skipped[0]}; it is kept for inspection; other checkpoints: steps "
                                   f"{others or 'none'}") from skipped[0]
        reasons = "; ".join(f"step {e.step}: {e.reason}" for e in skipped)
        raise DamagedFileError(
            f"no checkpoint in {self.directory} restores (tried steps {[e.step for e in skipped]}; "
            f"{reasons}); they are kept for inspection; restore the run directory from a backup or "
            "start again under another run.name")

    def close(self) -> None:
        self.manager.close()
