"""Three-tier placement (categories, spill, overflow reported) and Composition of Experts."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from rdu_xla_backend.cost import coe, rdu as perf
from rdu_xla_backend import hardware as hw
from rdu_xla_backend.workload.lowering import lower
from rdu_xla_backend.mapping.placement import copy_seconds, plan_memory


def decode(params, cache, tokens):
    """A toy decode step: layers of matmuls over weights, reading and updating a KV cache."""
    x = params["embed"][tokens]

    def body(h, p):
        w, kv = p
        att = jax.nn.softmax(h @ kv.T) @ kv
        return jnp.tanh((h + att) @ w), kv[:1] + h[:1]
    h, new = jax.lax.scan(body, x, (params["w"], cache["kv"]))
    return h, {"kv": jax.lax.dynamic_update_slice(cache["kv"], new, (0, 0, 0))}


def decode_args(layers=4, d=512, ctx=256):
    params = {"w": jax.ShapeDtypeStruct((layers, d, d), jnp.bfloat16),
              "embed": jax.ShapeDtypeStruct((16, d), jnp.bfloat16)}
    cache = {"kv": jax.ShapeDtypeStruct((layers, ctx, d), jnp.bfloat16)}
    return params, cache, jax.ShapeDtypeStruct((1,), jnp.int32)


ROLES = ("weights", "kv_cache", "activations")  # what decode's arguments are: given to lower


def chip_with(hbm=None, ddr=None, sram=None):
    c = hw.SN40L
    return dataclasses.replace(c, name="SN40L-small", hbm_bytes=c.hbm_bytes if hbm is None else hbm,
                               ddr_bytes=c.ddr_bytes if ddr is None else ddr,
                               sram_bytes=c.sram_bytes if sram is None else sram)


def test_roles_come_from_the_caller_not_from_names():
    g = lower(decode, *decode_args())  # no roles: floating inputs are weights, whatever the name
    assert plan_memory(g, hw.SN40L).bytes.get("kv_cache") is None
    g = lower(decode, *decode_args(), roles=lambda path, leaf: "kv_cache" if "kv" in path else None)
    assert plan_memory(g, hw.SN40L).bytes["kv_cache"] == {"hbm": 4 * 256 * 512 * 2}
    with pytest.raises(ValueError, match="unknown; allowed: activations"):
        lower(decode, *decode_args(), roles=("weights", "cache", "activations"))


def test_categories_spill_and_overflow_reported():
    g = lower(decode, *decode_args(), roles=ROLES)
    plan = plan_memory(g, hw.SN40L)
    assert plan.bytes["weights"] == {"hbm": (4 * 512 + 16) * 512 * 2}
    assert plan.bytes["kv_cache"] == {"hbm": 4 * 256 * 512 * 2}  # updated in place: counted once
    assert not plan.overflow and not plan.spilled
    # HBM too small for the weights: they spill to DDR (after activations and the KV cache).
    small = plan_memory(g, chip_with(hbm=1.5e6))
    assert small.bytes["weights"].get("ddr", 0) > 0 and small.bytes["kv_cache"].get("hbm", 0) > 0
    assert small.spilled and any("spilled" in n for n in small.notes())
    # Neither tier holds them: overflow, reported in every estimate and charged, not hidden.
    none = chip_with(hbm=1.5e6, ddr=1e6)
    pp = perf.program_perf(g, none, perf.Options())
    assert pp.overflow and any("OVERFLOW" in n for n in pp.notes)
    assert pp.step_s > perf.program_perf(g, chip_with(hbm=1.5e6), perf.Options()).step_s


def test_sram_overflow_spills_and_is_reported():
    def chain(x):  # ten values of the same size live per tile
        for _ in range(10):
            x = jnp.tanh(x) * 1.5
        return x

    g = lower(chain, jax.ShapeDtypeStruct((4096, 4096), jnp.float32))  # 64 MiB per value
    assert not any(k.spill_bytes for k in perf.program_perf(g, hw.SN40L).kernels)
    # Two PMUs: one tile (half a 260 MiB PMU) holds all ten values, 640 MiB > 520 MiB of SRAM.
    pp = perf.program_perf(g, dataclasses.replace(hw.SN40L, pmus=2))
    assert any(k.spill_bytes > 0 for k in pp.kernels)
    assert any("SRAM overflow" in n for n in pp.notes)


def test_copy_ddr_to_hbm_uses_every_socket():
    c = dataclasses.replace(hw.SN40L, params=hw.ModelParameters(ddr_efficiency=0.8,
                                                                ddr_peak_factor=1.25))
    assert copy_seconds(16e9, c, 8) == pytest.approx(16e9 / (8 * 200e9))
    assert copy_seconds(16e9, c, 1) == pytest.approx(8 * copy_seconds(16e9, c, 8))


@pytest.fixture(scope="module")
def graphs():
    g = lower(decode, *decode_args(layers=8, d=4096, ctx=128), roles=ROLES)
    pre = lower(decode, *decode_args(layers=8, d=4096, ctx=128)[:2],
                jax.ShapeDtypeStruct((64,), jnp.int32), roles=ROLES)
    return pre, pre, g  # router, expert prefill, expert decode


def test_coe_expert_that_does_not_fit_hbm_is_charged_the_ddr_path(graphs):
    router, pre, dec = graphs
    expert = (8 * 4096 + 16) * 4096 * 2.0
    scenario = coe.CoEScenario(experts=10, expert_bytes=expert, batch=4, output_tokens=5)
    opts = perf.Options(sockets=2, parallel="tensor", orchestration="hardware")
    big = coe.rdu_node(hw.SN40L, 2)
    t_big = coe.rdu_expert_times(router, pre, dec, big, scenario, opts)
    r_big = coe.coe_latency(big, scenario, t_big)
    assert r_big.plan.fits_hbm and r_big.plan.tier == "hbm" and r_big.switch_s > 0
    assert r_big.switch_s == pytest.approx(copy_seconds(expert, hw.SN40L, 2))
    # HBM holds the router but not one expert: no copy; the expert streams from DDR.
    small = coe.rdu_node(chip_with(hbm=1.5 * expert / 2), 2)
    t_small = coe.rdu_expert_times(router, pre, dec, small, scenario, opts)
    r_small = coe.coe_latency(small, scenario, t_small)
    assert not r_small.plan.fits_hbm and r_small.plan.tier == "ddr" and r_small.switch_s == 0
    ratio = hw.SN40L.hbm_bytes_per_s / hw.SN40L.ddr_bytes_per_s
    assert t_small.decode_s > 0.5 * ratio * t_big.decode_s  # weights at DDR, not HBM, speed
    # DGX: an expert larger than its HBM crosses the host link at every decode step.
    gpu = coe.dgx(dataclasses.replace(hw.A100_80GB, hbm_bytes=expert / 16), 8)
    tg = coe.gpu_expert_times(router, pre, dec, gpu, scenario)
    assert tg.offload_s == pytest.approx(expert / gpu.copy_bytes_per_s)


def test_coe_store_overflow_reported_and_switches_counted(graphs):
    router, pre, dec = graphs
    node = coe.rdu_node(chip_with(ddr=1e8), 1)
    scenario = coe.CoEScenario(experts=50, expert_bytes=8e6, batch=8)
    plan = coe.plan_experts(node, scenario)
    assert plan.in_store == 12 and plan.overflow == 38
    assert coe.expected_distinct(150, 8) == pytest.approx(150 * (1 - (149 / 150) ** 8))
    t = coe.ExpertTimes(router_s=1e-3, prefill_s=1e-3, decode_s=1e-4)
    r = coe.coe_latency(node, scenario, t)
    assert r.per_request_s == pytest.approx(r.router_s + r.switching_s + r.prefill_s + r.decode_s)
    assert "overflow 38" in r.summary()


def test_dgx_copies_over_at_most_one_link_per_pcie_switch():
    """Two GPUs share a PCIe switch's uplink: 8 GPUs copy over at most 4 links, 2 GPUs over 1;
    each link at the pinned-copy efficiency of its datasheet rate."""
    params = dataclasses.replace(hw.A100_80GB.params, host_copy_links=4.0,
                                 pcie_copy_efficiency=0.75)
    gpu = dataclasses.replace(hw.A100_80GB, params=params)
    assert coe.dgx(gpu, 8).copy_bytes_per_s == pytest.approx(4 * 0.75 * 32e9)
    assert coe.dgx(gpu, 2).copy_bytes_per_s == pytest.approx(1 * 0.75 * 32e9)
    fewer = dataclasses.replace(gpu, params=dataclasses.replace(params, host_copy_links=1.5))
    assert coe.dgx(fewer, 8).copy_bytes_per_s == pytest.approx(1.5 * 0.75 * 32e9)
    h100 = dataclasses.replace(hw.H100, params=params)  # PCIe 5: twice the link rate
    assert coe.dgx(h100, 8).copy_bytes_per_s == pytest.approx(2 * coe.dgx(gpu, 8).copy_bytes_per_s)
