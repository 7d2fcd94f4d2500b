"""Kernel looping (scan and unrolled), launch orchestration, fused vs unfused: timing properties."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdu_xla_backend import hardware as hw
from rdu_xla_backend.workload import kernels
from rdu_xla_backend.cost import rdu as perf
from rdu_xla_backend.execute import execute
from rdu_xla_backend.workload.lowering import lower


def layer(h, w):
    return jax.nn.gelu(h @ w) + h


LAYER = kernels.fused("decoder_layer", layer)


def unrolled(ws, x):
    h = x
    for i in range(ws.shape[0]):
        h = LAYER(h, ws[i])
    return h


def scanned(ws, x):
    return jax.lax.scan(lambda h, w: (layer(h, w), None), x, ws)[0]


def shapes(layers, d, tokens):
    return (jax.ShapeDtypeStruct((layers, d, d), jnp.bfloat16),
            jax.ShapeDtypeStruct((tokens, d), jnp.bfloat16))


def step(graph, looping, orchestration="hardware", sockets=1):
    return perf.program_perf(graph, hw.SN40L, perf.Options(
        sockets=sockets, parallel="tensor", orchestration=orchestration,
        kernel_looping=looping)).step_s


def test_unrolled_repeated_calls_become_one_looped_kernel():
    g = lower(unrolled, *shapes(6, 128, 8))
    (k,) = g.kernels  # the weight slices between the calls fold into them
    assert k.trips == 6 and k.name.startswith("decoder_layer.looped")
    s = lower(scanned, *shapes(6, 128, 8))
    assert g.flops == pytest.approx(s.flops)
    for looping in (True, False):
        assert step(g, looping) == pytest.approx(step(s, looping), rel=0.05)
    # Executing the merged graph still gives the XLA result.
    ws = jnp.asarray(np.random.default_rng(0).normal(0, 0.05, (6, 32, 32)), jnp.float32)
    x = jnp.ones((4, 32), jnp.float32)
    out, _ = execute(lower(unrolled, ws, x), ws, x, timed=False)
    np.testing.assert_allclose(out, unrolled(ws, x), rtol=1e-5, atol=1e-5)


ATTN = kernels.fused("attention", lambda h, w: jax.nn.softmax(h @ w) + h)
MLP = kernels.fused("mlp", lambda h, w: jax.nn.gelu(h @ w.T) + h)


def two_kernel_layers(ws, x):
    h = x
    for i in range(ws.shape[0]):
        h = MLP(ATTN(h, ws[i]), ws[i])
    return h


def test_layers_of_two_kernels_loop_as_one():
    g = lower(two_kernel_layers, *shapes(5, 128, 8))
    (k,) = g.kernels
    assert (k.trips, k.calls_per_trip) == (5, 2) and k.name.startswith("attention+mlp.looped")
    off = perf.program_perf(g, hw.SN40L, perf.Options(kernel_looping=False))
    on = perf.program_perf(g, hw.SN40L, perf.Options(kernel_looping=True))
    assert (off.launches, on.launches) == (10, 1) and on.step_s < off.step_s


@pytest.mark.parametrize("prog", [unrolled, scanned])
@pytest.mark.parametrize("dims", [(4, 256, 1), (12, 512, 64), (8, 2048, 512)])
def test_looping_and_hardware_launches_never_slower(prog, dims):
    g = lower(prog, *shapes(*dims))
    for sockets in (1, 8):
        for orch in ("software", "hardware"):
            assert step(g, True, orch, sockets) <= step(g, False, orch, sockets)
        for looping in (True, False):
            assert step(g, looping, "hardware", sockets) <= step(g, looping, "software", sockets)


def gain(layers, d, tokens, sockets=1):
    g = lower(scanned, *shapes(layers, d, tokens))
    return step(g, False, sockets=sockets) / step(g, True, sockets=sockets)


def test_looping_gain_grows_with_layers_and_shrinks_with_work():
    by_layers = [gain(n, 1024, 1) for n in (2, 8, 32)]
    assert by_layers[0] < by_layers[1] < by_layers[2]
    by_work = [gain(16, d, t) for d, t in ((256, 1), (2048, 16), (8192, 256))]
    assert by_work[0] > by_work[1] > by_work[2] >= 1.0
    # More sockets: less work per socket, the same synchronisation: larger gain.
    assert gain(16, 4096, 1, sockets=8) > gain(16, 4096, 1, sockets=1)


def test_fused_never_slower_than_unfused_and_fewer_calls():
    for dims in ((4, 256, 16), (8, 1024, 256)):
        f = lower(scanned, *shapes(*dims))
        u = lower(scanned, *shapes(*dims), mode="unfused")
        for looping in (True, False):
            for orch in ("software", "hardware"):
                opts = perf.Options(kernel_looping=looping, orchestration=orch)
                pf = perf.program_perf(f, hw.SN40L, opts)
                pu = perf.program_perf(u, hw.SN40L, opts)
                assert pf.step_s <= pu.step_s and pf.launches < pu.launches


def test_unlooped_calls_expose_the_all_reduce_latency_looping_hides():
    """Memory-bound layers on 2 sockets: a looped kernel streams the next layer's weights while
    the all-reduces run (the hop latency is hidden), an unlooped call cannot prefetch across its
    boundary, so each layer's last all-reduce latency adds to its stream: n x (one hop)."""
    g = lower(scanned, *shapes(8, 8192, 1))
    n = next(k.trips for k in g.kernels if k.trips > 1)

    def with_hop(hop):
        return dataclasses.replace(hw.SN40L, params=dataclasses.replace(
            hw.SN40L.params, inter_socket_latency_seconds=hop))

    def t(chip, looping):
        return perf.program_perf(g, chip, perf.Options(
            sockets=2, parallel="tensor", orchestration="hardware",
            kernel_looping=looping)).step_s

    fast, slow = with_hop(1e-6), with_hop(2e-6)
    assert t(slow, True) == pytest.approx(t(fast, True), rel=1e-9)
    assert t(slow, False) - t(fast, False) == pytest.approx(n * 1e-6, rel=1e-6)
    assert t(fast, False) > t(fast, True)


def test_all_reduces_per_layer_are_the_callers_mapping_choice():
    """The lowering records the tensor-parallel all-reduces a layer makes (Megatron's 2 by
    default); the caller can say otherwise, and the tensor-parallel time follows."""
    for fn in (scanned, unrolled):
        megatron = lower(fn, *shapes(6, 512, 64))
        none = lower(fn, *shapes(6, 512, 64), all_reduces_per_layer=0)
        four = lower(fn, *shapes(6, 512, 64), all_reduces_per_layer=4)
        looped = [k for k in megatron.kernels if k.trips > 1]
        assert looped and all(k.collectives == 2 for k in looped)
        assert all(k.collectives == 0 for k in none.kernels)
        assert step(none, True, sockets=8) < step(megatron, True, sockets=8) < step(four, True,
                                                                                    sockets=8)
        assert step(none, True, sockets=1) == pytest.approx(step(megatron, True, sockets=1))
    unfused = lower(scanned, *shapes(6, 512, 64), mode="unfused", all_reduces_per_layer=1)
    assert sum(k.collectives for k in unfused.kernels) == 1
