"""Llama-style models: published parameter counts from abstract shapes, RoPE, GQA, recipe checks."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsetrain.cli import main
from sparsetrain.config import Config, ConfigError, from_dict, load_recipe
from sparsetrain.models.accounting import count_params, dense_param_count
from sparsetrain.models.family import abstract_model, build_model, model_spec
from sparsetrain.models.kv_cache import CachedDecoder
from sparsetrain.models.llama import Llama, apply_rotary, rotary_angles

# Published sizes: Llama 2 paper / model card (6.74B), Llama 3.1 model cards (8.03B, 70.6B,
# 405.9B), Mistral 7B v0.1 (7.24B).
PUBLISHED = {"llama2-7b": 6.74e9, "llama3.1-8b": 8.03e9, "llama3.1-70b": 70.6e9,
             "llama3.1-405b": 405.9e9, "mistral-7b": 7.24e9}


def tiny_config(**model) -> Config:
    return from_dict(Config, {"model": {"preset": "llama-tiny", "context": 16, **model},
                              "data": {"vocab_size": 300, "seq_len": 16}})


@pytest.mark.parametrize("preset", list(PUBLISHED))
def test_preset_parameter_count_matches_published_size(preset):
    cfg = load_recipe(f"recipes/{preset}.yaml", check_data=False)
    spec = model_spec(cfg)
    model = abstract_model(spec)  # ShapeDtypeStructs only: a 405B model in well under a second
    assert isinstance(model, Llama) and isinstance(model.head.get_value(), jax.ShapeDtypeStruct)
    stored, indices = count_params(model)
    assert indices == 0 and stored == dense_param_count(spec)
    assert abs(stored / PUBLISHED[preset] - 1) < 0.01, (preset, stored)


def test_forward_is_causal_with_grouped_query_projection_and_no_biases():
    spec = model_spec(tiny_config())
    s = spec.shape
    assert (s.n_heads, s.kv_heads, s.head_dim) == (4, 2, 16)
    model = build_model(spec, seed=0)
    assert model.layers.qkv.kernel.get_value().shape == (2, 64, (4 + 2 * 2) * 16)
    assert model.layers.mlp_up.kernel.get_value().shape == (2, 64, 2 * 128)
    assert not hasattr(model.layers.qkv, "bias") and model.head.get_value().shape == (64, 300)
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 300)
    changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % 300)
    logits, out = jax.jit(lambda t: jax.vmap(model)(t))(jnp.stack([tokens, changed]))
    assert logits.shape == (2, 16, 300) and logits.dtype == jnp.float32
    np.testing.assert_allclose(out[:, :10], logits[:, :10], atol=1e-5)
    assert not np.allclose(out[:, 10:], logits[:, 10:])


def test_rotary_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 1, 16), np.float32)
    k = rng.standard_normal((1, 1, 1, 16), np.float32)

    @jax.jit
    def score(m, n):
        cq, sq = rotary_angles(jnp.array([m]), 16, 500000.0)
        ck, sk = rotary_angles(jnp.array([n]), 16, 500000.0)
        return jnp.sum(apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk))

    assert float(score(7, 3)) == pytest.approx(float(score(1007, 1003)), rel=1e-4, abs=1e-4)
    assert float(score(0, 0)) == pytest.approx(float(np.sum(q * k)), rel=1e-5)
    assert abs(float(score(7, 3)) - float(score(7, 5))) > 1e-3


def test_block_sparse_linears_store_fewer_parameters():
    dense = model_spec(tiny_config())
    sparse = model_spec(from_dict(Config, {
        "model": {"preset": "llama-tiny", "context": 16}, "data": {"vocab_size": 300, "seq_len": 16},
        "sparsity": {"pattern": "random_balanced", "density": 0.5, "block": 16}}))
    model = abstract_model(sparse)
    stored, indices = count_params(model)
    linear = sum(lin.n_in * lin.n_out for _, lin in dense.linears) * dense.shape.n_layers
    assert dense_param_count(sparse) == dense_param_count(dense)
    assert dense_param_count(dense) - stored == linear // 2 and indices > 0
    dec = CachedDecoder(model)  # traced with abstract weights: the sparse forward is well formed
    logits = jax.eval_shape(lambda p, i, t: dec.model(p, i)(t), *dec.initial(),
                            jax.ShapeDtypeStruct((2, 16), jnp.int32))
    assert logits.shape == (2, 16, 300)


@pytest.mark.parametrize("raw, message", [
    ({"model": {"preset": "llama3.1-8b"}},
     r"data.vocab_size: 2048 is not allowed; allowed: 128256 \(the tokenizer vocabulary of "
     r"model.preset='llama3.1-8b'\)"),
    ({"model": {"preset": "llama-tiny", "n_kv_heads": 3}},
     r"model.n_kv_heads: 3 is not allowed; allowed: a divisor of model.n_heads=4"),
    ({"model": {"preset": "tiny", "n_kv_heads": 2}},
     r"model.n_kv_heads: 2 is not allowed; allowed: null for the GPT preset 'tiny'"),
    ({"model": {"preset": "llama-tiny"}, "sparsity": {"pattern": "random_balanced", "block": 48,
                                                       "density": 0.5}},
     r"sparsity.block: 48 is not allowed; allowed: a block size dividing the qkv weight shape \(64, 128\)"),
])
def test_llama_recipe_fields_are_checked(raw, message):
    from sparsetrain.config import validate

    with pytest.raises(ConfigError, match=message):
        validate(from_dict(Config, raw), check_data=False)


def test_train_refuses_llama_before_building_anything(tmp_path):
    from sparsetrain.training.loop import train

    cfg = tiny_config()
    cfg.run.out_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"model.preset: 'llama-tiny' is not allowed; allowed: a "
                                          r"GPT preset for training \(tiny, "):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_info_of_the_405b_recipe(capsys):
    assert main(["info", "recipes/llama3.1-405b.yaml", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "llama" and info["kv_heads"] == 8 and info["d_ff"] == 53248
    assert abs(info["params_dense"] / 405.9e9 - 1) < 0.01
    assert info["weight_bytes"] == 4 * info["params_stored"]
