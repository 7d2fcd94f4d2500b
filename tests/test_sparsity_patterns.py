"""Mask patterns: balance, determinism, selection rules and the name registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsetrain.sparsity import LAYOUT_BUILDERS, blocks_per_column, layout_to_mask, make_layout

SHAPE, BLOCK = (384, 256), (32, 32)  # 12 x 8 blocks


def _check_valid(layout, density):
    rows = np.asarray(layout.row_indices)
    k = blocks_per_column(layout.n_row_blocks, density)
    assert rows.shape == (layout.n_col_blocks, k)
    assert rows.dtype == np.int32
    assert np.all(np.diff(rows, axis=1) > 0), "sorted and distinct per column"
    assert rows.min() >= 0 and rows.max() < layout.n_row_blocks
    assert layout.density == pytest.approx(k / layout.n_row_blocks)


def _kwargs(name):
    w = jax.random.normal(jax.random.PRNGKey(3), SHAPE)
    return {"key": jax.random.PRNGKey(0), "weight": w}


@pytest.mark.parametrize("name", sorted(set(LAYOUT_BUILDERS) - {"dense"}))
@pytest.mark.parametrize("density", [1 / 12, 1 / 4, 1 / 2, 1.0])
def test_patterns_are_balanced_and_valid(name, density):
    layout = make_layout(name, SHAPE, BLOCK, density, **_kwargs(name))
    assert layout.shape == SHAPE and layout.block == BLOCK
    _check_valid(layout, density)


def test_dense_pattern_stores_everything():
    layout = make_layout("dense", SHAPE, BLOCK, 1.0)
    assert layout.density == 1.0
    assert bool(jnp.all(layout_to_mask(layout)))


@pytest.mark.parametrize("density", [1 / 12, 1 / 4, 5 / 12, 1 / 2])
def test_random_balanced_is_even_per_input_row(density):
    layout = make_layout("random_balanced", SHAPE, BLOCK, density, key=jax.random.PRNGKey(7))
    per_row = np.asarray(layout_to_mask(layout)).sum(axis=1)
    assert per_row.max() - per_row.min() <= 1


def test_random_balanced_depends_on_key_only():
    a = make_layout("random-balanced", SHAPE, BLOCK, 0.25, key=jax.random.PRNGKey(1))
    b = make_layout("random_balanced", SHAPE, BLOCK, 0.25, key=jax.random.PRNGKey(1))
    c = make_layout("random_balanced", SHAPE, BLOCK, 0.25, key=jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a.row_indices, b.row_indices)
    assert not np.array_equal(a.row_indices, c.row_indices)


def test_magnitude_keeps_largest_blocks_per_column():
    rng = np.random.default_rng(0)
    nr, nc = 12, 8
    scale = rng.permutation(nr * nc).reshape(nr, nc).astype(np.float32) + 1.0
    w = np.kron(scale, np.ones(BLOCK, np.float32)) * rng.choice([-1, 1], SHAPE)
    layout = make_layout("magnitude", SHAPE, BLOCK, 0.25, weight=jnp.asarray(w))
    expected = np.sort(np.argsort(-scale, axis=0)[:3].T, axis=1)
    np.testing.assert_array_equal(layout.row_indices, expected)


def test_butterfly_is_deterministic_and_contains_diagonal():
    a = make_layout("butterfly", (512, 512), BLOCK, 5 / 16)
    b = make_layout("butterfly", (512, 512), BLOCK, 5 / 16)
    np.testing.assert_array_equal(a.row_indices, b.row_indices)
    mask = np.asarray(layout_to_mask(a))
    assert mask.diagonal().all()
    # Flat butterfly on 16 blocks: row i pairs with i ^ 1, i ^ 2, i ^ 4, i ^ 8.
    i = np.arange(16)
    for s in range(4):
        assert mask[i ^ (1 << s), i].all()


def test_make_layout_rejects_unknown_pattern_listing_allowed():
    with pytest.raises(ValueError, match="pattern") as err:
        make_layout("diagonal", SHAPE, BLOCK, 0.5)
    for name in LAYOUT_BUILDERS:
        assert name in str(err.value)


def test_make_layout_requires_key_and_weight():
    with pytest.raises(ValueError, match="key"):
        make_layout("random_balanced", SHAPE, BLOCK, 0.5)
    with pytest.raises(ValueError, match="weight"):
        make_layout("magnitude", SHAPE, BLOCK, 0.5)
    with pytest.raises(ValueError, match="weight"):
        make_layout("magnitude", SHAPE, BLOCK, 0.5, weight=jnp.zeros((32, 32)))
    with pytest.raises(ValueError, match="density"):
        make_layout("dense", SHAPE, BLOCK, 0.5)


def test_bad_block_and_density_raise():
    with pytest.raises(ValueError, match="block"):
        make_layout("butterfly", SHAPE, (40, 32), 0.5)
    with pytest.raises(ValueError, match="density"):
        make_layout("butterfly", SHAPE, BLOCK, 0.01)
