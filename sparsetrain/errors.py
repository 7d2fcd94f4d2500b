"""Errors a run reports to the user (importable without JAX or Orbax, so the CLI starts fast).

Every error the `sparsetrain` command expects is a `SparsetrainError`: the CLI prints it as one
line, `sparsetrain: KIND: MESSAGE`, and exits with its `exit_code` (no traceback unless
`--debug`). The exit codes, also listed in the README:

    0  success
    1  an unexpected error (a bug: rerun with --debug for the traceback)
    2  bad input: a recipe field, a command-line argument, a path, a checkpoint of another model
    3  training stopped: non-finite loss or gradient (run.nonfinite)
    4  a write failed (full disk, lost mount): what was saved before is kept
    5  a run's files are damaged (no checkpoint restores, a corrupt tokenizer or recipe)
    6  another process of a multi-process run died or stopped answering
  130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import errno


class SparsetrainError(Exception):
    """Base of the errors the CLI reports as one line with a documented exit status."""

    exit_code = 1
    kind = "error"


class ConfigError(SparsetrainError, ValueError):
    """A recipe field has a value that is not allowed."""

    exit_code = 2
    kind = "recipe error"


def require(ok: bool, where: str, value, allowed: str) -> None:
    """Raise ConfigError("WHERE: VALUE is not allowed; allowed: ALLOWED") unless `ok`."""
    if not ok:
        raise ConfigError(f"{where}: {value!r} is not allowed; allowed: {allowed}")


class InputError(SparsetrainError, ValueError):
    """A command-line argument or path that cannot be used (a run directory that does not exist,
    a recipe given where a run is expected, ...)."""

    exit_code = 2
    kind = "input error"


class CheckpointMismatchError(SparsetrainError, ValueError):
    """A checkpoint's arrays do not fit the recipe's model (another shape, another optimizer)."""

    exit_code = 2
    kind = "checkpoint error"


class TrainingStoppedError(SparsetrainError, FloatingPointError):
    """A non-finite loss or gradient stopped the run (run.nonfinite); earlier checkpoints kept."""

    exit_code = 3
    kind = "training stopped"


class CheckpointSaveError(SparsetrainError, OSError):
    """A checkpoint could not be written (full disk, lost mount); the earlier ones are intact."""

    exit_code = 4
    kind = "checkpoint error"


class WriteError(SparsetrainError, OSError):
    """A run file (tokenizer, recipe, metrics, summary) could not be written; nothing half-written
    is left and what existed before is unchanged."""

    exit_code = 4
    kind = "write error"


class DamagedFileError(SparsetrainError, OSError):
    """A file a run wrote earlier cannot be read (truncated, deleted, garbled)."""

    exit_code = 5
    kind = "damaged file"


class ProcessLostError(SparsetrainError, RuntimeError):
    """Another process of a multi-process run died or stopped answering."""

    exit_code = 6
    kind = "distributed error"


def is_disk_full(e: BaseException | None) -> bool:
    """Whether `e`, or an exception it was raised from, says the disk or quota is full."""
    while e is not None:
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or \
                "No space left" in str(e) or "Disk quota" in str(e) or "File too large" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


class DamagedCheckpointError(DamagedFileError):
    """One checkpoint cannot be restored: an item file is missing, truncated or garbled (not a
    checkpoint of another model: that is CheckpointMismatchError). `step` and `reason` (one line)
    let a caller skip it and name it."""

    def __init__(self, directory, step: int, reason: str):
        self.directory, self.step, self.reason = directory, step, reason
        super().__init__(f"checkpoint step {step} in {directory} is damaged ({reason})")
