"""Block-sparse matmul y = x @ W for a weight stored as blocks (see layout.py).

Forward, per output block-column j: gather the k input slabs x[:, rows[j]] (T, k*bk) and do one
dense dot with the column's stored blocks (k*bk, bn). Backward, per column: the same gather gives
dvalues[j] = g.T @ dy_j, and dx gets dy_j @ values[j].T added into the k slabs it came from.
Every FLOP touches a stored block, so forward and backward cost scale with density.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from sparsetrain.sparsity.layout import BlockLayout

ALLOWED_DTYPES = (jnp.float32, jnp.bfloat16)
# Column loops are unrolled up to this many columns (beyond it, in groups of it). Unrolled,
# XLA:CPU runs independent column dots concurrently on its threads (a rolled while loop runs
# them one at a time on one core) and its cost analysis counts every column. The price is
# compile time, which grows with the unroll.
MAX_UNROLL = 64
MAX_SLAB_UNROLL = 4


def matmul_flops(tokens: int, layout: BlockLayout) -> int:
    """Forward FLOPs of block_sparse_matmul for `tokens` rows: 2 * tokens * stored weights."""
    return 2 * int(tokens) * layout.nnz


def _check_args(x, values, layout: BlockLayout):
    if not isinstance(layout, BlockLayout):
        raise ValueError(f"layout: {type(layout).__name__} is not allowed; expected BlockLayout")
    if x.ndim < 1 or x.shape[-1] != layout.shape[0]:
        raise ValueError(
            f"x: shape {tuple(x.shape)} is not allowed; expected (..., {layout.shape[0]}) "
            f"for a layout of shape {layout.shape}"
        )
    if tuple(values.shape) != layout.values_shape:
        raise ValueError(
            f"values: shape {tuple(values.shape)} is not allowed; expected {layout.values_shape}"
        )
    allowed = [jnp.dtype(d).name for d in ALLOWED_DTYPES]
    if jnp.dtype(x.dtype).name not in allowed:
        raise ValueError(f"x: dtype {x.dtype} is not allowed; expected one of {allowed}")
    if values.dtype != x.dtype:
        raise ValueError(f"values: dtype {values.dtype} is not allowed; expected x's dtype {x.dtype}")


def _gather(xb, rows_j):
    """x blocks (T, nr, bk), rows (k,) -> (T, k*bk)."""
    g = jnp.take(xb, rows_j, axis=1, mode="clip", unique_indices=True, indices_are_sorted=True)
    return g.reshape(xb.shape[0], -1)


def _forward(x2, values, rows):
    t, _ = x2.shape
    nc, k, bk, bn = values.shape
    xb = x2.reshape(t, -1, bk)
    w = values.reshape(nc, k * bk, bn)

    def column(j, y):
        yj = jnp.dot(_gather(xb, rows[j]), w[j], preferred_element_type=jnp.float32)
        return lax.dynamic_update_slice_in_dim(y, yj.astype(y.dtype), j * bn, axis=1)

    return lax.fori_loop(0, nc, column, jnp.zeros((t, nc * bn), x2.dtype), unroll=min(nc, MAX_UNROLL))


def _backward(x2, values, rows, dy):
    t, n_in = x2.shape
    nc, k, bk, bn = values.shape
    xb = x2.reshape(t, -1, bk)
    w = values.reshape(nc, k * bk, bn)

    def column(dx, j):
        dyj = lax.dynamic_slice_in_dim(dy, j * bn, bn, axis=1)
        dw = jnp.dot(_gather(xb, rows[j]).T, dyj, preferred_element_type=jnp.float32)
        contrib = jnp.dot(dyj, w[j].T, preferred_element_type=jnp.float32)
        def add_slab(i, dx):  # add each bk-wide slab into the input block it came from
            start = rows[j, i] * bk
            old = lax.dynamic_slice_in_dim(dx, start, bk, axis=1)
            new = lax.dynamic_slice_in_dim(contrib, i * bk, bk, axis=1)
            return lax.dynamic_update_slice_in_dim(dx, old + new, start, axis=1)

        dx = lax.fori_loop(0, k, add_slab, dx, unroll=min(k, MAX_SLAB_UNROLL))
        return dx, dw.astype(values.dtype)

    dx, dw = lax.scan(column, jnp.zeros((t, n_in), jnp.float32), jnp.arange(nc), unroll=min(nc, MAX_UNROLL))
    return dx.astype(x2.dtype), dw.reshape(values.shape)


@jax.custom_vjp
def _bsmm(x2, values, rows):
    return _forward(x2, values, rows)


def _bsmm_fwd(x2, values, rows):
    return _forward(x2, values, rows), (x2, values, rows)


def _bsmm_bwd(res, dy):
    x2, values, rows = res
    dx, dw = _backward(x2, values, rows, dy)
    return dx, dw, None


_bsmm.defvjp(_bsmm_fwd, _bsmm_bwd)


def block_sparse_matmul(x, values, layout: BlockLayout):
    """y = x @ W where W is block-sparse.

    Args:
      x: (..., in_features), float32 or bfloat16.
      values: (n_col_blocks, k, bk, bn) stored blocks, same dtype as x.
      layout: BlockLayout of W; its row_indices may be traced.

    Returns:
      (..., out_features) in x's dtype, accumulated in float32. Differentiable in x and values;
      the values gradient exists only at stored blocks.
    """
    _check_args(x, values, layout)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, layout.shape[0])
    rows = layout.row_indices.astype(jnp.int32)
    y = _bsmm(x2, values, rows)
    return y.reshape(*lead, layout.shape[1])


def block_sparse_matmul_reference(x, values, layout: BlockLayout):
    """x @ values_to_dense(values): the dense reference (float32 accumulation)."""
    from sparsetrain.sparsity.layout import values_to_dense

    _check_args(x, values, layout)
    w = values_to_dense(values, layout)
    return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)
