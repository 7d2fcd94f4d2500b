"""Fused element-wise pieces (kernels/fused_ops.py) against plain autodiff, alone and in the GPT."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsetrain.config import Config, from_dict, validate
from sparsetrain.kernels import ffi, fused_ops
from sparsetrain.models import gpt
from sparsetrain.models.gpt import GPTSpec, build_model
from sparsetrain.training.step import ModelFunctions


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_bias_gelu_matches_jax_gelu_and_its_gradient():
    y, b, g = _normal(0, (4, 16, 96), 3.0), _normal(1, (96,)), _normal(2, (4, 16, 96))
    ref = lambda y, b: jax.nn.gelu(y + b, approximate=True)
    np.testing.assert_allclose(fused_ops.bias_gelu(y, b), ref(y, b), rtol=1e-6, atol=1e-6)
    got = jax.vjp(fused_ops.bias_gelu, y, b)[1](g)
    want = jax.vjp(ref, y, b)[1](g)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)  # sums of 64 terms


def test_residual_gradient_barrier_is_identity_and_keeps_nonfinite_gradients():
    x = _normal(3, (2, 8, 16))
    f = lambda x: jnp.sum(jnp.sin(fused_ops.residual_gradient_barrier(jnp.cos(x))) ** 2)
    g = lambda x: jnp.sum(jnp.sin(jnp.cos(x)) ** 2)
    np.testing.assert_array_equal(f(x), g(x))
    np.testing.assert_allclose(jax.jit(jax.grad(f))(x), jax.grad(g)(x), rtol=1e-6, atol=1e-7)
    nan_ct = jnp.full(x.shape, jnp.nan).at[0, 0, 0].set(jnp.nan)
    out = jax.vjp(fused_ops.residual_gradient_barrier, x)[1](nan_ct)[0]
    assert not np.isfinite(np.asarray(out)).any()


def test_head_cross_entropy_matches_optax_loss_and_gradients():
    x, wte = _normal(5, (48, 32)), _normal(6, (70, 32), 0.5)
    targets = jnp.asarray(np.random.default_rng(7).integers(0, 70, 48), jnp.int32)
    ref = lambda x, w: optax.softmax_cross_entropy_with_integer_labels(x @ w.T, targets).mean()
    fused = lambda x, w: fused_ops.head_cross_entropy(x, w, targets)
    np.testing.assert_allclose(fused(x, wte), ref(x, wte), rtol=1e-6)
    # closed form at zero weights: every logit equal, loss = log(vocab)
    np.testing.assert_allclose(fused(x, jnp.zeros_like(wte)), np.log(70), rtol=1e-6)
    for got, want in zip(jax.grad(fused, (0, 1))(x, wte), jax.grad(ref, (0, 1))(x, wte)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gpt_loss_and_gradients_equal_the_unfused_model(monkeypatch):
    """Block-sparse linears (the dense ones share every fused piece); with the compiled LayerNorm
    and bias-GELU kernels when the library is built."""
    raw = {"model": {"preset": "tiny", "n_layers": 2, "d_model": 64, "n_heads": 2, "context": 16},
           "sparsity": {"pattern": "random_balanced", "density": 0.5, "block": 16},
           "data": {"vocab_size": 300, "seq_len": 16, "batch_size": 2}}
    cfg = from_dict(Config, raw)
    validate(cfg, check_data=False)
    fns = ModelFunctions(build_model(GPTSpec.from_config(cfg), seed=0))
    params, indices = fns.initial()
    params = jax.tree.map(lambda p: p + _normal(4, p.shape, 0.02), params)  # non-zero biases
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 300)
    batch = {"tokens": tokens, "targets": jnp.roll(tokens, -1, axis=1)}

    def loss_grad():
        lowered = jax.jit(jax.value_and_grad(fns.loss)).lower(params, indices, batch)
        return lowered.compile()(params, indices, batch), lowered.as_text()

    (fused_loss, fused_grads), hlo = loss_grad()
    assert fused_ops.cpu_fusions()
    if ffi.AVAILABLE:  # LayerNorm and bias-GELU by the compiled kernels (kernels/norm_gelu.py)
        for target in ("sparsetrain_add_layer_norm_forward", "sparsetrain_layer_norm_backward",
                       "sparsetrain_bias_gelu_backward"):
            assert target in hlo
    monkeypatch.setattr(gpt, "cpu_fusions", lambda: False)  # the plain path: autodiff of jnp ops
    monkeypatch.setattr(fused_ops, "cpu_fusions", lambda: False)
    (ref_loss, ref_grads), ref_hlo = loss_grad()
    assert "sparsetrain_layer_norm" not in ref_hlo and "sparsetrain_bias_gelu" not in ref_hlo
    np.testing.assert_allclose(fused_loss, ref_loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
