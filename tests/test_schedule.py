"""Sparse training flows: ERK, prune/regrow mechanics, gradual pruning, conversions, no recompiles."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsetrain.config import ConfigError, linear_shapes, load_recipe
from sparsetrain.models.gpt import make_layouts
from sparsetrain.sparsity.convert import convert_state
from sparsetrain.sparsity.distribution import erk_densities
from sparsetrain.sparsity.resolve import requested_density, resolve_sparsity
from sparsetrain.sparsity.schedule import (
    cubic_density, map_block_leaves, prune_regrow_flow, regrow_columns, sparse_kinds)
from sparsetrain.training.tracking import read_jsonl
from sparsetrain.training.loop import train
from sparsetrain.training.start import restore_run
from sparsetrain.training.step import build_setup
from tests.conftest import tiny_recipe

SPARSE = {"pattern": "random_balanced", "density": 0.25, "block": 16}


def test_erk_densities_average_to_the_global_density():
    from sparsetrain.config import ModelShape

    shapes = linear_shapes(ModelShape(12, 768, 12, 1024))
    sizes = {k: a * b for k, (a, b) in shapes.items()}
    for target in (0.05, 0.125, 0.5, 0.9):
        d = erk_densities(shapes, target)
        assert all(0 < v <= 1 for v in d.values())
        assert sum(d[k] * sizes[k] for k in d) / sum(sizes.values()) == pytest.approx(target, rel=1e-12)
        assert d["attn_out"] > d["qkv"] > d["mlp_up"] == pytest.approx(d["mlp_down"])
    assert erk_densities(shapes, 0.9)["attn_out"] == 1.0  # clipped, the rest absorb the budget


def test_erk_recipe_resolves_per_kind_densities(text_corpus, tmp_path):
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus, sparsity={**SPARSE, "distribution": "erk",
                                                                   "density": 0.375}))
    shapes = linear_shapes(cfg.shape())
    dens = {k: requested_density(cfg.sparsity, k, shapes)[0] for k in shapes}
    assert {k: lin.density for k, lin in resolve_sparsity(cfg.sparsity, shapes).items()} == dens
    assert dens == pytest.approx(erk_densities(shapes, 0.375))
    with pytest.raises(ConfigError, match="sparsity.qkv.density: 0.5 is not allowed.*erk"):
        load_recipe(tiny_recipe(tmp_path, text_corpus, sparsity={**SPARSE, "distribution": "erk",
                                                                 "qkv": {"density": 0.5}}))


def test_cubic_schedule_endpoints():
    assert float(cubic_density(0, 1.0, 0.125, 10, 50)) == 1.0
    assert float(cubic_density(50, 1.0, 0.125, 10, 50)) == 0.125
    mid = float(cubic_density(30, 1.0, 0.125, 10, 50))
    assert mid == pytest.approx(0.125 + 0.875 * 0.5 ** 3)


def test_regrow_columns_keeps_count_sorted_unique_and_grows_the_best():
    rows = jnp.array([[0, 2, 5, 7]], jnp.int32)
    norms = jnp.array([[3.0, 0.1, 2.0, 0.2]])          # rows 2 and 7 are the weakest
    grow = jnp.arange(8.0)[None] * jnp.array([1, 1, 1, 1, 1, 1, 1, 0.0])  # row 6 best unstored, then 4
    new, perm, replaced = regrow_columns(rows, norms, grow, jnp.array([[2]]), 2)
    assert new.tolist() == [[0, 4, 5, 6]]
    assert replaced.tolist() == [[False, True, False, True]]
    assert np.asarray(rows)[0, np.asarray(perm)[0]][~np.asarray(replaced)[0]].tolist() == [0, 5]


def test_regrown_blocks_get_zero_values_and_zero_moments_for_any_optax_state(text_corpus, tmp_path):
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus, sparsity={**SPARSE, "density": 0.5}), check_data=False)
    setup = build_setup(cfg, 300, abstract=True)
    kinds = sparse_kinds(setup.spec)
    rng = np.random.default_rng(0)  # numpy: eager jax ops would compile once per leaf shape
    state = jax.tree.map(lambda s: (rng.uniform(size=s.shape) + 1).astype(s.dtype), setup.state)
    state["indices"] = jax.tree.map(lambda r: np.broadcast_to(np.arange(r.shape[-1], dtype=np.int32), r.shape),
                                    setup.state["indices"])
    # Three unrelated optimizers' states in one pytree: the walk must find every per-block leaf.
    txs = [optax.adamw(1e-3), optax.chain(optax.clip(1.0), optax.sgd(0.1, momentum=0.9)), optax.lion(1e-3)]
    state["opt_state"] = jax.tree.map(lambda s: np.ones(s.shape, s.dtype),
                                      jax.eval_shape(lambda p: tuple(tx.init(p) for tx in txs), state["params"]))
    state["step"], state["rng"] = np.int32(1), np.zeros(2, np.uint32)
    flow = prune_regrow_flow(kinds, 100, 0.0, 1.0, 1, 0.9, "random")
    new, metrics = jax.jit(flow.update)(state, {})
    assert float(metrics["flow/replaced_fraction"]) > 0.5
    for kind, info in kinds.items():
        rows = np.asarray(new["indices"]["layers"][kind]["row_indices"])
        assert rows.shape == state["indices"]["layers"][kind]["row_indices"].shape
        assert (np.diff(rows, axis=-1) > 0).all()  # sorted, unique
        grown = rows >= info.k_stored               # the old rows were 0..k-1
        vals = np.asarray(new["params"]["layers"][kind]["values"])
        assert (vals[grown] == 0).all() and (vals[~grown] >= 1).all()
        found = []
        map_block_leaves(new["opt_state"], kind, vals.shape, lambda leaf: found.append(np.asarray(leaf)))
        assert len(found) == 4  # adam mu, nu; sgd trace; lion mu
        for leaf in found:
            assert (leaf[grown] == 0).all() and (leaf[~grown] == 1).all()
    assert new["step"] == state["step"]


@functools.cache
def trained_runs(corpus: Path) -> tuple:
    """Two real runs shared by this module and test_compare.py (trained once per session):

    a RigL run (3 steps, mask updates after steps 1 and 2, a checkpoint every step) and a
    sparse-then-dense run: dense, started from the RigL run's step-2 checkpoint, one dense step.
    Returns (rigl_cfg, rigl_summary, std_cfg, std_summary).
    """
    root = Path(tempfile.mkdtemp(prefix="sparsetrain-runs-"))
    sp = {**SPARSE, "flow": "prune_regrow", "regrow": "gradient", "update_every": 1, "end_fraction": 1.0}
    rigl = load_recipe(tiny_recipe(root / "rigl", corpus, sparsity=sp),
                       ["run.steps=3", "run.checkpoint_every=1", "run.keep_checkpoints=5", "run.eval_every=3",
                        "run.name=sparse"])
    rigl_summary = train(rigl)
    std = load_recipe(tiny_recipe(root / "std", corpus, sparse=False,
                                  sparsity={"pattern": "dense", "init_from": str(rigl.out_dir), "init_step": 2}),
                      ["run.steps=3", "run.name=std"])
    return rigl, rigl_summary, std, train(std)


def test_rigl_updates_the_layout_inside_jit_without_recompiling(text_corpus):
    cfg, summary, *_ = trained_runs(text_corpus)
    assert summary["train_step_compiles"] == 1 and summary["flow"] == "prune_regrow/gradient"
    initial = make_layouts(build_setup(cfg, summary["vocab_size"], abstract=True).spec)  # the start
    _, _, state, _ = restore_run(cfg.out_dir)
    changed = 0
    for kind, layouts in initial.items():
        r0 = np.stack([np.asarray(l.row_indices) for l in layouts])
        r1 = np.asarray(state["indices"]["layers"][kind]["row_indices"])
        assert r1.shape == r0.shape and (np.diff(r1, axis=-1) > 0).all()
        changed += int((r1 != r0).sum())
    assert changed > 0
    rows = read_jsonl(cfg.out_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if "flow/replaced_fraction" in r] == [1, 2]


def test_gradual_pruning_reaches_final_density_and_pruned_blocks_stay_zero(text_corpus, tmp_path):
    sp = {**SPARSE, "flow": "gradual", "initial_density": 0.5, "update_every": 1, "end_fraction": 0.5}
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus, sparsity=sp), ["run.steps=4", "run.checkpoint_every=4",
                                                                        "run.eval_every=4"])
    summary = train(cfg)  # pruning after steps 1 and 2 (the end), then 2 more training steps
    assert summary["train_step_compiles"] == 1
    assert summary["params_alive"] < summary["params_stored"]
    _, setup, state, _ = restore_run(cfg.out_dir)
    for kind, info in sparse_kinds(setup.spec).items():
        keep = np.asarray(state["flow"]["keep"][kind])
        assert info.k_stored == 2 * info.k_final and (keep.sum(-1) == info.k_final).all()
        values = np.asarray(state["params"]["layers"][kind]["values"])
        assert (values[keep == 0] == 0).all() and (np.abs(values[keep == 1]).sum((-1, -2)) > 0).all()
        mu = np.asarray(state["opt_state"][1][0].mu["layers"][kind]["values"])
        assert (mu[keep == 0] == 0).all()  # no gradient ever reached them after the prune


def test_densify_then_magnitude_sparsify_round_trips(text_corpus, tmp_path):
    sparse_cfg = load_recipe(tiny_recipe(tmp_path / "s", text_corpus), check_data=False)
    dense_cfg = load_recipe(tiny_recipe(tmp_path / "d", text_corpus, sparse=False), check_data=False)
    magnitude_cfg = load_recipe(tiny_recipe(tmp_path / "m", text_corpus, sparsity={**SPARSE, "pattern": "magnitude",
                                                                                   "init_from": "x"}), check_data=False)
    sparse = build_setup(sparse_cfg, 300)
    dense, mag = (build_setup(c, 300, abstract=True) for c in (dense_cfg, magnitude_cfg))
    for setup in (dense, mag):  # only shapes matter: every leaf is filled from the source
        setup.state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), setup.state)
    sk = sparse_kinds(sparse.spec)
    state = dict(sparse.state, opt_state=jax.tree.map(lambda x: x + 0.5, sparse.state["opt_state"]))
    densified = convert_state(state, sk, dense.state, {}, magnitude=False)
    tokens = jnp.arange(32, dtype=jnp.int32)[None] % 300
    np.testing.assert_allclose(jax.jit(dense.fns.logits)(densified["params"], densified["indices"], tokens),
                               jax.jit(sparse.fns.logits)(state["params"], state["indices"], tokens), atol=1e-4)
    # weights the sparse model did not store get the layer mean of each optimizer leaf (all 0.5 here)
    assert (np.asarray(densified["opt_state"][1][0].nu["layers"]["mlp_up"]["kernel"]) == 0.5).all()
    back = convert_state(densified, {}, mag.state, sparse_kinds(mag.spec), magnitude=True)
    for a, b in zip(jax.tree.leaves(back["indices"]), jax.tree.leaves(state["indices"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(back["params"]), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(a, b)
    mu = lambda s: s["opt_state"][1][0].mu["layers"]["qkv"]["values"]
    np.testing.assert_array_equal(mu(back), mu(state))


def test_flow_fields_are_validated(text_corpus, tmp_path):
    bad = [({"flow": "rigl"}, "sparsity.flow: 'rigl' is not allowed; allowed: static, gradual, prune_regrow"),
           ({"flow": "gradual", "initial_density": 0.2}, "sparsity.initial_density: 0.2 is not allowed"),
           ({"pattern": "magnitude"}, "sparsity.pattern: 'magnitude' is not allowed; allowed: 'magnitude' only with"),
           ({"init_from": str(tmp_path / "nope")}, "sparsity.init_from: .* a run directory with checkpoints")]
    for fields, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_recipe(tiny_recipe(tmp_path, text_corpus, sparsity={**SPARSE, **fields}))
