"""jaxpr -> dataflow graph: fused kernels, loops, tensors between kernels.

``lower(fn, *args)`` traces ``fn`` with ``jax.make_jaxpr`` (arguments may be concrete arrays or
``jax.ShapeDtypeStruct``s, so a GPT-13B step is lowered without allocating it), inlines the
top-level ``jit`` calls into one flat program, and groups its equations into kernels:

- ``mode="fused"`` (default): a ``scan`` whose body does matmuls (a stack of decoder layers, the
  forward or the backward pass) becomes ONE looped kernel (the whole layer fused, the scan's
  length as its trip count); the other equations form one kernel per maximal run of the same
  phase: forward, backward (equations JAX derived by transposition: their name stack holds
  ``transpose``) and update (everything after the last backward equation: the optimizer).
  Functions wrapped by ``rdu_xla_backend.kernels`` become a kernel of their own.
- ``mode="unfused"``: one kernel per operator (reshape-like wiring excluded), operators inside
  loops called once per trip; every operator's inputs and outputs go through off-chip memory.

Every primitive needs a rule (FLOPs, bytes, which unit runs it). An op without a rule raises
``UnsupportedPrimitiveError`` naming it: silently skipping work would make every estimate wrong.

Gather indices are followed back through slicing and reshaping to the top-level argument they
come from (``GatherInfo.origin``), so ``perf`` can price a block-sparse gather from the real
``row_indices`` when the arguments are concrete.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from rdu_xla_backend.graph import FlatEqn, GatherInfo, Graph, Kernel, Op, Step, Tensor

MODES = ("fused", "unfused")
KERNEL_PREFIX = "rdu_kernel:"  # jit names of functions wrapped by rdu_xla_backend.kernels

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
    return Op(name, kind, flops, b_in, b_out, 1, b_out, gather, f"{path}/{name}".lstrip("/"))


def _sub_jaxpr(eqn) -> tuple[Jaxpr, list]:
    """(jaxpr, consts) of a call-like equation's body."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if isinstance(j, ClosedJaxpr):
            return j.jaxpr, list(j.consts)
        if isinstance(j, Jaxpr):
            return j, []
    raise UnsupportedPrimitiveError(f"call primitive '{eqn.primitive.name}' has no jaxpr param")


# Named calls that are one block-sparse matmul (forward, or backward giving dx and dvalues), with
# operands (x (T, in), values (n_col_blocks, k, bk, bn), row_indices (n_col_blocks, k)[, dy]).
# They are costed as a fused kernel would run them, from their operands and the real indices:
# the block gather (x tiles read by index, priced by PMU bank conflicts) and the matmul (FLOPs of
# the stored blocks only; off-chip bytes = operands + results), not from the host formulation.
BLOCK_SPARSE_CALLS = ("block_sparse_matmul_forward", "block_sparse_matmul_backward")


def block_sparse_ops(eqn, ins, count: int, path: str) -> list[Op]:
    """The gather and matmul Ops of one named block-sparse matmul call."""
    x, values = eqn.invars[0].aval, eqn.invars[1].aval
    tokens, n_in = x.shape
    nc, k, bk, bn = values.shape
    backward = _call_name(eqn).endswith("backward")
    passes = 2 if backward else 1  # backward: dx = dy W^T and dW = x^T dy
    itemsize = int(aval_bytes(x) // max(_size(x), 1))
    gathered = float(tokens * bk * nc * k * itemsize)
    gather = GatherInfo(tokens=tokens, rows=n_in // bk, run=bk, indices=nc * k * passes,
                        itemsize=itemsize, origin=ins[2])
    b_in = sum(aval_bytes(v.aval) for v in eqn.invars)
    b_out = sum(aval_bytes(v.aval) for v in eqn.outvars)
    flops = float(2 * tokens * nc * k * bk * bn * passes)
    return [Op("gather", "gather", 0.0, gathered * passes, gathered * passes, count,
               gathered, gather, f"{path}/gather"),
            Op("dot_general", "matmul", flops, b_in, b_out, count, b_out, None, f"{path}/dot_general")]


def _call_name(eqn) -> str:
    return str(eqn.params.get("name", eqn.primitive.name))


# ----------------------------------------------------------------------------- ops of a body


class _Body:
    """Ops, working set and largest value of a (possibly nested) jaxpr body, per execution."""

    def __init__(self):
        self.ops: list[Op] = []
        self.working = 0.0
        self.largest = 0.0


def _pass_origin(eqn, origins: list) -> int | None:
    if eqn.primitive.name not in PASS_THROUGH:
        return None
    found = {o for o in origins if o is not None}
    return found.pop() if len(found) == 1 else None


def collect_ops(jaxpr: Jaxpr, origins: list, count: int = 1, path: str = "",
                body: _Body | None = None) -> _Body:
    """Every primitive of ``jaxpr`` (recursing into calls and loops) as Ops with ``count``.

    Args:
        jaxpr: the body.
        origins: per invar, the flat argument position its values come from, or None.
        count: executions of this body per kernel call.
        path: where the body sits (for error messages and op paths).
        body: accumulator to extend (a new one if None).
    """
    body = body or _Body()
    env: dict = dict(zip(jaxpr.invars, origins))
    for eqn in jaxpr.eqns:
        ins = [None if isinstance(v, Literal) else env.get(v) for v in eqn.invars]
        for v, o in zip(eqn.outvars, _collect_eqn(eqn, ins, count, path, body)):
            env[v] = o
    return body


def _collect_eqn(eqn, ins: list, count: int, path: str, body: _Body) -> list:
    """Add one equation's ops to ``body``; returns its outputs' index origins."""
    name = eqn.primitive.name
    here = (f"{path}/{name}" if name not in CALLS else f"{path}/{name}:{_call_name(eqn)}").lstrip("/")
    none = [None] * len(eqn.outvars)
    if name == "scan":
        inner = eqn.params["jaxpr"].jaxpr
        nc, nk = eqn.params["num_consts"], eqn.params["num_carry"]
        collect_ops(inner, ins[:nc] + [None] * nk + ins[nc + nk:],
                    count * int(eqn.params["length"]), here, body)
        return none
    if name == "while":
        raise UnsupportedPrimitiveError(
            f"primitive 'while' (in {path or 'top level'}): a loop with a data-dependent trip "
            "count has no static cost; use lax.scan or fori_loop with static bounds")
    if name == "cond":
        costs = [collect_ops(b.jaxpr, ins[1:], count, here) for b in eqn.params["branches"]]
        # The branch moving the most bytes (then FLOPs): a conservative charge whatever the
        # predicate; ranking by one resource keeps the charge monotone when both branches are.
        worst = max(costs, key=lambda c: (sum(o.total_bytes for o in c.ops), sum(o.total_flops for o in c.ops)))
        body.ops += worst.ops
        body.working += worst.working
        body.largest = max(body.largest, worst.largest)
        return none
    if name in CALLS and _call_name(eqn) in BLOCK_SPARSE_CALLS and len(eqn.invars) >= 3:
        body.ops += block_sparse_ops(eqn, ins, count, here)
        body.largest = max(body.largest, max(o.out_bytes_each for o in body.ops[-2:]))
        return none
    if name in CALLS:
        inner, _ = _sub_jaxpr(eqn)
        n_extra = len(eqn.invars) - len(inner.invars)
        collect_ops(inner, ins[n_extra:], count, here, body)
        return none
    op = op_of_eqn(eqn, ins[1] if name == "gather" else None, path)
    op.count = count
    body.ops.append(op)
    body.working += op.out_bytes_each
    body.largest = max(body.largest, op.out_bytes_each)
    return [_pass_origin(eqn, ins)] * len(eqn.outvars)


def _has_matmul(jaxpr: Jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            return True
        for key in ("jaxpr", "call_jaxpr", "fun_jaxpr", "branches"):
            sub = eqn.params.get(key)
            subs = sub if isinstance(sub, tuple) else (sub,)
            for s in subs:
                j = s.jaxpr if isinstance(s, ClosedJaxpr) else s
                if isinstance(j, Jaxpr) and _has_matmul(j):
                    return True
    return False


def _is_loop_kernel(eqn) -> bool:
    return eqn.primitive.name == "scan" and _has_matmul(eqn.params["jaxpr"].jaxpr)


def _is_marked_kernel(eqn) -> bool:
    return eqn.primitive.name in ("jit", "pjit") and (
        _call_name(eqn).startswith(KERNEL_PREFIX)
        or (_call_name(eqn) in BLOCK_SPARSE_CALLS and len(eqn.invars) >= 3))


# ----------------------------------------------------------------------------- flattening


class _Flat:
    def __init__(self):
        self.eqns: list[FlatEqn] = []
        self.avals: dict[int, Any] = {}
        self.constants: dict[int, Any] = {}
        self.origin: dict[int, int] = {}
        self.generated: set[int] = set()
        self._next = 0

    def new(self, aval) -> int:
        k = self._next
        self._next += 1
        self.avals[k] = aval
        return k


def _flatten(jaxpr: Jaxpr, consts: list, in_keys: list, flat: _Flat, stack: str) -> list:
    """Inline top-level jit calls; returns the keys (or Literals) of ``jaxpr``'s outputs."""
    env: dict = dict(zip(jaxpr.invars, in_keys))
    for v, c in zip(jaxpr.constvars, consts):
        k = flat.new(v.aval)
        flat.constants[k] = c
        env[v] = k
    read = lambda v: v if isinstance(v, Literal) else env[v]
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        here = f"{stack}/{eqn.source_info.name_stack}"
        if eqn.primitive.name in ("jit", "pjit") and not _is_marked_kernel(eqn):
            inner = eqn.params["jaxpr"]
            outs = _flatten(inner.jaxpr, list(inner.consts), ins, flat, here)
        else:
            outs = [None if type(v).__name__ == "DropVar" else flat.new(v.aval)
                    for v in eqn.outvars]
            phase = "backward" if "transpose" in here else "forward"
            flat.eqns.append(FlatEqn(eqn, tuple(ins), tuple(outs), phase))
            if eqn.primitive.name in FREE | VECTOR and all(
                    isinstance(k, Literal) or k in flat.generated
                    or aval_bytes(flat.avals[k]) <= GENERATED_FROM_BYTES for k in ins):
                flat.generated.update(k for k in outs if k is not None)
            o = _pass_origin(eqn, [None if isinstance(k, Literal) else flat.origin.get(k)
                                   for k in ins])
            for k in outs:
                if k is not None and o is not None:
                    flat.origin[k] = o
        for v, k in zip(eqn.outvars, outs):
            env[v] = k
    return [read(v) for v in jaxpr.outvars]


# ----------------------------------------------------------------------------- kernels


def _eqn_body(fe: FlatEqn, flat: _Flat, count: int = 1) -> _Body:
    """Ops of one top-level equation (a loop's body per trip if it is a loop kernel)."""
    body = _Body()
    _collect_eqn(fe.eqn, _origins(fe, flat), count, "", body)
    return body


def _origins(fe: FlatEqn, flat: _Flat) -> list:
    return [None if isinstance(k, Literal) else flat.origin.get(k) for k in fe.ins]


def _group(flat: _Flat, mode: str) -> list[list[int]]:
    """Indices of flat equations per fused kernel."""
    groups, current, current_phase = [], [], None
    for i, fe in enumerate(flat.eqns):
        alone = _is_loop_kernel(fe.eqn) or _is_marked_kernel(fe.eqn)
        if alone or fe.phase != current_phase:
            if current:
                groups.append(current)
            current, current_phase = [], fe.phase
        if alone:
            groups.append([i])
            current_phase = None
        else:
            current.append(i)
    if current:
        groups.append(current)
    return groups


def _assign_phases(flat: _Flat) -> None:
    backward = [i for i, fe in enumerate(flat.eqns) if fe.phase == "backward"]
    if backward:
        for fe in flat.eqns[backward[-1] + 1:]:
            fe.phase = "update"


def _keys(items) -> list[int]:
    return [k for k in items if k is not None and not isinstance(k, Literal)]


def lower(fn: Callable, *args, mode: str = "fused", name: str = "") -> Graph:
    """Trace ``fn(*args)`` and build its dataflow graph.

    Args:
        fn: any JAX-traceable function (jitted or not).
        *args: pytrees of arrays or ``jax.ShapeDtypeStruct`` (abstract: nothing is allocated).
        mode: 'fused' (decoder-layer loops, forward/backward/update kernels) or 'unfused'
            (one kernel per operator).
        name: label for reports.
    Returns:
        Graph. Integer arguments that gather indices come from are kept (as numpy) in
        ``graph.concrete`` when they are concrete, for pricing real sparse gathers.
    Raises:
        ValueError: unknown mode. UnsupportedPrimitiveError: a primitive without a rule.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} unknown; allowed: {', '.join(MODES)}")
    closed = jax.make_jaxpr(fn)(*args)
    leaves, in_tree = jax.tree.flatten(args)
    out_tree = jax.tree.structure(jax.eval_shape(fn, *args))
    flat = _Flat()
    in_keys = [flat.new(v.aval) for v in closed.jaxpr.invars]
    for pos, k in enumerate(in_keys):
        flat.origin[k] = pos
    out_keys = _flatten(closed.jaxpr, list(closed.consts), in_keys, flat, "")
    _assign_phases(flat)

    kernels: list[Kernel] = []
    steps: list[Step] = []
    if mode == "fused":
        for idx in _group(flat, mode):
            fes = [flat.eqns[i] for i in idx]
            k = _fused_kernel(fes, flat, len(kernels))
            steps.append(Step(fes, [len(kernels)]))
            kernels.append(k)
    else:  # one kernel per op; executed in the fused groups (execution units, not kernels)
        for idx in _group(flat, "fused"):
            first = len(kernels)
            for i in idx:
                kernels += _unfused_kernels(flat.eqns[i], flat, len(kernels))
            steps.append(Step([flat.eqns[i] for i in idx], list(range(first, len(kernels)))))

    tensors = _tensors(flat, kernels, steps, in_keys, out_keys)
    concrete = {}
    origins = {op.gather.origin for k in kernels for op in k.ops if op.gather is not None}
    for pos in origins - {None}:
        leaf = leaves[pos]
        if isinstance(leaf, (np.ndarray, jax.Array)) and not isinstance(leaf, jax.ShapeDtypeStruct):
            concrete[pos] = np.asarray(leaf)
    return Graph(kernels, tensors, steps, in_keys, out_keys, flat.constants, out_tree, in_tree,
                 concrete, mode, name or getattr(fn, "__name__", "fn"))


def _fused_kernel(fes: list[FlatEqn], flat: _Flat, index: int) -> Kernel:
    phase = fes[0].phase
    if len(fes) == 1 and _is_loop_kernel(fes[0].eqn):
        eqn = fes[0].eqn
        trips = int(eqn.params["length"])
        inner = eqn.params["jaxpr"].jaxpr
        nc, nk = eqn.params["num_consts"], eqn.params["num_carry"]
        o = _origins(fes[0], flat)
        body = collect_ops(inner, o[:nc] + [None] * nk + o[nc + nk:], 1, "scan")
        name = f"layers.{phase}.{index}"
        carry = sum(aval_bytes(v.aval) for v in inner.outvars[:nk])
    else:
        trips, carry = 1, 0.0
        body = _Body()
        for fe in fes:
            b = _eqn_body(fe, flat)
            body.ops += b.ops
            body.working += b.working
            body.largest = max(body.largest, b.largest)
        name = (f"{_call_name(fes[0].eqn)[len(KERNEL_PREFIX):]}.{index}"
                if _is_marked_kernel(fes[0].eqn) else f"{phase}.{index}")
    return Kernel(name, phase, body.ops, trips=trips, working_bytes=body.working,
                  largest_bytes=body.largest, carry_bytes=carry)


def _unfused_kernels(fe: FlatEqn, flat: _Flat, start: int) -> list[Kernel]:
    body = _eqn_body(fe, flat)
    out = []
    for op in body.ops:
        if op.kind == "free":
            continue
        calls, op.count = op.count, 1
        out.append(Kernel(f"{op.primitive}.{start + len(out)}", "op", [op], calls=calls,
                          local_bytes=op.bytes_in + op.bytes_out,
                          working_bytes=op.out_bytes_each, largest_bytes=op.out_bytes_each))
    return out


def _tensors(flat: _Flat, kernels: list[Kernel], steps: list[Step], in_keys, out_keys):
    """Tensors crossing step boundaries; fills kernels' reads and writes (fused mode)."""
    producer: dict[int, int] = {k: -1 for k in in_keys}
    producer.update({k: -1 for k in flat.constants})
    tensors: dict[int, Tensor] = {}

    def tensor(key: int) -> Tensor:
        if key not in tensors:
            aval = flat.avals[key]
            tensors[key] = Tensor(key, tuple(getattr(aval, "shape", ())), str(aval.dtype),
                                  aval_bytes(aval), producer=producer.get(key, -1),
                                  generated=key in flat.generated)
        return tensors[key]

    for si, step in enumerate(steps):
        owner = step.kernels[0] if step.kernels else None
        defined = {k for fe in step.eqns for k in _keys(fe.outs)}
        used = []
        for fe in step.eqns:
            used += [k for k in _keys(fe.ins) if k not in defined and k not in used]
        for k in used:
            t = tensor(k)
            if owner is not None and owner not in t.consumers:
                t.consumers.append(owner)
            if owner is not None and len(step.kernels) == 1 and k not in kernels[owner].reads:
                kernels[owner].reads.append(k)
        for k in defined:
            producer[k] = owner if owner is not None else -1
    final = set(_keys(out_keys))
    for si, step in enumerate(steps):
        if not step.kernels:
            continue
        owner = step.kernels[0]
        for fe in step.eqns:
            for k in _keys(fe.outs):
                if k in tensors or k in final:
                    t = tensor(k)
                    t.producer = owner
                    if len(step.kernels) == 1 and k not in kernels[owner].writes:
                        kernels[owner].writes.append(k)
    for k in final:
        tensor(k)
    return tensors


def abstract_like(tree):
    """ShapeDtypeStructs of a pytree of arrays (to lower without using the values)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)
