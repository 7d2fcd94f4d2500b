"""PMU bank model, block vs element gathers, tiers and placement."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdu_xla_backend import hardware as hw
from rdu_xla_backend.mapping import banks as mem
from rdu_xla_backend.mapping import tiers

PMU4 = mem.PmuConfig(banks=4, lanes=8, addresses_per_cycle=2)


def test_hand_computed_conflicts():
    addrs = np.array([
        [0, 1, 2, 3, 4, 5, 6, 7],          # 2 per bank; one run
        [0, 4, 8, 12, 16, 20, 24, 28],     # all bank 0; 8 runs
        [5, 5, 5, 5, 5, 5, 5, 5],          # broadcast
        [0, 1, 2, 3, -1, -1, -1, -1],      # half the lanes idle
        [3, 9, 6, 12, 3, 1, 2, 7],         # mixed, one duplicate
    ], np.int32)
    g = mem.group_cycles(addrs, PMU4)
    # Row 4 by hand: banks 3,1,2,0,3(dup),1,2,3 -> distinct per bank {12},{9,1},{6,2},{3,7}
    # -> 2 bank cycles, 3 conflicts; runs: 3|9|6|12|3|1,2|7 = 7 -> ceil(7/2) = 4 AG cycles.
    assert g.bank_cycles.tolist() == [2, 8, 1, 1, 2]
    assert g.conflicts.tolist() == [4, 7, 0, 0, 3]
    assert g.distinct.tolist() == [8, 8, 1, 4, 7]
    assert g.ag_cycles.tolist() == [1, 4, 1, 1, 4]
    assert g.cycles.tolist() == [2, 8, 1, 1, 4]
    cost = mem.gather_cost(addrs, PMU4)
    assert (cost.cycles, cost.conflicts, cost.groups, cost.elements) == (16, 14, 5, 36)


def test_programmable_bank_bits():
    # Bits 2,3 as bank number: a stride-4 walk spreads over all 4 banks.
    pmu = mem.PmuConfig(banks=4, lanes=8, addresses_per_cycle=2, bank_bits=(2, 3))
    addrs = np.array([[0, 4, 8, 12, 16, 20, 24, 28]], np.int32)
    assert mem.bank_of(addrs, pmu).tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    g = mem.group_cycles(addrs, pmu)
    assert (int(g.bank_cycles[0]), int(g.conflicts[0]), int(g.cycles[0])) == (2, 4, 4)
    assert pmu.period == 16
    with pytest.raises(ValueError):
        mem.PmuConfig(banks=8, lanes=8, addresses_per_cycle=1, bank_bits=(0, 1))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-1, 200), min_size=8, max_size=8))
def test_group_cycle_bounds(lanes):
    a = np.array([lanes], np.int32)
    g = mem.group_cycles(a, PMU4)
    distinct = len({x for x in lanes if x >= 0})
    assert int(g.distinct[0]) == distinct
    assert -(-distinct // 4) <= int(g.bank_cycles[0]) <= distinct
    assert int(g.cycles[0]) >= max(int(g.bank_cycles[0]), int(g.ag_cycles[0]))
    assert int(g.conflicts[0]) == distinct - len({x % 4 for x in lanes if x >= 0})


def _random_block_rows(rng, n_row_blocks, n_col_blocks, k):
    return np.stack([np.sort(rng.choice(n_row_blocks, k, replace=False))
                     for _ in range(n_col_blocks)])


def test_element_gather_costs_more_than_64x64_blocks():
    rng = np.random.default_rng(0)
    pmu = mem.PmuConfig.from_chip(hw.SN40L)
    in_f, out_f, tokens, b, density = 1024, 512, 8, 64, 0.25
    k = int(density * in_f / b)
    blocks = mem.block_gather_cost(_random_block_rows(rng, in_f // b, out_f // b, k),
                                   (b, b), in_f, tokens, pmu)
    nnz = int(density * in_f)
    feats = np.stack([np.sort(rng.choice(in_f, nnz, replace=False)) for _ in range(out_f)])
    elems = mem.element_gather_cost(feats, in_f, tokens, pmu)
    assert elems.cycles > blocks.cycles
    assert elems.cycles_per_element > blocks.cycles_per_element
    # 64-wide blocks read whole aligned vectors: no conflicts, one cycle per vector.
    assert blocks.conflicts == 0 and blocks.cycles == blocks.groups
    assert blocks.elements == (out_f // b) * k * b * tokens


def test_token_period_shortcut_is_exact():
    # Odd row stride: the bank pattern shifts per token; compare with the brute-force sum.
    rng = np.random.default_rng(1)
    pmu = mem.PmuConfig(banks=8, lanes=8, addresses_per_cycle=2)
    rows, in_f, tokens, bk = _random_block_rows(rng, 6, 3, 2), 60, 19, 10
    cost = mem.block_gather_cost(rows, (bk, 4), in_f, tokens, pmu, row_stride=61)
    feats = (rows[:, :, None] * bk + np.arange(bk)).reshape(3, -1)
    vec = mem._vectors(feats, 8)
    addr = mem._token_addresses(vec, tokens, 61).reshape(-1, 8)
    assert cost == mem.gather_cost(addr, pmu)


def test_transfers_and_tiers():
    c = hw.SN40L
    assert tiers.transfer_seconds(16e9, "ddr", "hbm", c) == pytest.approx(16e9 / 200e9)
    assert tiers.transfer_seconds(1e9, "hbm", "hbm", c) == pytest.approx(2e9 / 1.8e12)
    assert tiers.transfer_seconds(1e9, "host", "hbm", hw.A100_80GB) == pytest.approx(1e9 / 32e9)
    with pytest.raises(ValueError, match="no tier 'hbm'"):
        tiers.transfer_seconds(1.0, "ddr", "hbm", hw.SN10)
    with pytest.raises(ValueError):
        tiers.transfer_seconds(1.0, "ddr", "hbm", hw.H100)


def test_gather_input_errors():
    with pytest.raises(ValueError, match="tokens"):
        mem.block_gather_cost(np.zeros((2, 1), int), (4, 4), 16, 0, PMU4)
    with pytest.raises(ValueError, match="row_stride"):
        mem.element_gather_cost(np.array([[0, 9]]), 16, 2, PMU4, row_stride=8)
    with pytest.raises(ValueError, match="row_indices"):
        mem.block_gather_cost(np.array([[4]]), (4, 4), 16, 2, PMU4)
    # Three scattered features per token, by hand: banks 0, 1, 1 -> 2 cycles, 1 conflict.
    c = mem.element_gather_cost(np.array([[0, 5, 9]]), 16, 3, PMU4)
    assert (c.cycles, c.conflicts, c.groups, c.elements) == (6, 3, 3, 9)


def test_gpu_sector_bytes():
    # BF16, 32-byte sectors = 16 elements. A 64-wide block row: 4 full sectors, nothing wasted.
    rows = np.array([[0, 2]])
    feats = mem.block_feature_lists(rows, 64, 256)
    assert mem.sector_bytes_moved(feats, 256, 3, 2) == 3 * 2 * 64 * 2
    # Scattered elements: one sector each (32 bytes for 2 useful bytes); shared sector once.
    assert mem.sector_bytes_moved(np.array([[0, 100, 200, 201]]), 256, 5, 2) == 5 * 3 * 32
    # Odd row length: token rows straddle sectors; compare with a direct count.
    f = np.array([[0, 7, 8]])
    direct = sum(len({((t * 9 + x) * 2) // 32 for x in (0, 7, 8)}) for t in range(40)) * 32
    assert mem.sector_bytes_moved(f, 9, 40, 2) == direct
