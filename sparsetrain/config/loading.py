"""Loading a recipe: YAML file -> `--set` overrides -> typed dataclasses -> validation."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from sparsetrain.config.recipe import Config, ConfigError, apply_override, from_dict
from sparsetrain.config.validation import validate


def load_recipe(path: str | os.PathLike | None, overrides: list[str] = (), check_data: bool = True) -> Config:
    """Load a YAML recipe (or defaults when `path` is None), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe: file {str(p)!r} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:  # garbled bytes are not text at all
            raise ConfigError(f"recipe {str(p)!r} is not valid YAML: {' '.join(str(e).split())}") from None
    for o in overrides:
        apply_override(raw, o)
    cfg = from_dict(Config, raw)
    validate(cfg, check_data=check_data)
    return cfg
