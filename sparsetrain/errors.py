"""Errors a run reports to the user (importable without JAX or Orbax, so the CLI starts fast)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A recipe field has a value that is not allowed."""


def require(ok: bool, where: str, value, allowed: str) -> None:
    """Raise ConfigError("WHERE: VALUE is not allowed; allowed: ALLOWED") unless `ok`."""
    if not ok:
        raise ConfigError(f"{where}: {value!r} is not allowed; allowed: {allowed}")


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (full disk, lost mount); the earlier ones are intact."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays do not fit the recipe's model (another shape, another optimizer)."""
