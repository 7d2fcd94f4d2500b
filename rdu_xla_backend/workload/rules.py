"""Primitive rules: the FLOPs, bytes and unit of every jaxpr primitive a kernel may contain.

Every primitive needs a rule (``op_of_eqn``): which unit runs it (``graph.KINDS``), its FLOPs and
the bytes it reads and writes per execution. An op without a rule raises
``UnsupportedPrimitiveError`` naming it: silently skipping work would make every estimate wrong.
A named call (a jit's name) may have a rule registered by a library (``register_call_rule``): it is
then costed by that rule as one fused kernel; ``block_sparse_ops`` is the building block for a
block-sparse matmul (stored blocks, real indices) such a rule returns.

Units: bytes, FLOPs (a multiply-add counts 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr

from rdu_xla_backend.workload.graph import BlockSparseInfo, GatherInfo, Op

KERNEL_PREFIX = "rdu_kernel:"  # jit names of functions wrapped by rdu_xla_backend.workload.kernels

# ----------------------------------------------------------------------------- primitive rules

FREE = {"reshape", "squeeze", "expand_dims", "broadcast_in_dim", "stop_gradient", "copy",
        "copy_p", "random_wrap", "random_unwrap", "optimization_barrier", "sharding_constraint",
        "pvary", "mesh_cast", "reduce_precision", "device_put"}
VECTOR = {"add", "sub", "mul", "div", "neg", "max", "min", "abs", "sign", "select_n", "eq", "ne",
          "lt", "le", "gt", "ge", "and", "or", "not", "xor", "square", "integer_pow",
          "convert_element_type", "clamp", "floor", "ceil", "round", "is_finite", "rem",
          "nextafter", "add_any", "iota", "shift_left", "shift_right_logical",
          "shift_right_arithmetic", "population_count", "clz", "real", "imag", "conj",
          "bitcast_convert_type"}
TRANSCENDENTAL = {"exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan",
                  "sqrt", "rsqrt", "cbrt", "pow", "erf", "erfc", "erf_inv", "atan2", "asin",
                  "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "lgamma", "digamma"}
REDUCE = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
          "reduce_xor", "argmax", "argmin", "cumsum", "cumprod", "cummax", "cummin",
          "cumlogsumexp"}
MEMORY = {"transpose", "slice", "dynamic_slice", "dynamic_update_slice", "concatenate", "stack", "pad",
          "rev", "split", "select_and_scatter_add", "select_and_gather_add", "scatter",
          "scatter-add", "scatter_add", "scatter-mul", "scatter-min", "scatter-max", "sort",
          "reduce_window_sum", "reduce_window_max"}
RANDOM = {"random_bits", "random_split", "random_fold_in", "random_seed", "threefry2x32"}
THREEFRY_OPS_PER_WORD = 96  # integer ops of Threefry-2x32 (20 rounds) per 32-bit word, approx.
CALLS = {"jit", "pjit", "closed_call", "core_call", "checkpoint", "remat", "remat2", "custom_jvp_call",
         "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin"}
# Ops whose output is a slice/reshape of one input's values: gather indices are followed through.
# A value computed by element-wise ops from inputs this small (a mask from iota, a zero fill) is
# generated on chip where it is used, never stored off chip.
GENERATED_FROM_BYTES = 64 * 2**10
PASS_THROUGH = {"convert_element_type", "reshape", "squeeze", "expand_dims", "broadcast_in_dim",
                "dynamic_slice", "slice", "copy", "copy_p", "clamp", "max", "min",
                "stop_gradient", "concatenate"}


class UnsupportedPrimitiveError(NotImplementedError):
    """A primitive without a lowering rule (its FLOPs and bytes would be unknown)."""


def aval_bytes(aval) -> float:
    """Bytes of an abstract value (PRNG keys count as their uint32 key data)."""
    shape = getattr(aval, "shape", ())
    dtype = getattr(aval, "dtype", None)
    if dtype is None:
        return 0.0
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        itemsize = 8
    else:
        itemsize = np.dtype(dtype).itemsize
    return float(math.prod(shape) * itemsize)


def _size(aval) -> int:
    return int(math.prod(getattr(aval, "shape", ())))


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval for v in eqn.invars)
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    rhs_free = [d for i, d in enumerate(rhs.shape) if i not in rc and i not in rb]
    return 2.0 * math.prod(lhs.shape) * math.prod(rhs_free)


def _dot_dims(eqn) -> tuple[int, int, int, int]:
    """(batch, m, n, k) of a dot_general: batch products of (m x k) @ (k x n)."""
    lhs, rhs = (v.aval for v in eqn.invars)
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    batch = math.prod(lhs.shape[i] for i in lb)
    k = math.prod(lhs.shape[i] for i in lc)
    m = math.prod(d for i, d in enumerate(lhs.shape) if i not in lc and i not in lb)
    n = math.prod(d for i, d in enumerate(rhs.shape) if i not in rc and i not in rb)
    return int(batch), int(m), int(n), int(k)


def _gather_info(eqn, origin) -> GatherInfo | None:
    """Block-row view of a gather reading whole slices along one axis, else None."""
    operand, indices = eqn.invars[0].aval, eqn.invars[1].aval
    sizes = eqn.params["slice_sizes"]
    dims = [a for a, (s, z) in enumerate(zip(operand.shape, sizes)) if s != z]
    if len(dims) != 1 or sizes[dims[0]] != 1:
        return None
    a = dims[0]
    itemsize = int(aval_bytes(operand) // max(_size(operand), 1))
    return GatherInfo(tokens=int(math.prod(operand.shape[:a])), rows=int(operand.shape[a]),
                      run=int(math.prod(operand.shape[a + 1:])),
                      indices=int(math.prod(indices.shape[:-1])), itemsize=itemsize,
                      origin=origin)


def op_of_eqn(eqn, index_origin: int | None = None, path: str = "") -> Op:
    """The Op (kind, FLOPs and bytes per execution) of a non-control equation.

    Raises:
        UnsupportedPrimitiveError: no rule for the primitive.
    """
    name = eqn.primitive.name
    b_in = sum(aval_bytes(v.aval) for v in eqn.invars)
    b_out = sum(aval_bytes(v.aval) for v in eqn.outvars)
    out_elems = sum(_size(v.aval) for v in eqn.outvars)
    in_elems = _size(eqn.invars[0].aval) if eqn.invars else 0
    gather = None
    if name in FREE:
        kind, flops, b_in, b_out = "free", 0.0, 0.0, 0.0
    elif name == "dot_general":
        kind, flops = "matmul", _dot_flops(eqn)
    elif name in VECTOR:
        kind, flops = "vector", (0.0 if name == "iota" else float(out_elems))
    elif name in TRANSCENDENTAL:
        kind, flops = "transcendental", float(out_elems)
    elif name in REDUCE:
        kind, flops = "reduce", float(in_elems)
    elif name in RANDOM:
        kind, flops = "vector", float(b_out / 4 * THREEFRY_OPS_PER_WORD)
    elif name == "gather":
        gather = _gather_info(eqn, index_origin)
        kind, flops = ("gather" if gather else "memory"), 0.0
        b_in = b_out + aval_bytes(eqn.invars[1].aval)  # reads the gathered slices, not the operand
    elif name in MEMORY:
        kind, flops = "memory", 0.0
        if name in ("slice", "dynamic_slice"):
            b_in = b_out  # reads only the slice, not the whole operand
        elif name == "dynamic_update_slice":
            b_in = b_out = aval_bytes(eqn.invars[1].aval)
        elif name.startswith("scatter"):
            upd = aval_bytes(eqn.invars[2].aval)
            b_in, b_out = upd + aval_bytes(eqn.invars[1].aval) + upd, upd  # read-modify-write
            flops = float(_size(eqn.invars[2].aval)) if name != "scatter" else 0.0
        elif name == "sort":
            n = max(in_elems, 2)
            flops = float(n * math.log2(n))
    else:
        raise UnsupportedPrimitiveError(
            f"no lowering rule for primitive '{name}' (in {path or 'top level'}); add one to "
            "rdu_xla_backend/lowering.py so its FLOPs and bytes are counted")
    return Op(name, kind, flops, b_in, b_out, 1, b_out, gather, f"{path}/{name}".lstrip("/"),
              gemm=_dot_dims(eqn) if name == "dot_general" else ())


def _sub_jaxpr(eqn) -> tuple[Jaxpr, list]:
    """(jaxpr, consts) of a call-like equation's body."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if isinstance(j, ClosedJaxpr):
            return j.jaxpr, list(j.consts)
        if isinstance(j, Jaxpr):
            return j, []
    raise UnsupportedPrimitiveError(f"call primitive '{eqn.primitive.name}' has no jaxpr param")


# ----------------------------------------------------------------------------- named-call rules

# A rule for a named call: ``rule(eqn, ins, count, path) -> list[Op]`` where ``eqn`` is the call
# equation, ``ins`` the index origin of each operand (flat argument position or None), ``count``
# executions per kernel call and ``path`` where it sits. A named call with a rule is costed by
# its rule (as ONE fused kernel of its own) instead of by the primitives of its body: a library
# registers rules for the calls whose host formulation is not how a dataflow chip runs them.
CallRule = Callable[[Any, list, int, str], list[Op]]
CALL_RULES: dict[str, tuple[CallRule, Callable[[Any], bool]]] = {}


def register_call_rule(name: str, rule: CallRule,
                       accepts: Callable[[Any], bool] | None = None) -> None:
    """Cost every call named ``name`` (a jit's ``name`` parameter) with ``rule``.

    ``accepts(eqn)`` (default: always) says whether a call of that name has the operands the
    rule expects; a call it refuses is inlined like any jit. Registering the same name again
    replaces the rule (re-importing a module is harmless).
    """
    if not name or not callable(rule):
        raise ValueError(f"register_call_rule needs a name and a callable, got {name!r}, {rule!r}")
    CALL_RULES[name] = (rule, accepts or (lambda eqn: True))


def call_rule(eqn) -> CallRule | None:
    """The registered rule of a call equation, or None (a jit without a rule is inlined)."""
    if eqn.primitive.name not in CALLS:
        return None
    rule, accepts = CALL_RULES.get(_call_name(eqn), (None, None))
    return rule if rule is not None and accepts(eqn) else None


def block_sparse_ops(eqn, ins, count: int, path: str, *, backward: bool, x: int = 0,
                     values: int = 1, rows: int = 2) -> list[Op]:
    """The gather and matmul Ops of one block-sparse matmul call (a building block for rules).

    Operands (positions in ``eqn.invars``): ``x`` (T, in), ``values`` (nc, k, bk, bn) and the
    block-row ``rows`` (nc, k) int of every stored block; forward y = x W, backward dx = dy W^T
    and dvalues = x_r^T dy_j per stored block. The matmul is priced from the stored blocks and
    the real indices (``mapping.block_sparse``: PCU lanes and stages per block, the transposed
    layout's balance, PMU gathers with their address pattern); its FLOPs are those of the stored
    blocks only; its off-chip bytes are operands + results, not the host formulation's.
    """
    xa, va = eqn.invars[x].aval, eqn.invars[values].aval
    tokens, n_in = xa.shape
    nc, k, bk, bn = va.shape
    passes = 2 if backward else 1  # backward: dx = dy W^T and dW = x^T dy
    itemsize = int(aval_bytes(xa) // max(_size(xa), 1))
    gathered = float(tokens * bk * nc * k * itemsize)
    info = BlockSparseInfo(tokens=tokens, in_features=n_in, out_features=nc * bn, block=(bk, bn),
                           blocks_per_col=k, backward=backward, itemsize=itemsize,
                           origin=ins[rows])
    gather = GatherInfo(tokens=tokens, rows=n_in // bk, run=bk, indices=nc * k * passes,
                        itemsize=itemsize, origin=ins[rows])
    b_in = sum(aval_bytes(v.aval) for v in eqn.invars)
    b_out = sum(aval_bytes(v.aval) for v in eqn.outvars)
    flops = float(2 * tokens * nc * k * bk * bn * passes)
    return [Op("gather", "gather", 0.0, gathered * passes, gathered * passes, count,
               gathered, gather, f"{path}/gather", ins=(x, rows), sparse=info),
            Op("dot_general", "matmul", flops, b_in, b_out, count, b_out, None,
               f"{path}/dot_general", sparse=info,
               gemm=(nc * passes, tokens, bn, k * bk))]  # a GEMM per column block


def _call_name(eqn) -> str:
    return str(eqn.params.get("name", eqn.primitive.name))
