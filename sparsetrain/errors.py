"""Errors a run reports to the user (importable without JAX or Orbax, so the CLI starts fast)."""

from __future__ import annotations


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (full disk, lost mount); the earlier ones are intact."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays do not fit the recipe's model (another shape, another optimizer)."""
