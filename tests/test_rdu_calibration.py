"""Calibration: bounded fit, leave-one-out, validation, cases and ranges from the package.

Synthetic cases only (toy graphs timed by the emulator, published values made from known
parameters): the suite's real 13B lowering is the benchmark's job, not the tests'.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdu_xla_backend import hardware as hw
from rdu_xla_backend import ranges
from rdu_xla_backend.calibrate import cases, fit, programs, suite, tables, validation
from rdu_xla_backend.cost import rdu as perf
from rdu_xla_backend.workload.lowering import lower


def stack(ws, x):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]


def stack_args(n, d):
    return (jax.ShapeDtypeStruct((n, d, d), jnp.bfloat16),
            jax.ShapeDtypeStruct((1, d), jnp.bfloat16))


@pytest.fixture(scope="module")
def graphs():
    return [lower(stack, *stack_args(n, d)) for n, d in ((4, 4096), (32, 512))]


def synthetic_case(name, graph, sockets=1, **options):
    def estimate(c):
        opts = perf.Options(sockets=sockets, parallel="tensor", **options)
        return perf.program_perf(graph, c["sn40l"], opts).step_s
    return fit.Case(name, "synthetic", "", 0.0, "s", estimate)


def publish(cs, params, truth):
    published = fit.evaluate(cs, {"sn40l": hw.SN40L}, params, truth)
    for c in cs:
        c.published = published[c.name]
    return cs


def test_fit_recovers_known_parameters_from_synthetic_cases(graphs):
    params = [fit.Param.of("rdu", n) for n in
              ("launch_seconds_software", "launch_seconds_hardware", "hbm_efficiency")]
    truth = {"launch_seconds_software": 30e-6, "launch_seconds_hardware": 3e-6,
             "hbm_efficiency": 0.88}
    cs = publish([synthetic_case(f"c{i}", g, orchestration=o, kernel_looping=lp)
                  for i, (g, o, lp) in enumerate((g, o, lp) for g in graphs
                                                 for o in ("software", "hardware")
                                                 for lp in (True, False))], params, truth)
    start = {"launch_seconds_software": 10e-6, "launch_seconds_hardware": 1e-6,
             "hbm_efficiency": 0.9}
    result = fit.fit(cs, {"sn40l": hw.SN40L}, params, [start], iters=400)
    for name, value in truth.items():
        assert result.values[name] == pytest.approx(value, rel=0.02), name
    assert max(abs(e) for e in result.errors.values()) < 0.5 and not result.at_bound


def test_fit_stays_inside_bounds_and_reports_a_bound_hit(graphs):
    """Published times that need an HBM efficiency of 0.6 (below the plausible 0.85): the fit
    stops at the bound and says so instead of accepting a non-physical value."""
    p = fit.Param.of("rdu", "hbm_efficiency")
    cs = [synthetic_case("slow", graphs[0], kernel_looping=True)]
    truth = cs[0].estimate({"sn40l": dataclasses.replace(
        hw.SN40L, params=dataclasses.replace(hw.SN40L.params, hbm_efficiency=0.6))})
    cs[0].published = truth
    result = fit.fit(cs, {"sn40l": hw.SN40L}, [p], [{p.name: 0.9}], iters=200)
    assert p.low <= result.values[p.name] <= p.high
    assert result.at_bound == {p.name: "low"}
    assert result.errors["slow"] < -5  # estimate stays faster than published: visibly missed
    assert p.at_bound(0.9) == "" and p.at_bound(p.high) == "high"


def test_leave_one_out_recovers_parameters_and_exposes_an_unconstrained_case(graphs):
    """Three parameters; the hop latency is informed by one case only. Leaving a well-covered
    case out still predicts it; leaving the lone hop case out falls back to the assumed hop
    latency and shows a larger error."""
    params = [fit.Param.of("rdu", n) for n in
              ("launch_seconds_hardware", "hbm_efficiency", "inter_socket_latency_seconds")]
    truth = {"launch_seconds_hardware": 3e-6, "hbm_efficiency": 0.93,
             "inter_socket_latency_seconds": 2.5e-6}
    tp = lower(stack, *stack_args(8, 1024))  # a layer loop: two all-reduces per trip
    assert any(k.collectives for k in tp.kernels)
    cs = [synthetic_case(f"g{i}_{lp}", g, orchestration="hardware", kernel_looping=lp)
          for i, g in enumerate(graphs) for lp in (True, False)]
    cs.append(synthetic_case("hops", tp, sockets=8, orchestration="hardware",
                             kernel_looping=False))
    publish(cs, params, truth)
    result = suite.run([suite.Group("synthetic", cs, params)], {"sn40l": hw.SN40L},
                       iters=250, loo_iters=150, prior_weight=1e-3, log=lambda s: None)
    loo = {r.name: r for r in result.loo}
    assert set(loo) == {c.name for c in cs}
    assert result.full.values["hbm_efficiency"] == pytest.approx(0.93, rel=0.02)
    well = [abs(loo[n].error_percent) for n in loo if n != "hops"]
    assert max(well) < 2.0
    assert abs(loo["hops"].error_percent) > 3 * max(max(well), 0.3)
    assert result.constraints == {"point_cases": 5, "point_cases_on_parameters": 5,
                                  "range_cases": 0, "parameters": 3,
                                  "parameters_a_point_case_informs": 3}
    assert result.informed_by("inter_socket_latency_seconds") == ["hops"]
    assert "g0_True" in result.informed_by("hbm_efficiency")
    mean, worst = result.loo_summary()
    assert worst == pytest.approx(abs(loo["hops"].error_percent)) and mean < worst
    text = tables.markdown(result)
    assert "Leave-one-out over the 5 point cases" in text and "| hops |" in text
    assert "at a bound (a missing mechanism): none" in text


def test_every_parameter_has_a_range_and_a_source():
    for target, cls in (("rdu", hw.ModelParameters), ("gpu", hw.GpuParameters)):
        for f in dataclasses.fields(cls):
            r = ranges.parameter_range(target, f.name)
            assert r.low < r.high and r.low <= r.assumed <= r.high, f.name
            assert len(r.source) > 20, f.name
            default = getattr(cls(), f.name)
            if default is not None:
                assert r.low <= default <= r.high, f"{f.name} default outside its range"
    with pytest.raises(KeyError, match="no plausible range"):
        ranges.parameter_range("rdu", "not_a_field")
    for p in cases.PARAMS:
        r = ranges.parameter_range(p.target, p.name)
        assert (p.low, p.high, p.source) == (r.low, r.high, r.source)


def test_cases_and_validation_load_from_the_package():
    published = {p.name: p.published for p in cases.CASES}
    assert len(published) == len(cases.CASES) == 15
    assert published["decode_8b_16s"] == 1042.0  # [SN40L] Table IV
    assert published["coe_vs_dgx_a100"] == 6.6 and published["coe_vs_dgx_h100"] == 3.7
    assert published["fusion_prefill"] == published["fusion_sparse_train"] == (1.5, 3.0)
    assert published["ho_vs_so_decode"] == (1.4, 8.0) and published["ho_vs_so_other"] == (1, 1.1)
    assert published["looping_gain"] == (1.0, 2.2)  # "up to 2.2x": a bound, not a point
    assert published["switch_8b"] == 0.01 and published["gpu_decode_bw"] == 0.21
    names = {p.name for p in validation.VALIDATION}
    assert not names & set(published)  # validation is never fitted
    for p in cases.CASES + validation.VALIDATION:
        assert p.source and p.inputs and p.how
    # Every case and validation row has an estimator on the programs declared with it.
    keys = {**cases.PROGRAMS, **validation.PROGRAMS}
    fake = {k: object() for k in keys} | {k + "_u": object() for k, p in keys.items() if p.unfused}
    assert set(cases.estimators(fake)) == set(published)
    assert set(validation.estimators(fake)) == names


def test_build_graphs_lowers_through_the_builder_once():
    calls = []

    def builder(recipe, mode, overrides):
        calls.append((recipe, mode, tuple(overrides)))
        return stack, stack_args(2, 64), None  # no roles: inferred from dtypes

    progs = {"a": programs.Program("x.yaml", "decode", ("data.seq_len=8",), unfused=True),
             "b": programs.Program("y.yaml", "train")}
    g = programs.build_graphs(builder, progs, log=lambda s: None)
    assert set(g) == {"a", "a_u", "b"} and len(calls) == 2
    assert calls[0] == ("x.yaml", "decode", ("data.seq_len=8",))
    programs.build_graphs(builder, progs, log=lambda s: None, graphs=g)
    assert len(calls) == 2  # already lowered: not again


def test_case_errors_and_parameter_transform():
    point = fit.Case("p", "", "", 2.0, "x", lambda c: 0.0)
    band = fit.Case("r", "", "", (1.5, 3.0), "x", lambda c: 0.0)
    assert point.is_point and not band.is_point
    assert fit.error_percent(point, 2.2) == pytest.approx(10.0)
    assert fit.error_percent(band, 2.0) == 0.0
    assert fit.error_percent(band, 6.0) == pytest.approx(100)
    assert fit.error_percent(band, 1.2) == pytest.approx(-20.0)
    p = fit.Param.of("rdu", "hbm_efficiency")
    for v in (0.86, 0.9, 0.96):
        assert p.from_unit(p.to_unit(v)) == pytest.approx(v)
    assert p.low < p.from_unit(40.0) <= p.high and p.low <= p.from_unit(-40.0) < p.high
    chips = fit.apply({"sn40l": hw.SN40L, "h100": hw.H100},
                      [p, fit.Param.of("gpu", "launch_sync_seconds")],
                      {"hbm_efficiency": 0.88, "launch_sync_seconds": 4e-6})
    assert chips["sn40l"].params.hbm_efficiency == 0.88
    assert chips["h100"].launch_sync_seconds == 4e-6
    x, fx = fit.nelder_mead(lambda v: float(((v - 3.0) ** 2).sum()), np.zeros(2))
    assert fx < 1e-6 and abs(x - 3.0).max() < 1e-3
    assert math.isclose(suite.assumed_values([p])["hbm_efficiency"], 0.9)
    # A group may bring a parameter with its own range and assumed value.
    own = fit.Param("gemm_fraction", "gpu", 0.5, 0.9, "a cited source", 0.7)
    assert suite.assumed_values([own]) == {"gemm_fraction": 0.7}
