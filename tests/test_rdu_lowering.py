"""jaxpr -> dataflow graph: rules, loops, fusion, errors (small functions, no sparsetrain)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Primitive

from rdu_xla_backend.workload import lowering
from rdu_xla_backend.workload.lowering import UnsupportedPrimitiveError, lower
from rdu_xla_backend.workload.operators import VIEWS


def mlp_stack(ws, x):
    """Three dense layers in a scan, then a loss: one loop kernel plus glue."""
    def layer(h, w):
        return jax.nn.gelu(h @ w), None
    h, _ = jax.lax.scan(layer, x, ws)
    return jnp.mean(h ** 2)


WS = jax.ShapeDtypeStruct((3, 64, 64), jnp.float32)
X = jax.ShapeDtypeStruct((32, 64), jnp.float32)


def test_dot_flops_and_bytes():
    g = lower(lambda a, b: a @ b, jax.ShapeDtypeStruct((8, 16), jnp.float32),
              jax.ShapeDtypeStruct((16, 4), jnp.bfloat16))
    ops = [op for k in g.kernels for op in k.ops if op.kind == "matmul"]
    assert len(ops) == 1 and ops[0].flops == 2 * 8 * 16 * 4
    assert g.flops >= 2 * 8 * 16 * 4
    # Reads both operands, writes the product.
    (k,) = g.kernels
    assert sum(g.tensors[t].nbytes for t in k.reads) >= 8 * 16 * 4 + 16 * 4 * 2


def test_scan_becomes_one_looped_kernel_and_unfused_splits_ops():
    fused = lower(jax.value_and_grad(mlp_stack), WS, X)
    loops = [k for k in fused.kernels if k.trips > 1]
    assert [k.trips for k in loops] == [3, 3]  # forward and backward layer loops
    assert {k.phase for k in loops} == {"forward", "backward"}
    unfused = lower(jax.value_and_grad(mlp_stack), WS, X, mode="unfused")
    calls = lambda g: sum(k.calls * k.calls_per_trip for k in g.kernels)
    assert calls(unfused) > 3 * calls(fused)
    assert unfused.flops == pytest.approx(fused.flops)
    # One kernel per operator: a matmul (with the views addressing its operands), or a run of
    # element-wise ops and reductions.
    for k in unfused.kernels:
        kinds = [op.kind for op in k.ops if op.primitive not in VIEWS]
        assert "free" not in kinds and (kinds == ["matmul"]) == ("matmul" in kinds)
        assert kinds == ["matmul"] or set(kinds) <= {"vector", "transcendental", "reduce", "memory"}
    # 3 layers x (forward dot + 2 backward dots) x 2 * 32 * 64 * 64
    dots = sum(op.total_flops * k.calls * k.trips for k in fused.kernels for op in k.ops
               if op.kind == "matmul")
    assert dots == 3 * 3 * 2 * 32 * 64 * 64


def test_update_phase_after_backward():
    def step(ws, x):
        loss, g = jax.value_and_grad(mlp_stack)(ws, x)
        return ws - 0.1 * g, loss

    g = lower(step, WS, X)
    phases = [k.phase for k in g.kernels]
    assert phases[-1] == "update" and "backward" in phases and phases[0] == "forward"


def test_unknown_primitive_raises_with_its_name():
    mystery = Primitive("mystery_op")
    mystery.def_abstract_eval(lambda x: x)
    mystery.def_impl(lambda x: x)
    with pytest.raises(UnsupportedPrimitiveError, match="mystery_op"):
        lower(lambda x: mystery.bind(x) + 1.0, jax.ShapeDtypeStruct((4,), jnp.float32))
    with pytest.raises(ValueError, match="allowed"):
        lower(lambda x: x, X, mode="spatial")


def test_while_loop_is_refused_not_skipped():
    def f(x):
        return jax.lax.while_loop(lambda c: c[0] < c[1], lambda c: (c[0] + 1, c[1]), (0, x))[0]
    with pytest.raises(UnsupportedPrimitiveError, match="while"):
        lower(f, jax.ShapeDtypeStruct((), jnp.int32))


def test_gather_origin_followed_to_concrete_argument():
    rows = np.array([[0, 2], [1, 3]], np.int32)

    def f(x, r):
        xb = x.reshape(8, 4, 16)
        def col(c, j):
            return c, jnp.take(xb, r[j], axis=1, mode="clip")
        return jax.lax.scan(col, 0.0, jnp.arange(2))[1].sum()

    g = lower(f, jnp.ones((8, 64)), rows)
    gathers = [op for k in g.kernels for op in k.ops if op.gather is not None]
    assert gathers and gathers[0].gather.origin == 1
    assert (gathers[0].gather.tokens, gathers[0].gather.rows, gathers[0].gather.run) == (8, 4, 16)
    np.testing.assert_array_equal(g.concrete[1], rows)
    abstract = lower(f, *lowering.abstract_like((jnp.ones((8, 64)), rows)))
    assert abstract.concrete == {}


def test_generated_masks_are_not_stored():
    def f(x):
        mask = jnp.tril(jnp.ones((256, 256), bool))
        return jnp.where(mask, x, 0.0).sum()
    g = lower(f, jax.ShapeDtypeStruct((256, 256), jnp.float32))
    big = [t for t in g.tensors.values() if t.shape == (256, 256) and t.dtype == "bool"]
    assert all(t.generated for t in big)
