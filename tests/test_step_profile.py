"""The step profile's attribution (benchmarks/step_profile.py) and the sparse optimizer state."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sparsetrain.config import Config, from_dict, validate
from sparsetrain.models.gpt import GPTSpec, abstract_model
from sparsetrain.training.optim import make_optimizer
from sparsetrain.training.step import ModelFunctions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_profile  # noqa: E402


def test_ops_are_mapped_to_components_by_their_innermost_scope():
    def f(w, x):
        with jax.named_scope("linear"):
            y = x @ w
        with jax.named_scope("residual"):
            y = y + x
        with jax.named_scope("optimizer"):
            with jax.named_scope("linear"):  # innermost wins
                z = jnp.tanh(y) @ w
        return jnp.sum(z * z)

    w, x = jnp.ones((16, 16)), jnp.ones((8, 16))
    text = jax.jit(jax.grad(f)).lower(w, x).compile().as_text()
    comps = step_profile.op_components(text)
    assert set(comps.values()) <= {"linears", "elementwise"}
    assert "linears" in comps.values()
    dots = [name for name, line in ((n, next(l for l in text.splitlines() if f"%{n} = " in l))
                                    for n in comps) if " dot(" in line]
    assert dots and all(comps[d] == "linears" for d in dots)


def test_concurrent_ops_share_the_wall_time():
    # a: 0-10 alone 0-4, with b 4-8, alone 8-10; c: 20-30 alone; gap 10-20 is nobody's
    events = [(0, 10, "linears"), (4, 8, "attention"), (20, 30, "linears")]
    got = step_profile._attribute(events)
    assert got == {"linears": 4 + 2 + 2 + 10, "attention": 2}


def test_amdahl_limit_of_a_step_whose_linears_are_half():
    dense = {"step_s": 2.0, "components_s": {"linears": 1.0}}
    sparse = {"step_s": 1.5, "components_s": {"linears": 0.5}}
    limits = step_profile.amdahl(dense, sparse, 0.125)
    np.testing.assert_allclose(limits["limit"], 2.0 / (1.0 + 0.125))
    np.testing.assert_allclose(limits["measured"], 2.0 / 1.5)
    np.testing.assert_allclose(limits["sparse_linears_over_ideal"], 0.5 / 0.125)


def test_sparse_optimizer_state_holds_stored_blocks_only():
    raw = {"model": {"preset": "tiny"},
           "sparsity": {"pattern": "random_balanced", "density": 0.125, "block": 32},
           "data": {"vocab_size": 512, "seq_len": 64, "batch_size": 2}}
    cfg = from_dict(Config, raw)
    validate(cfg, check_data=False)
    fns = ModelFunctions(abstract_model(GPTSpec.from_config(cfg)))
    params, _ = fns.initial()
    tx, _ = make_optimizer(cfg.optimizer, 100)
    state = jax.eval_shape(tx.init, params)
    param_shapes = {leaf.shape for leaf in jax.tree.leaves(params)}
    assert {leaf.shape for leaf in jax.tree.leaves(state)} <= param_shapes | {()}
    n_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    assert sum(leaf.size for leaf in jax.tree.leaves(state)) <= 2 * n_params + 8  # mu, nu, counts
