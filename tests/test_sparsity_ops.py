"""block_sparse_matmul equals x @ (mask * W), forward and gradients; errors; cost ∝ density.

Both kernels: the pure-JAX one ('jax') and, when it was built, the compiled CPU one ('ffi').
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain.sparsity import (
    block_sparse_matmul,
    dense_to_values,
    matmul_flops,
    random_balanced,
    values_to_dense,
)
from sparsetrain.kernels import ffi
from sparsetrain.kernels.dispatch import use_kernel_backend


def _ffi(*values):
    """A parameter set for the compiled kernel, skipped (with the reason) if it was not built."""
    return pytest.param(*values, marks=pytest.mark.skipif(
        not ffi.AVAILABLE, reason=f"compiled kernel {ffi.DESCRIPTION}"))


BACKENDS = ["jax", _ffi("ffi")]


def _problem(seed, lead, n_rb, n_cb, block, k, dtype=jnp.float32):
    shape = (n_rb * block[0], n_cb * block[1])
    layout = random_balanced(jax.random.PRNGKey(seed), shape, block, k / n_rb)
    kx, kw = jax.random.split(jax.random.PRNGKey(seed + 1))
    x = jax.random.normal(kx, (*lead, shape[0]), jnp.float32).astype(dtype)
    w = jax.random.normal(kw, shape, jnp.float32).astype(dtype)
    return x, w, layout


def _masked(w, layout):
    return values_to_dense(dense_to_values(w, layout), layout)


@functools.partial(jax.jit, static_argnames="backend")
def _sparse_and_grads(x, values, layout, cot, backend="auto"):
    with use_kernel_backend(backend):
        y, vjp = jax.vjp(lambda x, v: block_sparse_matmul(x, v, layout), x, values)
    return (y, *vjp(cot))


@jax.jit
def _dense_and_grads(x, w, cot):
    y, vjp = jax.vjp(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32), x, w)
    return (y, *vjp(cot))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=10, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    n_rb=st.integers(1, 5),
    n_cb=st.integers(1, 4),
    block=st.tuples(st.sampled_from([16, 32]), st.sampled_from([16, 32])),
    k_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_matches_masked_dense_and_gradients(backend, lead, n_rb, n_cb, block, k_frac, seed):
    k = 1 + round(k_frac * (n_rb - 1))  # from one block per column to dense
    x, w, layout = _problem(seed, tuple(lead), n_rb, n_cb, block, k)
    values = dense_to_values(w, layout)
    cot = jax.random.normal(jax.random.PRNGKey(seed + 2), (*lead, layout.shape[1]))
    y, dx, dv = _sparse_and_grads(x, values, layout, cot, backend=backend)
    ry, rdx, rdw = _dense_and_grads(x, _masked(w, layout), cot)
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(layout.shape[0]))
    assert y.shape == (*lead, layout.shape[1]) and y.dtype == x.dtype
    np.testing.assert_allclose(y, ry, **tol)
    np.testing.assert_allclose(dx, rdx, **tol)
    assert dv.shape == layout.values_shape
    np.testing.assert_allclose(dv, dense_to_values(rdw, layout), **tol)


def test_bfloat16_accumulates_in_float32():
    x, w, layout = _problem(0, (4, 8), 8, 3, (32, 16), 3, jnp.bfloat16)
    values = dense_to_values(w, layout)
    cot = jnp.ones((4, 8, layout.shape[1]), jnp.bfloat16)
    y, dx, dv = _sparse_and_grads(x, values, layout, cot)
    assert y.dtype == dx.dtype == dv.dtype == jnp.bfloat16
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    ry, rdx, rdw = _dense_and_grads(f32(x), _masked(f32(w), layout), f32(cot))
    np.testing.assert_allclose(f32(y), ry, rtol=2e-2, atol=0.2)
    np.testing.assert_allclose(f32(dx), rdx, rtol=2e-2, atol=0.2)
    np.testing.assert_allclose(f32(dv), dense_to_values(rdw, layout), rtol=2e-2, atol=0.2)


def test_new_indices_do_not_recompile():
    traces = []

    def counted(x, values, layout):
        traces.append(1)  # runs once per trace (= compile) of the jitted function
        return block_sparse_matmul(x, values, layout)

    f = jax.jit(counted)
    x, w, _ = _problem(0, (16,), 4, 4, (16, 16), 2)
    for seed in range(3):
        layout = random_balanced(jax.random.PRNGKey(seed), w.shape, (16, 16), 0.5)
        values = dense_to_values(w, layout)
        np.testing.assert_allclose(f(x, values, layout), x @ _masked(w, layout), rtol=1e-5, atol=1e-4)
    assert len(traces) == 1


def test_errors_name_the_argument():
    x, w, layout = _problem(0, (8,), 4, 2, (16, 16), 2)
    values = dense_to_values(w, layout)
    with pytest.raises(ValueError, match=r"x: shape \(8, 48\)"):
        block_sparse_matmul(x[:, :48], values, layout)
    with pytest.raises(ValueError, match=r"values: shape"):
        block_sparse_matmul(x, values[:, :1], layout)
    with pytest.raises(ValueError, match="values: dtype bfloat16"):
        block_sparse_matmul(x, values.astype(jnp.bfloat16), layout)
    with pytest.raises(ValueError, match="x: dtype float16"):
        block_sparse_matmul(x.astype(jnp.float16), values.astype(jnp.float16), layout)


def _compiled_flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"]


def test_compiled_flops_scale_with_density():
    """On the pure-JAX kernel: XLA's cost analysis does not see inside the compiled kernel's
    custom call (its products touch stored blocks only by construction, see csrc/kernels.h)."""
    with use_kernel_backend("jax"):
        _check_flops_scale_with_density()


def _check_flops_scale_with_density():
    tokens, shape, block = 64, (256, 256), (32, 32)
    x = jnp.ones((tokens, shape[0]))
    fwd = lambda x, v, l: block_sparse_matmul(x, v, l)  # noqa: E731
    cot = jnp.ones((tokens, shape[1]))

    def fwd_bwd(x, v, layout):  # output and both gradients: 3x the forward FLOPs
        y, vjp = jax.vjp(lambda x, v: block_sparse_matmul(x, v, layout), x, v)
        return (y, *vjp(cot))

    dense_fwd = 2 * tokens * shape[0] * shape[1]
    for density in (1 / 8, 1 / 4, 1 / 2, 1.0):
        layout = random_balanced(jax.random.PRNGKey(0), shape, block, density)
        values = jnp.ones(layout.values_shape)
        assert matmul_flops(tokens, layout) == density * dense_fwd
        f = _compiled_flops(fwd, x, values, layout)
        b = _compiled_flops(fwd_bwd, x, values, layout)
        assert f == pytest.approx(density * dense_fwd, rel=0.15), density
        assert b == pytest.approx(3 * density * dense_fwd, rel=0.15), density


@pytest.mark.parametrize("backend,max_unroll", [("jax", 128), ("jax", 4), _ffi("ffi", 128)])
def test_unbalanced_layout_and_grouped_loops(monkeypatch, backend, max_unroll):
    """Input rows with unequal block counts take the general backward; small unroll limits
    take the fori_loop over unrolled groups (pure JAX). All must equal the masked dense result."""
    from sparsetrain.kernels import block_sparse as ops
    from sparsetrain.sparsity import layout_from_mask

    monkeypatch.setattr(ops, "MAX_UNROLL_DOTS", max_unroll)
    mask = np.zeros((4, 6), bool)
    mask[0, :] = True  # row 0 stored in every column: above the balanced cap of 3
    mask[1, :3] = True
    mask[2, 3:] = True
    for layout in (layout_from_mask(mask, (16, 16)),
                   random_balanced(jax.random.PRNGKey(0), (64, 96), (16, 16), 0.5)):
        x = jax.random.normal(jax.random.PRNGKey(1), (24, 64))
        w = jax.random.normal(jax.random.PRNGKey(2), (64, 96))
        cot = jax.random.normal(jax.random.PRNGKey(3), (24, 96))
        values = dense_to_values(w, layout)
        with use_kernel_backend(backend):
            y, vjp = jax.vjp(lambda x, v: block_sparse_matmul(x, v, layout), x, values)
            dx, dv = vjp(cot)
        ry, rdx, rdw = _dense_and_grads(x, _masked(w, layout), cot)
        np.testing.assert_allclose(y, ry, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(dv, dense_to_values(rdw, layout), rtol=1e-4, atol=1e-3)
