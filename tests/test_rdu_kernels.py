"""Fused kernels visible in the jaxpr, lowered as their own kernel, differentiable."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdu_xla_backend.workload import kernels
from rdu_xla_backend.workload.lowering import lower


def dense(x, w, layout):
    return x @ (w * layout)


def test_fused_linear_is_one_kernel_and_differentiable():
    linear = kernels.fused_linear(dense, jax.nn.relu)
    x, w = jnp.ones((8, 16)), jnp.arange(16 * 4, dtype=jnp.float32).reshape(16, 4) / 64
    mask, b = jnp.ones((16, 4)), jnp.zeros(4)
    f = lambda w: linear(x, w, mask, b).sum() + jnp.sum(w ** 2)
    assert "rdu_kernel:block_sparse_linear" in str(jax.make_jaxpr(f)(w))
    ref = lambda w: jax.nn.relu(dense(x, w, mask) + b).sum() + jnp.sum(w ** 2)
    np.testing.assert_allclose(jax.grad(f)(w), jax.grad(ref)(w), rtol=1e-6)
    g = lower(f, w)
    assert any(k.name.startswith("block_sparse_linear") for k in g.kernels)
    assert lower(ref, w).flops == pytest.approx(g.flops)
    with pytest.raises(ValueError):
        kernels.fused("bad name", dense)
