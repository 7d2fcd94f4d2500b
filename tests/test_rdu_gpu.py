"""GPU training baseline: GEMM efficiency, memory per GPU, plans that fit, Megatron-LM Table 1."""

import dataclasses

import pytest

from rdu_xla_backend import hardware as hw
from rdu_xla_backend import ranges
from rdu_xla_backend.calibrate import megatron as mg
from rdu_xla_backend.cost import gpu_kernels as gk
from rdu_xla_backend.cost import gpu_training as gt
from rdu_xla_backend.mapping import gpu_plan as gp

A100 = hw.A100_80GB


def test_gemm_efficiency_rises_with_size_and_never_exceeds_the_achievable_peak():
    sizes = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    eff = [gk.gemm_efficiency(n, n, n, A100) for n in sizes]
    assert all(b >= a for a, b in zip(eff, eff[1:]))
    assert eff[0] < 0.05 and eff[-1] > 0.9 * A100.params.achievable_compute_fraction
    for m, n, k in [(1, 4096, 4096), (2048, 2304, 6912), (8192, 25600, 3200), (7, 13, 1e5)]:
        e = gk.gemm_efficiency(m, n, k, A100)
        assert 0 < e <= A100.params.achievable_compute_fraction
    # Wave quantisation: 108 tiles of 256 x 128 fill one wave of the 108 SMs exactly; one row
    # more needs more tiles than SMs (with any tile), so efficiency drops by more than 5%.
    full = gk.gemm_efficiency(256 * 12, 128 * 9, 4096, A100)
    assert gk.gemm_efficiency(256 * 12 + 1, 128 * 9, 4096, A100) < 0.95 * full
    assert full > 0.9 * A100.params.achievable_compute_fraction


def test_memory_per_gpu_matches_a_hand_count():
    # GPT with h = 1024, 16 heads, 8 layers, V = 1000, s = 512; t = 2, p = 2, b = 4.
    model = gp.Transformer(8, 1024, 16, 1000, 512, name="small")
    plan = gp.GpuPlan(2, 2, 1, 4, 32, recompute=False, attention="unfused")
    h, s, b, t, a = 1024, 512, 4, 2, 16
    layer = 12 * h * h + 13 * h
    params = 4 * layer / t + (1000 + 512) * h / t
    act_layer = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))  # [ACT] Eq. 2
    in_flight = min(32 // 4, 2)  # first stage of 1F1B holds p micro-batches
    mem = gp.memory(model, plan, A100)
    assert mem["weights+grads"] + mem["optimizer"] == pytest.approx(16 * params)
    assert mem["activations"] == pytest.approx(4 * act_layer * in_flight)
    assert mem["logits"] == pytest.approx(8 * b * s * 1000 / t)
    rec = gp.memory(model, dataclasses.replace(plan, recompute=True), A100)
    assert rec["activations"] == pytest.approx(2 * s * b * h * 4 * in_flight + act_layer)
    fused = gp.memory(model, dataclasses.replace(plan, attention="fused"), A100)
    assert fused["activations"] < mem["activations"]


def test_a_plan_that_does_not_fit_is_refused_and_re_planned():
    model = mg.ROWS[-1].model  # GPT 1T
    bad = dataclasses.replace(mg.ROWS[-1].plan, recompute=False)
    with pytest.raises(gp.PlanDoesNotFit, match="needs .* GB per GPU > 80 GB"):
        gp.require_fit(model, bad, A100)
    gp.require_fit(model, mg.ROWS[-1].plan, A100)  # the published plan (with recompute) fits
    # GPT-3 13B with Adam cannot train on one node without splitting the model: one GPU
    # refuses every plan, and the smallest count that fits is found and re-planned on.
    gpt13 = gp.Transformer(40, 5120, 40, 51200, 2048, name="13B")
    with pytest.raises(gp.PlanDoesNotFit):
        gt.choose_plan(gpt13, 1, 64, A100)
    n = gp.smallest_gpus(gpt13, 64, A100, 1)
    assert n > 1 and 16 * gpt13.params / n < A100.hbm_bytes
    step, notes = gt.choose_plan(gpt13, n, 64, A100)
    assert step.memory_bytes <= A100.hbm_bytes and "refused" in notes[0]


def test_bubble_and_interleaving_follow_the_closed_form():
    model = gp.Transformer(16, 2048, 16, 51200, 2048)
    base = gp.GpuPlan(8, 4, 1, 1, 16, chunks=1)
    inter = dataclasses.replace(base, chunks=2)
    assert base.bubble_fraction == pytest.approx(3 / (16 + 3))
    assert inter.bubble_fraction == pytest.approx(3 / (32 + 3))
    a, b = gt.step_time(model, base, A100), gt.step_time(model, inter, A100)
    assert b.parts["bubble"] < a.parts["bubble"] and b.parts["pp_comm"] > a.parts["pp_comm"]


def test_fused_attention_is_faster_than_unfused():
    model = gp.Transformer(4, 2048, 16, 51200, 4096)
    plan = gp.GpuPlan(1, 1, 1, 1, 8)
    fused = gt.step_time(model, plan, A100).step_s
    unfused = gt.step_time(model, dataclasses.replace(plan, attention="unfused"), A100).step_s
    assert fused < unfused


@pytest.mark.parametrize("row", mg.ROWS, ids=lambda r: f"{r.params_b:g}B")
def test_megatron_table1_rows_within_10_percent(row):
    est = mg.estimate_tflops(row, A100)
    assert abs(est / row.tflops - 1) <= 0.10
    # The plan, the FLOP count and the time are consistent: [MEG] Eq. 3 over GPUs x time.
    step = gt.step_time(row.model, row.plan, A100)
    assert step.flops_per_gpu <= A100.peak_bf16_flops * step.step_s


def test_megatron_cases_and_params_are_fit_ready():
    cases = mg.megatron_cases()
    assert len(cases) == 10 and all(c.source == mg.SOURCE for c in cases)
    assert cases[0].estimate({"a100": A100}) == pytest.approx(mg.estimate_tflops(mg.ROWS[0], A100))
    for p in mg.PARAMS:
        r = ranges.parameter_range("gpu", p.name)
        value = getattr(A100.params, p.name)
        assert (p.low, p.high) == (r.low, r.high) and r.low < value < r.high and p.source


def test_lowered_matmuls_carry_their_gemm_shape():
    import jax
    import jax.numpy as jnp

    from rdu_xla_backend.workload.lowering import lower

    def f(x, w, q, k):
        return jnp.tanh(x @ w).sum() + jnp.einsum("bhsd,bhtd->bhst", q, k).sum()

    g = lower(f, jax.ShapeDtypeStruct((96, 48), jnp.bfloat16),
              jax.ShapeDtypeStruct((48, 80), jnp.bfloat16),
              jax.ShapeDtypeStruct((2, 3, 16, 8), jnp.bfloat16),
              jax.ShapeDtypeStruct((2, 3, 24, 8), jnp.bfloat16))
    dots = [op for kern in g.kernels for op in kern.ops if op.kind == "matmul"]
    assert sorted(op.gemm for op in dots) == [(1, 96, 80, 48), (6, 16, 24, 8)]
    for op in dots:
        batch, m, n, k = op.gemm
        assert op.flops == 2 * batch * m * n * k


def test_block_sparse_gemms_are_less_efficient_than_dense_ones():
    # One 64-wide output block per column of a 1/8-dense layer vs the dense GEMM.
    dense = gk.gemm_efficiency(2048, 4096, 4096, A100)
    per_block = gk.gemm_efficiency(2048, 64, 4096 // 8, A100, batch=4096 // 64)
    assert per_block < dense


def test_megatron_validation_row_is_predicted_within_10_percent():
    (case,) = mg.megatron_cases(rows=mg.VALIDATION_ROWS, source=mg.VALIDATION_SOURCE)
    assert case.source == mg.VALIDATION_SOURCE
    assert abs(case.estimate({"a100": A100}) / case.published - 1) <= 0.10
