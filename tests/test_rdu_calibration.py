"""Calibration machinery: known parameters are recovered; the table holds every published case."""

import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from rdu_xla_backend.calibrate import fit
from rdu_xla_backend.cost import rdu as perf
from rdu_xla_backend import hardware as hw
from rdu_xla_backend.workload.lowering import lower

ROOT = Path(__file__).resolve().parents[1]


def load_calibration():
    spec = importlib.util.spec_from_file_location("calibration", ROOT / "benchmarks" /
                                                  "calibration.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def stack(ws, x):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]


def test_fit_recovers_known_parameters_from_synthetic_cases():
    graphs = [lower(stack, jax.ShapeDtypeStruct((n, d, d), jnp.bfloat16),
                    jax.ShapeDtypeStruct((1, d), jnp.bfloat16)) for n, d in ((4, 4096), (32, 512))]
    params = [fit.Param("launch_seconds_software", "rdu", 1e-6, 1e-3),
              fit.Param("launch_seconds_hardware", "rdu", 1e-7, 1e-4),
              fit.Param("hbm_efficiency", "rdu", 0.3, 1.0)]
    truth = {"launch_seconds_software": 4e-5, "launch_seconds_hardware": 3e-6,
             "hbm_efficiency": 0.7}
    chips = {"sn40l": hw.SN40L}

    def case(i, g, orch, looping):
        def estimate(c):
            return perf.program_perf(g, c["sn40l"], perf.Options(
                orchestration=orch, kernel_looping=looping)).step_s
        return fit.Case(f"c{i}", "synthetic", "", 0.0, "s", estimate)

    cases = [case(i, g, o, lp) for i, (g, o, lp) in enumerate(
        (g, o, lp) for g in graphs for o in ("software", "hardware") for lp in (True, False))]
    published = fit.evaluate(cases, chips, params, truth)
    for c in cases:
        c.published = published[c.name]
    start = {"launch_seconds_software": 1e-5, "launch_seconds_hardware": 1e-6,
             "hbm_efficiency": 0.9}
    result = fit.fit(cases, chips, params, [start], iters=400)
    for name, value in truth.items():
        assert result.values[name] == pytest.approx(value, rel=0.02), name
    assert max(abs(e) for e in result.errors.values()) < 0.5
    assert result.loss < 1e-5


def test_case_errors_and_parameter_transform():
    point = fit.Case("p", "", "", 2.0, "x", lambda c: 0.0)
    band = fit.Case("r", "", "", (1.5, 3.0), "x", lambda c: 0.0)
    assert fit.error_percent(point, 2.2) == pytest.approx(10.0)
    assert fit.error_percent(band, 2.0) == 0.0 and fit.error_percent(band, 6.0) == pytest.approx(100)
    assert fit.error_percent(band, 1.2) == pytest.approx(-20.0)
    p = fit.Param("hbm_efficiency", "rdu", 0.5, 1.0)
    for v in (0.51, 0.8, 0.99):
        assert p.from_unit(p.to_unit(v)) == pytest.approx(v)
    assert 0.5 < p.from_unit(40.0) <= 1.0 and 0.5 <= p.from_unit(-40.0) < 1.0
    chips = fit.apply({"sn40l": hw.SN40L, "h100": hw.H100},
                      [p, fit.Param("launch_sync_seconds", "gpu", 1e-7, 1e-4)],
                      {"hbm_efficiency": 0.7, "launch_sync_seconds": 2e-6})
    assert chips["sn40l"].params.hbm_efficiency == 0.7 and chips["h100"].launch_sync_seconds == 2e-6
    x, fx = fit.nelder_mead(lambda v: float(((v - 3.0) ** 2).sum()), jnp.zeros(2).__array__())
    assert fx < 1e-6 and abs(x - 3.0).max() < 1e-3


def test_calibration_table_has_every_published_case():
    cal = load_calibration()
    names = [s[0] for s in cal.SPECS]
    assert len(names) == len(set(names)) == 15
    published = {s[0]: s[3] for s in cal.SPECS}
    # The five measurement groups of shared/research/hardware.md.
    assert published["decode_8b_16s"] == 1042.0
    assert published["coe_vs_dgx_a100"] == 6.6 and published["coe_vs_dgx_h100"] == 3.7
    assert published["fusion_prefill"] == published["fusion_train"] == (1.5, 3.0)
    assert published["fusion_sparse_train"] == (1.5, 3.0)
    assert published["fusion_decode"] == (1.0, 13.0)
    assert published["ho_vs_so_decode"] == (1.4, 8.0)
    assert published["ho_vs_so_other"] == (1.0, 1.1)
    assert published["kernel_calls_prefill"] == 11.0 and published["switch_8b"] == 0.01
    assert published["looping_gain_1s"] == 2.2 and published["gpu_decode_bw"] == 0.21
    assert published["peak_fraction_8s"] == published["peak_fraction_16s"] == (0.9, 1.0)
    cases = cal.make_cases({n: (lambda c, v=i: v + 1.0) for i, n in enumerate(names)})
    estimates = {c.name: c.estimate({}) for c in cases}
    text = cal.table(cases, estimates, cal.DEFAULT_START)
    for n in names:
        assert f"| {n} |" in text
    for p in cal.PARAMS:
        assert p.name in text
        assert p.low <= cal.DEFAULT_START[p.name] <= p.high
    assert "within ±20%" in text and all(math.isfinite(v) for v in estimates.values())
