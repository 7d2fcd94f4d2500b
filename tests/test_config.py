"""Recipes: loading, overrides, and a clear error for each kind of bad field."""

from __future__ import annotations

import pytest
import yaml

from sparsetrain.config import (
    PRESETS, Config, ConfigError, apply_override, describe_fields, from_dict, load_recipe,
)
from sparsetrain.config import linear_shapes
from sparsetrain.sparsity.resolve import resolve_sparsity
from tests.conftest import tiny_recipe


def test_defaults_and_overrides_types(text_corpus, tmp_path):
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus),
                      ["sparsity.density=0.5", "run.steps=7", "model.remat=true", "sparsity.qkv.block=32"])
    assert cfg.sparsity.density == 0.5 and cfg.run.steps == 7 and cfg.model.remat is True
    resolved = resolve_sparsity(cfg.sparsity, linear_shapes(cfg.shape()))
    assert (resolved["qkv"].density, resolved["qkv"].block) == (0.5, 32)
    assert (resolved["mlp_up"].density, resolved["mlp_up"].block) == (0.5, 16)
    assert cfg.shape().d_model == 64 and cfg.shape().d_ff == 256


def test_int_accepted_for_float_but_not_bool_for_int():
    cfg = from_dict(Config, {"optimizer": {"lr": 1}})
    assert isinstance(cfg.optimizer.lr, float)
    with pytest.raises(ConfigError, match=r"run.steps: True has type bool; allowed: int"):
        from_dict(Config, {"run": {"steps": True}})


def test_exponent_floats_without_a_dot_are_floats():
    """YAML 1.1 reads `1e-3` as a string; a float field takes it as the number users mean."""
    assert load_recipe(None, ["optimizer.lr=1e-3"], check_data=False).optimizer.lr == 1e-3
    assert from_dict(Config, {"optimizer": {"lr": "3E-4"}}).optimizer.lr == 3e-4
    with pytest.raises(ConfigError, match=r"optimizer.lr: 'nan' has type str; allowed: float"):
        from_dict(Config, {"optimizer": {"lr": "nan"}})


@pytest.mark.parametrize("override, message", [
    ("model.widht=3", r"model.widht: unknown field; allowed fields of 'model': preset, n_layers"),
    ("run.steps=ten", r"run.steps: 'ten' has type str; allowed: int"),
    ("sparsity.block=48", r"sparsity.block: 48 is not allowed; allowed: a block size dividing the qkv weight shape \(64, 192\)"),
    ("sparsity.density=1.5", r"sparsity.density: 1.5 is not allowed; allowed: a fraction in \(0, 1\]"),
    ("sparsity.density=0.01", r"sparsity.density: 0.01 is not allowed; allowed: >= 0.25"),
    ("sparsity.mlp_up.density=0", r"sparsity.mlp_up.density: 0.0 is not allowed"),
    ("sparsity.block=512", r"sparsity.block: 512 is not allowed; allowed: an integer block size in 16..256"),
    ("sparsity.pattern=diagonal", r"sparsity.pattern: 'diagonal' is not allowed; allowed: dense, random_balanced"),
    ("data.seq_len=64", r"data.seq_len: 64 is not allowed; allowed: <= model context 32"),
    ("data.val_fraction=1.0", r"data.val_fraction: 1.0 is not allowed"),
    ("model.n_heads=3", r"model.n_heads: 3 is not allowed; allowed: a divisor of model.d_model=64"),
    ("model.preset=gpt5", r"model.preset: 'gpt5' is not allowed; allowed: tiny"),
    ("run.wandb=cloud", r"run.wandb: 'cloud' is not allowed; allowed: disabled, offline, online"),
    ("data.dataset=/no/such/file.txt", r"data.dataset: '/no/such/file.txt' is not allowed; allowed: 'shakespeare', an existing"),
    ("data.tokenizer=/no/tokenizer.json", r"data.tokenizer: '/no/tokenizer.json' is not allowed"),
    ("optimizer.beta2=1.0", r"optimizer.beta2: 1.0 is not allowed; allowed: a float in \[0, 1\)"),
    ("run.backend=tpu", r"run.backend: 'tpu' is not allowed; allowed: xla"),
    ("sparsity", r"--set 'sparsity': expected KEY=VALUE"),
])
def test_bad_fields_name_field_value_and_allowed(text_corpus, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(tiny_recipe(tmp_path, text_corpus), [override])


def test_missing_and_invalid_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("model: 3")
    with pytest.raises(ConfigError, match="model: 3 has type int"):
        load_recipe(bad)


def test_override_creates_nested_keys():
    raw = {}
    apply_override(raw, "sparsity.qkv.density=0.25")
    apply_override(raw, "run.out_dir=null")
    assert raw == {"sparsity": {"qkv": {"density": 0.25}}, "run": {"out_dir": None}}


def test_every_field_is_documented():
    lines = describe_fields()
    assert any(l.strip().startswith("sparsity.qkv.density") for l in lines)
    assert all("# " in l and not l.rstrip().endswith("# ") for l in lines if l.startswith("  "))


def test_bundled_recipes_load():
    import glob
    paths = sorted(glob.glob("recipes/*.yaml"))
    assert len(paths) >= 4
    for p in paths:
        cfg = load_recipe(p, check_data=False)
        assert cfg.model.preset in PRESETS
        assert yaml.safe_load(open(p))["run"]["name"] == cfg.run.name


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_floats_are_refused(value):
    with pytest.raises(ConfigError, match="optimizer.lr: .* is not allowed; allowed: a finite number"):
        from_dict(Config, {"optimizer": {"lr": yaml.safe_load(value)}})
