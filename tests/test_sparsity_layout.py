"""BlockLayout: validation, mask <-> layout, dense <-> values, pytree and jit behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsetrain.sparsity import (
    blocks_per_column,
    check_block_shape,
    dense_to_values,
    layout_from_mask,
    layout_to_mask,
    random_balanced,
    values_to_dense,
)


def _mask(layout):
    return np.asarray(layout_to_mask(layout))


@pytest.mark.parametrize(
    "shape, block, words",
    [
        ((100, 64), (32, 32), ["bk=32", "100"]),
        ((64, 96), (32, 64), ["bn=64", "96"]),
        ((64, 64), (8, 16), ["bk=8", "16..256"]),
        ((512, 512), (512, 64), ["bk=512", "16..256"]),
    ],
)
def test_check_block_shape_names_argument_and_value(shape, block, words):
    with pytest.raises(ValueError, match="block") as err:
        check_block_shape(shape, block)
    for w in words:
        assert w in str(err.value)


def test_check_block_shape_accepts_rectangular_blocks():
    check_block_shape((96, 256), (48, 128))


@pytest.mark.parametrize("density", [0.0, -0.5, 1.5])
def test_blocks_per_column_rejects_out_of_range(density):
    with pytest.raises(ValueError, match="density"):
        blocks_per_column(8, density)


def test_blocks_per_column_rejects_density_leaving_no_block():
    with pytest.raises(ValueError, match="no block"):
        blocks_per_column(8, 0.05)


@pytest.mark.parametrize("n, d, k", [(8, 1.0, 8), (8, 0.5, 4), (12, 1 / 8, 2), (12, 1 / 16, 1), (32, 1 / 8, 4)])
def test_blocks_per_column_rounds_to_nearest(n, d, k):
    assert blocks_per_column(n, d) == k


def test_mask_roundtrip_and_properties():
    rng = np.random.default_rng(0)
    nr, nc, k = 6, 5, 2
    mask = np.zeros((nr, nc), bool)
    for j in range(nc):
        mask[rng.choice(nr, k, replace=False), j] = True
    layout = layout_from_mask(mask, (16, 32))
    assert layout.shape == (96, 160)
    assert layout.row_indices.dtype == jnp.int32
    assert layout.row_indices.shape == (nc, k)
    assert np.all(np.diff(np.asarray(layout.row_indices), axis=1) > 0)
    assert (layout.n_row_blocks, layout.n_col_blocks, layout.blocks_per_col) == (nr, nc, k)
    assert layout.density == pytest.approx(k / nr)
    assert layout.values_shape == (nc, k, 16, 32)
    np.testing.assert_array_equal(_mask(layout), mask)


def test_layout_from_mask_rejects_unbalanced_columns():
    mask = np.eye(4, dtype=bool)
    mask[0, 1] = True
    with pytest.raises(ValueError, match="block_mask"):
        layout_from_mask(mask, (16, 16))


def test_dense_values_roundtrip_is_masked_weight():
    layout = random_balanced(jax.random.PRNGKey(0), (64, 96), (16, 32), 0.5)
    w = jax.random.normal(jax.random.PRNGKey(1), (64, 96))
    values = dense_to_values(w, layout)
    assert values.shape == layout.values_shape
    block_mask = np.kron(_mask(layout), np.ones((16, 32), bool))
    np.testing.assert_array_equal(values_to_dense(values, layout), np.where(block_mask, w, 0))


def test_layout_is_pytree_with_one_int_leaf():
    layout = random_balanced(jax.random.PRNGKey(0), (64, 64), (16, 16), 0.5)
    leaves, treedef = jax.tree_util.tree_flatten(layout)
    assert len(leaves) == 1 and leaves[0].dtype == jnp.int32
    again = jax.tree_util.tree_unflatten(treedef, leaves)
    assert again.shape == layout.shape and again.block == layout.block


def test_conversions_under_jit_do_not_recompile_when_indices_change():
    shape, block = (64, 96), (16, 32)
    w = jax.random.normal(jax.random.PRNGKey(1), shape)

    traces = []

    @jax.jit
    def roundtrip(w, layout):
        traces.append(1)  # runs once per trace (= compile)
        return values_to_dense(dense_to_values(w, layout), layout), layout_to_mask(layout)

    for seed in range(3):
        layout = random_balanced(jax.random.PRNGKey(seed), shape, block, 0.25)
        dense, mask = roundtrip(w, layout)
        np.testing.assert_array_equal(mask, _mask(layout))
        np.testing.assert_array_equal(dense, np.where(np.kron(mask, np.ones(block, bool)), w, 0))
    assert len(traces) == 1


def test_parameter_and_optimizer_bytes_scale_with_density():
    shape, block = (512, 256), (32, 32)
    dense_bytes = 512 * 256 * 4
    for density in (1 / 8, 1 / 4, 1 / 2):
        layout = random_balanced(jax.random.PRNGKey(0), shape, block, density)
        params = {"values": jnp.zeros(layout.values_shape, jnp.float32), "layout": layout}
        values_bytes = params["values"].nbytes
        index_bytes = layout.row_indices.nbytes
        assert values_bytes == density * dense_bytes
        assert sum(x.nbytes for x in jax.tree_util.tree_leaves(params)) == values_bytes + index_bytes
        opt_state = optax.adam(1e-3).init(params["values"])
        opt_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(opt_state))
        assert opt_bytes <= 2 * values_bytes + 16  # mu, nu and a step count
