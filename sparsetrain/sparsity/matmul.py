"""`block_sparse_matmul(x, values, layout)`: the public block-sparse product of a BlockLayout.

It checks the operands against the layout, flattens the leading axes and calls the kernel in
`sparsetrain.kernels.block_sparse` (compiled CPU or pure JAX, chosen by
`sparsetrain.kernels.dispatch`). `block_sparse_matmul_reference` is the dense product it is
tested against.
"""

from __future__ import annotations

import jax.numpy as jnp

from sparsetrain.kernels.block_sparse import block_sparse_product
from sparsetrain.sparsity.layout import BlockLayout, values_to_dense

ALLOWED_DTYPES = (jnp.float32, jnp.bfloat16)


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
    y = block_sparse_product(x2, values, rows)
    return y.reshape(*lead, layout.shape[1])


def block_sparse_matmul_reference(x, values, layout: BlockLayout):
    """x @ values_to_dense(values): the dense reference (float32 accumulation)."""
    _check_args(x, values, layout)
    w = values_to_dense(values, layout)
    return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)
