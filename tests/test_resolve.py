"""`resolve_sparsity`: each linear kind's block, stored and final blocks per column, from the
recipe's sparsity section and the linear shapes, against hand-computed values."""

import numpy as np
import pytest

from sparsetrain.config import Config, from_dict, linear_shapes
from sparsetrain.sparsity.resolve import resolve_sparsity

SHAPES = {"qkv": (256, 768), "attn_out": (256, 256), "mlp_up": (256, 1024), "mlp_down": (1024, 256)}


def section(**fields):
    return from_dict(Config, {"sparsity": fields}).sparsity


def test_defaults_and_per_kind_overrides():
    r = resolve_sparsity(section(pattern="random_balanced", density=0.25, block=32,
                                 mlp_down={"density": 0.5, "block": 64}), SHAPES)
    assert (r["qkv"].density, r["qkv"].block, r["qkv"].k_stored) == (0.25, 32, 2)  # 256/32 = 8 rows
    assert (r["mlp_down"].density, r["mlp_down"].block, r["mlp_down"].k_stored) == (0.5, 64, 8)
    assert all(k.k_stored == k.k_final for k in r.values())


def test_dense_pattern_is_dense_whatever_the_density():
    r = resolve_sparsity(section(pattern="dense", density=0.25), SHAPES)
    assert all(k.density == 1.0 and not k.sparse for k in r.values())


def test_gradual_stores_the_initial_density_and_ends_at_the_final_one():
    s = section(pattern="random_balanced", density=0.125, block=32, flow="gradual", initial_density=0.5)
    stored, final = resolve_sparsity(s, SHAPES), resolve_sparsity(s, SHAPES, stored=False)
    for kind, k in stored.items():
        rows = SHAPES[kind][0] // 32
        assert k.k_stored == round(rows * 0.5) and k.k_final == round(rows * 0.125)
        assert final[kind].density == 0.125 and final[kind].k_stored == k.k_final


def test_gradual_from_dense_stays_block_sparse():
    s = section(pattern="random_balanced", density=0.25, block=64, flow="gradual", initial_density=1.0)
    k = resolve_sparsity(s, SHAPES)["attn_out"]  # 4 block rows
    assert k.sparse and k.k_stored == 4 and k.k_final == 1


def test_erk_keeps_the_global_density_and_favours_small_weights():
    shapes = linear_shapes(from_dict(Config, {"model": {"preset": "small-30m"}}).shape())
    r = resolve_sparsity(section(pattern="random_balanced", density=0.25, distribution="erk"), shapes)
    sizes = {kind: n_in * n_out for kind, (n_in, n_out) in shapes.items()}
    mean = sum(r[k].density * sizes[k] for k in shapes) / sum(sizes.values())
    assert mean == pytest.approx(0.25)
    # ERK: density proportional to (n_in + n_out) / (n_in * n_out) below 1
    ratio = {k: r[k].density * sizes[k] / sum(shapes[k]) for k in shapes if r[k].density < 1}
    assert np.ptp(list(ratio.values())) == pytest.approx(0.0, abs=1e-12)
