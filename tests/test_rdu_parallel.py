"""Parallel plans across RDU sockets: whole layers, micro-batches, memory, data parallelism."""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdu_xla_backend import hardware as hw
from rdu_xla_backend import report
from rdu_xla_backend.cost import rdu as perf
from rdu_xla_backend.cost import rdu_plan
from rdu_xla_backend.mapping import stages
from rdu_xla_backend.mapping import parallel as par
from rdu_xla_backend.mapping import pipeline as pl
from rdu_xla_backend.workload.lowering import lower


def mlp_stack(ws, tokens):
    # Activations broadcast from integer tokens (made on chip): the only weights are ``ws``.
    x = jnp.broadcast_to(tokens[..., None].astype(ws.dtype), (*tokens.shape, ws.shape[-1]))

    def layer(h, w):
        return jax.nn.gelu(h @ w), None
    h, _ = jax.lax.scan(layer, x, ws)
    return jnp.mean(h ** 2)


def train_step(ws, tokens):
    loss, g = jax.value_and_grad(mlp_stack)(ws, tokens)
    return ws - 0.1 * g, loss


def forward(ws, tokens):
    x = jnp.broadcast_to(tokens[..., None].astype(ws.dtype), (*tokens.shape, ws.shape[-1]))

    def layer(h, w):
        return jax.nn.gelu(h @ w), None
    return jax.lax.scan(layer, x, ws)[0]


def shapes(layers, d, batch, seq=1):
    """(L, d, d) bf16 weights and (batch, seq) int32 tokens."""
    return (jax.ShapeDtypeStruct((layers, d, d), jnp.bfloat16),
            jax.ShapeDtypeStruct((batch, seq), jnp.int32))


@pytest.fixture(scope="module")
def train_graph():
    return lower(train_step, *shapes(16, 1024, 64, 256))


# ----------------------------------------------------------------------------- layout


def _brute_force(layers, chunks, cost, first, last):
    best = math.inf
    for cut in itertools.combinations(range(layers + chunks - 1), chunks - 1):
        n = np.diff([-1, *cut, layers + chunks - 1]) - 1  # stars and bars: every composition
        load = n * cost
        load[0] += first
        load[-1] += last
        best = min(best, load.max())
    return best


@pytest.mark.parametrize("layers,chunks,first,last", [(8, 3, 0.0, 0.0), (10, 4, 0.5, 2.5),
                                                      (7, 4, 0.0, 3.2), (12, 3, 1.0, 1.0)])
def test_whole_layers_balanced_with_embedding_and_head(layers, chunks, first, last):
    n = par.assign_layers(layers, chunks, 1.0, first, last)
    assert all(isinstance(x, int) and x >= 0 for x in n) and sum(n) == layers
    load = np.array(n, float)
    load[0] += first
    load[-1] += last
    assert load.max() == pytest.approx(_brute_force(layers, chunks, 1.0, first, last))
    if last > first + 1:
        assert n[-1] < n[0]  # the stage holding the head gets fewer layers


def test_pipeline_plan_has_whole_layers_and_closed_form_bubble():
    g = lower(forward, *shapes(16, 2048, 64, 256))  # a prefill-like forward of 16 layers
    pp = perf.program_perf(g, hw.SN40L, perf.Options(
        sockets=4, parallel="pipeline", micro_batches=16, orchestration="hardware"))
    plan, t = pp.plan.plan, pp.plan
    assert (plan.pipeline, plan.micro_batches) == (4, 16) and plan.layers == (4, 4, 4, 4)
    # Forward-only flow shop of P stages: total = sum f + (P - 1) c + (M - 1) max f, so the
    # bubble is 1 - M sum f / (P total); equal stages without transfer: (p - 1) / (m + p - 1).
    f, c, P, M = np.array(t.forward_s), t.transfer_s, 4, 16
    total = f.sum() + (P - 1) * c + (M - 1) * f.max()
    assert pp.schedule.bubble_fraction == pytest.approx(1 - M * f.sum() / (P * total), rel=1e-5)
    assert pp.schedule.bubble_fraction >= pl.gpipe_bubble(P, M) - 1e-6
    for v in (1, 2, 4):
        r = pl.pipeline_schedule([1.0 / v] * (4 * v), 8, [2.0 / v] * (4 * v), schedule="1f1b",
                                 virtual_stages=v)
        assert r.bubble_fraction == pytest.approx(pl.gpipe_bubble(4, 8, v), abs=1e-6)


def test_layers_balanced_at_the_micro_batch_cost(train_graph):
    # Software launches (tens of us per call) make the embedding and loss kernels' chunks
    # heavier per micro-batch: the balance moves layers away from them, and is no slower.
    pp = perf.program_perf(train_graph, hw.SN40L, perf.Options(
        sockets=4, parallel="pipeline", micro_batches=16))
    t = pp.plan
    assert sum(t.plan.layers) == 16
    even = rdu_plan.time_plan(dataclasses.replace(t.plan, layers=(4, 4, 4, 4)),
                              perf.program_work(train_graph, hw.SN40L, 1, 4)[1],
                              stages.structure(train_graph), hw.SN40L,
                              lambda w: perf.kernel_time(w, hw.SN40L, pp.options))
    assert pp.step_s <= even.simulate().step_s * (1 + 1e-6)


# ----------------------------------------------------------------------------- memory


def test_1f1b_holds_fewer_activations_than_gpipe(train_graph):
    held = {}
    for schedule in ("gpipe", "1f1b"):
        pp = perf.program_perf(train_graph, hw.SN40L, perf.Options(
            sockets=4, parallel="pipeline", micro_batches=16, schedule=schedule))
        held[schedule] = [m["activations"] for m in pp.plan.memory]
    assert all(g > o for g, o in zip(held["gpipe"], held["1f1b"]))
    # GPipe holds all 16 micro-batches on every stage; 1F1B stage s at most P - s = 4 - s.
    plan = par.ParallelPlan(1, 4, 1, 16, "1f1b", layers=(4, 4, 4, 4))
    assert par.in_flight(plan, True) == [4, 3, 2, 1]
    assert par.in_flight(dataclasses.replace(plan, schedule="gpipe"), True) == [16] * 4


def test_plan_that_does_not_fit_is_replanned_or_refused(train_graph):
    st = stages.structure(train_graph)
    gpipe = perf.Options(sockets=4, parallel="pipeline", micro_batches=16, schedule="gpipe")
    roomy = perf.program_perf(train_graph, hw.SN40L, gpipe)
    need = max(sum(m.values()) for m in roomy.plan.memory)
    assert st.shares["saved_layers"] > 0 and roomy.plan.plan.micro_batches == 16
    # A socket with 60% of what GPipe needs: that plan is refused and another one chosen
    # (recomputation, or another split when none of the requested kind fits).
    small = dataclasses.replace(hw.SN40L, hbm_bytes=0.3 * need, ddr_bytes=0.3 * need)
    pp = perf.program_perf(train_graph, small, gpipe)
    assert any("refused" in n for n in pp.notes)
    assert max(sum(m.values()) for m in pp.plan.memory) <= 0.6 * need
    assert pp.plan.plan != roomy.plan.plan
    # Nothing fits a socket smaller than the parameters of one layer: refused with a reason.
    tiny = dataclasses.replace(hw.SN40L, hbm_bytes=1e6, ddr_bytes=1e6)
    with pytest.raises(ValueError, match="no parallel plan"):
        perf.program_perf(train_graph, tiny, perf.Options(sockets=4))


def test_recomputation_holds_layer_inputs_and_charges_a_forward(train_graph):
    st = stages.structure(train_graph)
    works = perf.program_work(train_graph, hw.SN40L, 1, 4)[1]
    time_fn = lambda w: perf.kernel_time(w, hw.SN40L, perf.Options())  # noqa: E731
    plan = par.ParallelPlan(1, 4, 1, 8, "1f1b", layers=(4, 4, 4, 4))
    a = rdu_plan.time_plan(plan, works, st, hw.SN40L, time_fn)
    b = rdu_plan.time_plan(dataclasses.replace(plan, recompute=True), works, st, hw.SN40L,
                           time_fn)
    assert sum(m["activations"] for m in b.memory) < sum(m["activations"] for m in a.memory)
    # The backward of each stage grows by its layers' forward (the recomputation).
    extra = np.array(b.backward_s) - np.array(a.backward_s)
    assert (extra > 0).all() and (extra <= np.array(a.forward_s) * (1 + 1e-9)).all()
    base = dict(sockets=4, parallel="pipeline", micro_batches=8)
    plain = perf.program_perf(train_graph, hw.SN40L, perf.Options(**base, recompute=False))
    again = perf.program_perf(train_graph, hw.SN40L, perf.Options(**base, recompute=True))
    # ... and its FLOPs are in the step's: one more forward of the layers.
    fwd = next(k.flops for k in plain.kernels if k.name.startswith("layers.forward"))  # TP 1
    assert again.flops == pytest.approx(plain.flops + fwd, rel=1e-9)


def test_interleaved_schedule_shrinks_the_bubble(train_graph):
    base = dict(sockets=4, parallel="pipeline", micro_batches=8)
    plain = perf.program_perf(train_graph, hw.SN40L, perf.Options(**base))
    inter = perf.program_perf(train_graph, hw.SN40L, perf.Options(**base, virtual_stages=2))
    assert inter.plan.plan.virtual_stages == 2 and len(inter.plan.plan.layers) == 8
    assert inter.schedule.bubble_fraction < plain.schedule.bubble_fraction
    # ... at the price of more activations held on the first stage ([MEG] Sec. 2.2.2).
    assert inter.plan.memory[0]["activations"] > plain.plan.memory[0]["activations"]


# ----------------------------------------------------------------------------- mode


def test_decode_at_batch_one_is_never_cut_into_micro_batches():
    g = lower(forward, *shapes(16, 2048, 1))
    for parallel in ("auto", "pipeline"):
        pp = perf.program_perf(g, hw.SN40L, perf.Options(sockets=8, parallel=parallel))
        assert pp.plan.plan.micro_batches == 1 and pp.plan.plan.data == 1
    # Data parallelism needs at least one sequence per replica: re-planned, and said so.
    pp = perf.program_perf(g, hw.SN40L, perf.Options(sockets=8, parallel="data"))
    assert any("re-planned" in n for n in pp.notes) and pp.plan.plan.data == 1
    plans = par.candidate_plans(16, 32, 1, False, [1, 2, 4, 8, 16])
    assert plans and all(p.micro_batches == 1 and p.data == 1 for p in plans)
    # Heads bound tensor parallelism: 12 heads allow 1, 2, 4 of 8 sockets (not 8).
    assert par.tensor_degrees(8, 4096, 12) == [1, 2, 4]


def test_micro_batches_pay_their_own_fill_drain_and_launch(train_graph):
    st = stages.structure(train_graph)
    works = perf.program_work(train_graph, hw.SN40L, 1, 1)[1]
    time_fn = lambda w: perf.kernel_time(w, hw.SN40L, perf.Options())  # noqa: E731
    whole = dataclasses.replace(par.ParallelPlan(1, 1, 1, 1), layers=(16,))
    t1 = rdu_plan.time_plan(whole, works, st, hw.SN40L, time_fn)
    for m in (4, 16, 64):
        tm = rdu_plan.time_plan(dataclasses.replace(whole, micro_batches=m), works, st,
                                hw.SN40L, time_fn)
        # M micro-batches cost more than one batch of the same size (each pays launch, fill and
        # drain and re-reads the weights) but not more than M times one batch.
        assert m * tm.forward_s[0] > t1.forward_s[0]
        assert tm.forward_s[0] < t1.forward_s[0]


# ----------------------------------------------------------------------------- data parallel


def test_data_parallel_all_reduce_grows_with_parameter_bytes():
    chip = hw.SN40L
    out = []
    for d in (512, 1024):
        g = lower(train_step, *shapes(8, d, 64, 64))
        pp = perf.program_perf(g, chip, perf.Options(sockets=4, parallel="data"))
        t = pp.plan
        assert t.plan.data == 4 and t.allreduce_s > 0
        grads = 8 * d * d * 2  # bfloat16 gradients of the layer weights
        ring = 2 * 3 / 4 * grads / chip.inter_socket_bytes_per_s
        hops = 2 * chip.params.inter_socket_latency_seconds
        assert t.allreduce_s == pytest.approx(ring + hops, rel=1e-6)
        assert t.step_s >= t.allreduce_s
        out.append(t.allreduce_s)
    assert out[1] > 3 * out[0]


# ----------------------------------------------------------------------------- reports


def test_reports_name_the_limit_and_no_backward_in_a_forward_only_step(tmp_path):
    g = lower(forward, *shapes(4, 256, 1))
    pp = perf.program_perf(g, hw.SN40L)
    rows = report.kernel_rows(pp)
    for r in rows:
        if r["peak_fraction"] < 0.01:
            assert r["limit"] != "compute", r
    report.plot_timeline(pp, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_roofline_labels_never_overlap():
    pts = np.array([[100.0, 100.0], [104.0, 101.0], [108.0, 99.0], [100.0, 110.0],
                    [300.0, 50.0]])
    sizes = np.array([[60.0, 9.0]] * len(pts))
    placed = report.place_labels(pts, sizes, bounds=(0, 0, 500, 300))
    boxes = []
    for (x, y), (w, h), (dx, dy, ha) in zip(pts, sizes, placed):
        x0 = x + dx if ha == "left" else x + dx - w
        boxes.append((x0, y + dy, x0 + w, y + dy + h))
    for a, b in itertools.combinations(boxes, 2):
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_step_flops_count_every_socket(train_graph):
    one = perf.program_perf(train_graph, hw.SN40L)
    update = sum(k.flops for k in one.kernels if k.phase == "update")
    for parallel, extra in (("data", 3 * update), ("tensor", 0.0), ("pipeline", 0.0)):
        pp = perf.program_perf(train_graph, hw.SN40L, perf.Options(sockets=4, parallel=parallel,
                                                                   recompute=False))
        # Every data-parallel replica updates its own copy of the parameters.
        assert pp.flops == pytest.approx(one.flops + extra, rel=1e-9), parallel


def test_one_socket_whose_activations_spill_is_planned_with_micro_batches(train_graph):
    st = stages.structure(train_graph)
    saved = st.shares["saved_layers"] + st.shares["saved_last"] + st.shares["saved_first"]
    # HBM for a quarter of the activations the whole batch keeps: the single-socket placement
    # spills them to DDR; the plan accumulates gradients over micro-batches instead.
    chip = dataclasses.replace(hw.SN40L, hbm_bytes=0.25 * saved)
    pp = perf.program_perf(train_graph, chip)
    assert pp.plan is not None and pp.plan.plan.micro_batches > 1
    assert pp.plan.memory[0]["activations"] <= 0.25 * saved
    assert pp.step_s <= pp.single_socket_s
    roomy = perf.program_perf(train_graph, hw.SN40L)  # fits: kernels in order, no plan
    assert roomy.plan is None and roomy.step_s == roomy.single_socket_s
