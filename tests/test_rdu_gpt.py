"""The backend on the project's GPT: execute == XLA on the tiny train step, sparsity monotone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdu_xla_backend import hardware as hw
from rdu_xla_backend.cost import gpu as gpu_model
from rdu_xla_backend.cost import rdu as perf
from rdu_xla_backend.execute import execute
from rdu_xla_backend.workload.rules import CALL_RULES
from sparsetrain.config import load_recipe
from sparsetrain.kernels.block_sparse import CALL_NAMES, block_sparse_matmul_forward
from sparsetrain.models.gpt import GPTSpec, build_model
from sparsetrain.rdu.programs import lower_program, program_roles
from sparsetrain.training.optim import make_optimizer
from sparsetrain.sparsity import block_sparse_matmul, make_layout
from sparsetrain.training.step import ModelFunctions, init_state, make_train_step
from tests.conftest import tiny_recipe


@pytest.fixture(scope="module")
def tiny_step(tmp_path_factory):
    """(jitted train step, state, batch) of the 2-layer, 64-wide sparse GPT of the test recipe."""
    tmp = tmp_path_factory.mktemp("rdu")
    cfg = load_recipe(tiny_recipe(tmp, tmp), check_data=False)
    fns = ModelFunctions(build_model(GPTSpec.from_config(cfg), 0))
    tx, schedule = make_optimizer(cfg.optimizer, cfg.run.steps)
    state = init_state(fns, tx, 0)
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.integers(0, 300, (4, 32)), jnp.int32) for k in ("tokens", "targets")}
    return make_train_step(fns, tx, schedule), state, batch


def lower(step, state, batch, **kwargs):
    """The train step lowered with its roles (params: weights, opt_state: optimizer state)."""
    return lower_program(step, state, batch, roles=program_roles("train"), **kwargs)


def test_execute_equals_xla_on_the_tiny_train_step(tiny_step):
    step, state, batch = tiny_step
    graph = lower(step, state, batch)
    assert [k.name.split(".")[0] for k in graph.kernels].count("layers") == 2
    out, counters = execute(graph, state, batch, chip=hw.SN40L)
    ref = jax.jit(lambda s, b: step(s, b))(state, batch)  # same step, no buffer donation
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        a, b = np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
                          else a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert out[1]["loss"] == pytest.approx(float(ref[1]["loss"]), rel=1e-6)
    assert sum(c.flops for c in counters) == pytest.approx(graph.flops)
    assert sum(c.gather_cycles for c in counters) > 0  # the sparse gathers, from real indices
    # Unfused execution gives the same numbers too.
    out_u, _ = execute(lower(step, state, batch, mode="unfused"), state, batch, timed=False)
    np.testing.assert_allclose(out_u[1]["loss"], ref[1]["loss"], rtol=1e-6)


def test_tiny_step_perf_properties(tiny_step):
    step, state, batch = tiny_step
    fused = perf.program_perf(lower(step, state, batch), hw.SN40L)
    unfused = perf.program_perf(lower(step, state, batch, mode="unfused"), hw.SN40L)
    assert fused.step_s <= unfused.step_s
    for k in fused.kernels + unfused.kernels:
        assert k.flops <= hw.SN40L.peak_bf16_flops * k.time_s
    assert fused.bound == "launch"  # a tiny step is all launch gaps
    assert any(k.gather_cycles > 0 for k in fused.kernels)


def sparse_linear_step(density):
    layout = make_layout("random_balanced", (256, 256), (16, 16), density,
                         key=jax.random.key(0))
    x = jnp.ones((64, 256), jnp.float32)
    values = jnp.ones(layout.values_shape, jnp.float32)

    def loss(v, x, rows):
        lay = type(layout)(rows, layout.shape, layout.block)
        return jnp.sum(block_sparse_matmul(x, v, lay) ** 2)

    return lower_program(jax.grad(loss), values, x, layout.row_indices,
                         roles=("weights", "activations", "activations"))


def test_more_sparsity_never_more_flops_or_bytes():
    graphs = [sparse_linear_step(d) for d in (1.0, 0.5, 0.25, 0.125)]
    flops = [g.flops for g in graphs]
    op_bytes = [sum(op.total_bytes * k.trips for k in g.kernels for op in k.ops) for g in graphs]
    rdu = [perf.program_perf(g, hw.SN40L) for g in graphs]
    off = [sum(k.offchip_bytes for k in p.kernels) for p in rdu]
    gpu = [gpu_model.gpu_perf(g, hw.A100_80GB).bytes for g in graphs]
    for series in (flops, op_bytes, off, gpu):
        assert all(a >= b for a, b in zip(series, series[1:])), series
    assert flops[0] > 4 * flops[-1]


def test_the_lowering_knows_the_block_sparse_call_names():
    """The RDU lowering prices block-sparse matmuls by the names of their calls: the names the
    kernels use must be the ones sparsetrain's glue registered rules for."""
    assert set(CALL_NAMES) <= set(CALL_RULES)
    x2, values = jnp.ones((4, 32)), jnp.ones((2, 1, 16, 16))
    jaxpr = jax.make_jaxpr(block_sparse_matmul_forward)(x2, values, jnp.zeros((2, 1), jnp.int32))
    assert [e.params.get("name") for e in jaxpr.eqns] == [CALL_NAMES[0]]
