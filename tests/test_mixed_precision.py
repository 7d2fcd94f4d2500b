"""model.dtype bfloat16 is mixed precision: bfloat16 matmuls, float32 master weights, AdamW
moments and gradients."""

import jax
import jax.numpy as jnp
import pytest

from sparsetrain.config import ConfigError, from_dict, Config
from sparsetrain.training.step import build_setup
from sparsetrain.config import validate


def _recipe(dtype: str) -> Config:
    return from_dict(Config, {
        "model": {"preset": "tiny", "n_layers": 1, "d_model": 64, "n_heads": 2, "context": 16,
                  "dtype": dtype},
        "sparsity": {"pattern": "random_balanced", "density": 0.5, "block": 16},
        "data": {"vocab_size": 300, "seq_len": 16, "batch_size": 2},
        "run": {"steps": 2, "wandb": "disabled"},
    })


def _float_dtypes(tree) -> set[str]:
    return {str(a.dtype) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)}


def test_bfloat16_recipe_keeps_float32_master_weights_and_moments():
    cfg = _recipe("bfloat16")
    validate(cfg, check_data=False)
    setup = build_setup(cfg, vocab_size=300, abstract=True)
    assert _float_dtypes(setup.state["params"]) == {"float32"}
    assert _float_dtypes(setup.state["opt_state"]) == {"float32"}
    batch = {"tokens": jnp.zeros((2, 16), jnp.int32), "targets": jnp.zeros((2, 16), jnp.int32)}
    grad_fn = jax.grad(setup.fns.loss)
    grads = jax.eval_shape(grad_fn, setup.state["params"], setup.state["indices"], batch)
    assert _float_dtypes(grads) == {"float32"}
    jaxpr = jax.make_jaxpr(grad_fn)(setup.state["params"], setup.state["indices"], batch)
    text = str(jaxpr)
    # The block-sparse named calls and the dense dots inside the layers take bfloat16 operands.
    assert "block_sparse_matmul_forward" in text and "bf16[32,64]" in text


def test_compute_dtype_is_validated():
    with pytest.raises(ConfigError, match="model.dtype"):
        validate(_recipe("float16"), check_data=False)
