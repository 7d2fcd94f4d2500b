"""Stage balancing inside a kernel and micro-batch schedules across sockets."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdu_xla_backend.mapping import pipeline as pl

times = st.floats(0.1, 10.0)
REL = 1e-5  # the scan runs in float32


def _brute_force_interval(w, units):
    best = np.inf
    for alloc in itertools.product(range(1, units + 1), repeat=len(w)):
        if sum(alloc) <= units:
            best = min(best, max(x / a for x, a in zip(w, alloc)))
    return best


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=3), st.integers(0, 5))
def test_balance_is_optimal(work, extra):
    units = len(work) + extra
    alloc = pl.balance_stages(work, units)
    assert (alloc >= 1).all() and alloc.sum() <= units
    assert max(w / a for w, a in zip(work, alloc)) == pytest.approx(
        _brute_force_interval(work, units))


def test_fused_kernel_hand_case():
    # 16 units over work [100, 400, 50, 10]: interval 40 needs 3+10+2+1 = 16 units; 17 for less.
    t = pl.fused_kernel_timing([100, 400, 50, 10], units=16, tiles=100)
    assert t.allocation.tolist() == [3, 10, 2, 1]
    assert (t.interval, t.bottleneck) == (40.0, 1)
    assert t.fill == pytest.approx(100 / 3 + 40) and t.drain == pytest.approx(25 + 10)
    assert t.cycles == pytest.approx(t.fill + 99 * 40 + t.drain)
    assert t.utilisation.max() <= 1.0
    with pytest.raises(ValueError):
        pl.balance_stages([1, 2, 3], units=2)


@settings(max_examples=15, deadline=None)
@given(st.lists(times, min_size=1, max_size=5), st.integers(1, 12))
def test_kernel_formula_equals_max_plus_recurrence(stage_cycles, tiles):
    t = pl.fused_kernel_timing(stage_cycles, units=len(stage_cycles), tiles=tiles,
                               allocation=[1] * len(stage_cycles))
    sched = pl.pipeline_schedule(stage_cycles, tiles)
    assert sched.total == pytest.approx(t.cycles, rel=REL)


@pytest.mark.parametrize("P,M", [(1, 1), (4, 8), (8, 4), (3, 16)])
def test_equal_stages_gpipe_closed_form(P, M):
    r = pl.pipeline_schedule([2.0] * P, M)
    assert r.total == pytest.approx((M + P - 1) * 2.0, rel=REL)
    assert r.bubble_fraction == pytest.approx(pl.gpipe_bubble(P, M), abs=1e-6)
    assert r.forward_start.shape == (P, M)


@pytest.mark.parametrize("P,M", [(4, 8), (4, 2), (6, 6)])
def test_1f1b_same_bubble_as_gpipe_for_equal_stages(P, M):
    g = pl.pipeline_schedule([1.0] * P, M, [2.0] * P, schedule="gpipe")
    o = pl.pipeline_schedule([1.0] * P, M, [2.0] * P, schedule="1f1b")
    assert g.total == pytest.approx((M + P - 1) * 3.0, rel=REL)
    assert o.total == pytest.approx(g.total, rel=REL)
    assert o.bubble_fraction == pytest.approx(pl.gpipe_bubble(P, M), abs=1e-6)
    # 1F1B's point: at most P micro-batches in flight instead of M.
    assert g.peak_in_flight.max() == M and o.peak_in_flight.max() == min(P, M)


@settings(max_examples=20, deadline=None)
@given(st.lists(times, min_size=1, max_size=5), st.integers(1, 8), st.floats(0.0, 2.0),
       st.sampled_from(pl.SCHEDULES))
def test_unequal_stage_bounds(f, M, transfer, schedule):
    f = np.array(f)
    bwd = 2 * f[::-1]
    r = pl.pipeline_schedule(f, M, bwd, transfer_seconds=transfer, schedule=schedule)
    P = f.size
    assert r.total >= M * (f + bwd).max() * (1 - REL)
    assert r.total >= (f.sum() + bwd.sum() + 2 * (P - 1) * transfer) * (1 - REL)
    assert 0.0 <= r.bubble_fraction < 1.0
    # No stage runs two things at once, and each micro-batch respects its dependencies.
    for s in range(P):
        ends = np.sort(np.concatenate([r.forward_end[s], r.backward_end[s]]))
        starts = np.sort(np.concatenate([r.forward_start[s], r.backward_start[s]]))
        assert (starts[1:] >= ends[:-1] - REL * r.total).all()
    assert (r.backward_start[-1] >= r.forward_end[-1] - REL * r.total).all()
    # Forward-only: exactly sum + transfers + (M - 1) * max (flow shop of identical jobs).
    fo = pl.pipeline_schedule(f, M, transfer_seconds=transfer)
    assert fo.total == pytest.approx(f.sum() + (P - 1) * transfer + (M - 1) * f.max(), rel=REL)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 8), st.integers(1, 16), st.floats(1.0, 100.0), st.floats(0.0, 1.0))
def test_more_sockets_within_bubble_bound(P, M, work, transfer):
    # A balanced pipeline: per-micro-batch work split evenly over P sockets.
    one = pl.pipeline_schedule([work], M).total
    r = pl.pipeline_schedule([work / P] * P, M, transfer_seconds=transfer)
    bound = one / P * (M + P - 1) / M + (P - 1) * transfer  # ideal / (1 - bubble) + transfers
    assert r.total <= bound * (1 + REL)
    assert r.total >= one / P * (1 - REL)
    if transfer == 0.0:
        assert r.total <= one * (1 + REL)  # more sockets never slower


def test_bad_inputs():
    with pytest.raises(ValueError, match="allowed"):
        pl.pipeline_schedule([1.0], 2, schedule="zero-bubble")
    with pytest.raises(ValueError):
        pl.pipeline_schedule([1.0, 2.0], 2, backward_seconds=[1.0])
    with pytest.raises(ValueError):
        pl.pipeline_schedule([1.0, -2.0], 2)
