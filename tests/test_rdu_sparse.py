"""Block-sparse kernels on the RDU from mechanisms: banks and interleave, row vs column access,
the transposed layout's balance, sparsity monotone, no kernel above peak, and the reprice after
a prune/regrow update (`--backend rdu`)."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdu_xla_backend import hardware as hw
from rdu_xla_backend.cost import rdu as perf
from rdu_xla_backend.mapping import banks as mem
from rdu_xla_backend.mapping import block_sparse as bs
from rdu_xla_backend.workload import rules
from rdu_xla_backend.workload.graph import BlockSparseInfo
from rdu_xla_backend.workload.lowering import lower
from sparsetrain.cli import main
from sparsetrain.config import load_recipe
from sparsetrain.models.family import model_spec
from sparsetrain.models.gpt import make_layouts
from sparsetrain.rdu import rules as rdu_rules
from sparsetrain.rdu.layouts import recipe_indices, with_indices
from sparsetrain.rdu.programs import lower_program, program_roles
from sparsetrain.rdu.step import EmulatedTrainStep
from sparsetrain.sparsity import block_sparse_matmul, make_layout
from sparsetrain.kernels.dispatch import use_kernel_backend
from sparsetrain.training.loop import train
from sparsetrain.training.step import build_setup, train_step_fn
from sparsetrain.training.tracking import read_jsonl
from tests.conftest import tiny_recipe

PMU = mem.PmuConfig.from_chip(hw.SN40L)  # 32 banks, 32 lanes, 4 addresses per cycle


def _layout(rng, nr, nc, k):
    return np.stack([np.sort(rng.choice(nr, k, replace=False)) for _ in range(nc)])


def test_conflicts_fall_as_blocks_grow_and_depend_on_pattern_and_layout():
    # The same 1/8 density of a 1024-feature input, blocks 1 .. 64 wide, 64 output columns.
    rng = np.random.default_rng(0)
    conflicts, cycles = [], []
    for bk in (1, 4, 16, 32, 64):
        nr = 1024 // bk
        c = mem.block_gather_cost(_layout(rng, nr, 64, nr // 8), (bk, 1), 1024, 4, PMU)
        assert c.cycles >= c.groups  # never more than one vector per cycle
        conflicts.append(c.conflicts / c.elements)
        cycles.append(c.cycles / c.elements)
    for series in (conflicts, cycles):
        assert all(a > b for a, b in zip(series[:3], series[1:3])), series
    assert conflicts[0] > 0.2 and conflicts[3] == conflicts[4] == 0.0
    assert cycles[-1] == 1 / 32 and cycles[0] > 6 * cycles[-1]  # ~ an address per lane, 4/cycle
    # Pattern: block-rows of one parity put 16-wide blocks in the same 16 banks.
    same = mem.block_gather_cost(np.array([[0, 2, 4, 6]]), (16, 1), 256, 8, PMU)
    mixed = mem.block_gather_cost(np.array([[0, 1, 2, 3]]), (16, 1), 256, 8, PMU)
    assert same.conflicts > 0 == mixed.conflicts and same.cycles > mixed.cycles
    # Interleave: bank bits 1..5 instead of 0..4 map two neighbouring elements to one bank.
    bits = mem.PmuConfig(32, 32, 4, bank_bits=(1, 2, 3, 4, 5))
    low = mem.block_gather_cost(np.array([[0, 1]]), (16, 1), 256, 8, PMU)
    high = mem.block_gather_cost(np.array([[0, 1]]), (16, 1), 256, 8, bits)
    assert high.conflicts > low.conflicts == 0


def test_column_access_of_a_row_major_tensor_costs_more_than_row_access():
    tokens, n_in = 256, 1024
    row = mem.block_gather_cost(np.array([[0, 3]]), (64, 1), n_in, tokens, PMU)
    col = mem.column_read_cost(np.arange(128), tokens, n_in, PMU)
    assert row.elements == col.elements == tokens * 128
    assert row.cycles == row.groups  # contiguous rows: one vector per cycle
    # Row length a multiple of the bank period: every lane of a column vector in one bank.
    assert col.cycles == col.groups * PMU.lanes
    # Padded by one element: distinct banks, but every lane is an address of its own.
    padded = mem.column_read_cost(np.arange(128), tokens, n_in + 1, PMU)
    assert padded.conflicts == 0 and padded.cycles == padded.groups * PMU.lanes // 4
    assert row.cycles < padded.cycles < col.cycles
    # The period shortcut against every vector spelled out (odd sizes, repeated columns).
    small = mem.PmuConfig(8, 8, 2)
    cols, tokens, stride = [3, 7, 7, 40], 77, 48
    vectors = [[(t0 + i) * stride + c if t0 + i < tokens else -1 for i in range(8)]
               for c in cols for t0 in range(0, tokens, 8)]
    assert (mem.column_read_cost(np.array(cols), tokens, stride, small)
            == mem.gather_cost(np.array(vectors, np.int32), small))


def _info(nr, nc, k, bk=64, tokens=4096, backward=True):
    return BlockSparseInfo(tokens=tokens, in_features=nr * bk, out_features=nc * bk,
                                 block=(bk, bk), blocks_per_col=k, backward=backward,
                                 itemsize=2, origin=0)


class _G:  # the one thing sparse_cycles reads of a graph
    def __init__(self, rows):
        self.concrete = {0: np.asarray(rows, np.int32)}


def test_unbalanced_layout_slower_than_balanced_of_same_density():
    nr = nc = 16
    k = 4
    balanced = np.stack([(np.arange(k) * 4 + j) % nr for j in range(nc)])  # 4 blocks per row
    skewed = np.stack([np.sort(np.r_[0, (np.arange(1, k) * 5 + j) % 15 + 1]) for j in range(nc)])
    for rows in (balanced, skewed):
        assert rows.shape == (nc, k) and all(len(set(r)) == k for r in rows)
    counts = [np.bincount(r.reshape(-1), minlength=nr) for r in (balanced, skewed)]
    assert counts[0].max() == counts[0].min() == 4 and counts[1].max() == nc  # row 0 in all
    feats, c = bs.transposed_features(skewed, nr, 2)  # against a direct listing
    for r in range(nr):
        cols = [j for j in range(nc) if r in skewed[j]]
        want = [2 * j + e for j in cols for e in range(2)]
        assert feats[r].tolist() == want + [-1] * (feats.shape[1] - len(want)) and c[r] == len(cols)
    info = _info(nr, nc, k)
    fast = bs.sparse_cycles(info, _G(balanced), hw.SN40L)
    slow = bs.sparse_cycles(info, _G(skewed), hw.SN40L)
    assert fast.imbalance == 1.0 and slow.imbalance == pytest.approx(nr * nc / (nc * k))
    assert slow.pcu > fast.pcu >= fast.ideal_pcu == slow.ideal_pcu
    # The forward is balanced by construction (k per column): the same PCU cycles.
    f1 = bs.sparse_cycles(_info(nr, nc, k, backward=False), _G(balanced), hw.SN40L)
    f2 = bs.sparse_cycles(_info(nr, nc, k, backward=False), _G(skewed), hw.SN40L)
    assert f1.pcu == f2.pcu


def test_pcu_rounding_by_block_size_against_closed_form():
    # Lanes 32 x stages 6: a bk x bn block takes ceil(bn/32) ceil(bk/6) cycles per token.
    L, S = hw.SN40L.simd_lanes_per_pcu, hw.SN40L.stages_per_pcu
    eff = []
    for b in (16, 32, 64, 128):
        nr = nc = 512 // b
        rows = np.stack([(np.arange(2) + j) % nr for j in range(nc)])
        c = bs.sparse_cycles(_info(nr, nc, 2, bk=b, backward=False), _G(rows), hw.SN40L)
        assert c.pcu == 4096 * nc * 2 * math.ceil(b / L) * math.ceil(b / S)
        eff.append(c.ideal_pcu / c.pcu)
    assert eff == sorted(eff) and eff[0] < 0.5 < 0.95 < eff[-1] <= 1.0
    # Fewer tokens than stages (decode): each weight sub-tile waits for its S-vector load.
    rows = np.stack([(np.arange(2) + j) % 8 for j in range(8)])
    one = bs.sparse_cycles(_info(8, 8, 2, tokens=1, backward=False), _G(rows), hw.SN40L)
    assert one.pcu == S * 8 * 2 * math.ceil(64 / L) * math.ceil(64 / S)


def test_missing_indices_are_refused():
    with pytest.raises(ValueError, match="not concrete"):
        bs.sparse_cycles(_info(4, 4, 1), type("G", (), {"concrete": {}})(), hw.SN40L)


def _sparse_step(density, block=16, seed=0, rows=None):
    layout = make_layout("random_balanced", (256, 256), (block, block), density,
                         key=jax.random.key(seed))
    if rows is not None:
        layout = type(layout)(rows, layout.shape, layout.block)
    x = jnp.ones((64, 256), jnp.float32)

    def loss(v, x, rows):
        lay = type(layout)(rows, layout.shape, layout.block)
        return jnp.sum(block_sparse_matmul(x, v, lay) ** 2)

    values = jnp.ones(layout.values_shape, jnp.float32)
    return lower(jax.grad(loss), values, x, np.asarray(layout.row_indices))


def test_sparser_never_more_flops_bytes_or_time_and_no_kernel_above_peak():
    assert rules.call_rule is not None and rdu_rules.FORWARD in rules.CALL_RULES
    graphs = [_sparse_step(d) for d in (1.0, 0.5, 0.25, 0.125)]
    perfs = [perf.program_perf(g, hw.SN40L) for g in graphs]
    lines = bs.summary(graphs[-1], hw.SN40L)
    assert len(lines) == 2 and "forward" in lines[0] and "dx + dvalues" in lines[1]
    flops = [p.flops for p in perfs]
    off = [sum(k.offchip_bytes for k in p.kernels) for p in perfs]
    work = [sum(k.pipeline_s for k in p.kernels) for p in perfs]
    for series in (flops, off, work):
        assert all(a >= b for a, b in zip(series, series[1:])), series
    for p in perfs:
        for k in p.kernels:
            assert k.flops <= hw.SN40L.peak_bf16_flops * k.time_s


def test_lowering_without_the_rule_inlines_the_call():
    saved = dict(rules.CALL_RULES)
    try:
        rules.CALL_RULES.clear()
        with use_kernel_backend("jax"):  # the host body (the FFI call has no dataflow rule)
            g = _sparse_step(0.25)
        assert not any(op.sparse for k in g.kernels for op in k.ops)
    finally:
        rules.CALL_RULES.update(saved)
    assert any(op.sparse for k in _sparse_step(0.25).kernels for op in k.ops)


def test_reprice_after_prune_regrow_on_the_rdu_backend(text_corpus, tmp_path, capsys):
    flow = {"flow": "prune_regrow", "update_every": 2, "drop_fraction": 0.5,
            "end_fraction": 1.0, "regrow": "random"}
    recipe = tiny_recipe(tmp_path, text_corpus, sparsity={"pattern": "random_balanced",
                                                          "density": 0.25, "block": 16, **flow})
    cfg = load_recipe(recipe, ["run.steps=3", "run.eval_every=3", "run.checkpoint_every=3",
                               "run.backend=rdu"])
    train(cfg)
    times = [r["rdu_step_time_s"] for r in read_jsonl(cfg.out_dir / "metrics.jsonl")]
    # Step 2 is an update step: its row (and step 3's) carry the time repriced after it.
    assert times[0] != times[1] == times[2], times
    # `emulate --from-run` prices the run's final indices, not the recipe's initial layout.
    steps = []
    for extra in ([], ["--from-run", str(cfg.out_dir)]):
        capsys.readouterr()
        assert main(["emulate", str(recipe), "--json", *extra]) == 0
        steps.append(json.loads(capsys.readouterr().out)["summary"]["rdu_step_s"])
    assert steps[0] != steps[1]


def test_reprice_equals_a_fresh_lowering_with_the_new_indices(text_corpus, tmp_path):
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus), check_data=False)
    setup = build_setup(cfg, 300)
    fn = train_step_fn(setup.fns, setup.tx, setup.schedule, setup.flow)
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.integers(0, 300, (4, 32)), jnp.int32)
             for k in ("tokens", "targets")}
    step = EmulatedTrainStep(fn, "sn40l")
    step.graph = lower_program(fn, setup.state, batch, roles=program_roles("train"))
    before = step.reprice(setup.state, batch)
    # Every qkv column keeps input block-row 0 only: dx's transposed layout is all in one row.
    moved = jax.tree.map(lambda x: x, setup.state)
    qkv = moved["indices"]["layers"]["qkv"]
    qkv["row_indices"] = jnp.zeros_like(qkv["row_indices"])
    after = step.reprice(moved, batch)
    fresh = EmulatedTrainStep(fn, "sn40l")
    fresh.graph = lower_program(fn, moved, batch, roles=program_roles("train"))
    assert after > before and after == pytest.approx(fresh.reprice(moved, batch), rel=1e-12)
    assert step.reprice(setup.state, batch) == pytest.approx(before, rel=1e-12)


def test_recipe_indices_are_the_layouts_a_run_starts_from(tmp_path):
    cfg = load_recipe("recipes/tiny-prune-regrow.yaml", check_data=False)
    spec = model_spec(cfg)
    got = recipe_indices(spec)
    want = make_layouts(spec)
    assert set(got) == set(want)
    for kind, layouts in want.items():
        np.testing.assert_array_equal(got[kind], np.stack([np.asarray(l.row_indices)
                                                           for l in layouts]))
    tree = {"layers": {k: {"row_indices": jax.ShapeDtypeStruct(v.shape, jnp.int32)}
                       for k, v in got.items()}}
    put = with_indices(tree, got)
    assert isinstance(put["layers"]["qkv"]["row_indices"], np.ndarray)
    with pytest.raises(ValueError, match="expected shape"):
        with_indices(tree, {**got, "qkv": got["qkv"][:, :1]})
    with pytest.raises(ValueError, match="--from-run"):  # its blocks come from trained weights
        recipe_indices(dataclasses.replace(spec, pattern="magnitude"))
