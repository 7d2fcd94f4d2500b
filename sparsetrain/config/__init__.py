"""Recipes: the typed sections of a YAML recipe (recipe.py), model shapes and presets
(presets.py), range and consistency checks (validation.py) and loading (loading.py).

The names a caller needs are importable from `sparsetrain.config` directly.
"""

from sparsetrain.config.presets import PRESETS, ModelShape, linear_shapes
from sparsetrain.config.recipe import (
    LINEAR_KINDS, STEP_BACKENDS, Config, ConfigError, DataConfig, ModelConfig, OptimizerConfig, RunConfig,
    SparsityConfig, apply_override, describe_fields, from_dict, save_recipe,
)
from sparsetrain.config.validation import check_trainable, validate
from sparsetrain.config.loading import load_recipe

__all__ = [
    "LINEAR_KINDS", "PRESETS", "STEP_BACKENDS", "Config", "ConfigError", "DataConfig", "ModelConfig", "ModelShape",
    "OptimizerConfig", "RunConfig", "SparsityConfig", "apply_override", "check_trainable",
    "describe_fields", "from_dict", "linear_shapes", "load_recipe", "save_recipe", "validate",
]
