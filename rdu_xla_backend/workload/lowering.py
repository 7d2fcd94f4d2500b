"""jaxpr -> dataflow graph: fused kernels, loops, tensors between kernels.

``lower(fn, *args)`` traces ``fn`` with ``jax.make_jaxpr`` (arguments may be concrete arrays or
``jax.ShapeDtypeStruct``s, so a GPT-13B step is lowered without allocating it), inlines the
top-level ``jit`` calls into one flat program, and groups its equations into kernels:

- ``mode="fused"`` (default): a ``scan`` whose body does matmuls (a stack of decoder layers, the
  forward or the backward pass) becomes ONE looped kernel (the whole layer fused, the scan's
  length as its trip count); the other equations form one kernel per maximal run of the same
  phase: forward, backward (equations JAX derived by transposition: their name stack holds
  ``transpose``) and update (everything after the last backward equation: the optimizer).
  Functions wrapped by ``rdu_xla_backend.workload.kernels`` become a kernel of their own. Then the
  kernel-looping pass (``looping``) turns consecutive calls of the same kernel (an unrolled stack
  of identical layers) into one looped kernel, as a scan already is.
- ``mode="unfused"``: one kernel per operator (``operators``: a matmul, a gather, a cache update,
  or a run of element-wise ops and reductions such as a softmax or a norm), operators inside loops
  called once per trip; every operator's inputs and outputs go through off-chip memory.

Every primitive needs a rule (``rules``: FLOPs, bytes, which unit runs it). An op without a rule
raises ``UnsupportedPrimitiveError`` naming it: silently skipping work would make every estimate
wrong. ``collect`` walks bodies (calls, scans, conds) into ops.

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
from jax.extend.core import Jaxpr, Literal

from rdu_xla_backend.workload import looping
from rdu_xla_backend.workload.collect import (
    _Body,
    _pass_origin,
    collect_eqn,
    collect_ops,
    has_matmul,
    is_loop_kernel,
    is_marked_kernel,
)
from rdu_xla_backend.workload.operators import charged_reads, charged_writes, operator_kernels
from rdu_xla_backend.workload.rules import (  # noqa: F401  (re-exported: the lowering's public names)
    FREE,
    GENERATED_FROM_BYTES,
    KERNEL_PREFIX,
    VECTOR,
    UnsupportedPrimitiveError,
    _call_name,
    aval_bytes,
    op_of_eqn,
)
from rdu_xla_backend.workload.graph import ROLES, FlatEqn, Graph, Kernel, Step, Tensor

MODES = ("fused", "unfused")

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
        if eqn.primitive.name in ("jit", "pjit") and not is_marked_kernel(eqn):
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
    outs = collect_eqn(fe.eqn, _origins(fe, flat), count, "", body, _value_keys(fe))
    # The values this equation defines are known program-wide by their flat keys.
    rename = {k: -1 - fk for (_, k), fk in zip(outs, fe.outs)
              if k is not None and fk is not None and not isinstance(fk, Literal)}
    if rename:
        for op in body.ops:
            op.ins = tuple((rename.get(k, k), b) for k, b in op.ins)
            op.outs = tuple((rename.get(k, k), b) for k, b in op.outs)
    return body


def _value_keys(fe: FlatEqn) -> list:
    """Value keys of a top-level equation's operands (program-wide: negative flat keys)."""
    return [None if isinstance(k, Literal) else -1 - k for k in fe.ins]


def _origins(fe: FlatEqn, flat: _Flat) -> list:
    return [None if isinstance(k, Literal) else flat.origin.get(k) for k in fe.ins]


def _group(flat: _Flat, mode: str) -> list[list[int]]:
    """Indices of flat equations per fused kernel."""
    groups, current, current_phase = [], [], None
    for i, fe in enumerate(flat.eqns):
        alone = is_loop_kernel(fe.eqn) or is_marked_kernel(fe.eqn)
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


def lower(fn: Callable, *args, mode: str = "fused", name: str = "", roles: Any = None,
          all_reduces_per_layer: int = 2) -> Graph:
    """Trace ``fn(*args)`` and build its dataflow graph.

    Args:
        fn: any JAX-traceable function (jitted or not).
        *args: pytrees of arrays or ``jax.ShapeDtypeStruct`` (abstract: nothing is allocated).
        mode: 'fused' (decoder-layer loops, forward/backward/update kernels; consecutive calls
            of the same kernel become one looped kernel, ``looping``) or 'unfused' (one kernel
            per operator, ``operators``: intermediates through off-chip memory).
        name: label for reports.
        roles: what each argument is to the program, one of ``graph.ROLES`` ('activations',
            'kv_cache', 'weights', 'optimizer_state') or None (inferred: floating inputs are
            weights, integer inputs activations). Either a pytree prefix of ``args`` (e.g.
            ``("weights", "activations", "kv_cache")`` for ``fn(params, tokens, cache)``) or a
            function ``(path: str, leaf) -> role | None`` over the flat arguments.
        all_reduces_per_layer: all-reduces of the layer activation one layer (a trip of a layer
            loop) makes per pass when the mapping splits it over sockets (tensor parallel):
            2 for Megatron's split, after the attention output and the MLP down projection
            ([MEG] arXiv 2104.04473); recorded on the layer kernels, timed by the mapping.
    Returns:
        Graph. Integer arguments that gather indices come from are kept (as numpy) in
        ``graph.concrete`` when they are concrete, for pricing real sparse gathers.
    Raises:
        ValueError: unknown mode or role. UnsupportedPrimitiveError: a primitive without a rule.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} unknown; allowed: {', '.join(MODES)}")
    input_roles = _input_roles(args, roles)
    closed = jax.make_jaxpr(fn)(*args)
    out_tree = jax.tree.structure(jax.eval_shape(fn, *args))
    leaves, in_tree = jax.tree.flatten(args)
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
            k = _fused_kernel(fes, flat, len(kernels), all_reduces_per_layer)
            steps.append(Step(fes, [len(kernels)]))
            kernels.append(k)
    else:  # one kernel per operator; executed in the fused groups (execution units)
        for idx in _group(flat, "fused"):
            first = len(kernels)
            ops = [op for i in idx for op in _eqn_body(flat.eqns[i], flat).ops]
            kernels += operator_kernels(ops, first)
            if len(idx) == 1 and is_loop_kernel(flat.eqns[idx[0]].eqn):
                _layer_collectives(flat.eqns[idx[0]].eqn, kernels[first:], all_reduces_per_layer)
            steps.append(Step([flat.eqns[i] for i in idx], list(range(first, len(kernels)))))

    tensors = _tensors(flat, kernels, steps, in_keys, out_keys)
    if mode == "fused":
        for k in kernels:
            if k.trips == 1 and k.reads:
                sizes = {-1 - t: tensors[t].nbytes for t in k.reads}
                charged = charged_reads(k.ops, sizes)
                k.read_bytes = {-1 - key: b for key, b in charged.items() if b < sizes[key]}
            if k.trips == 1 and k.writes:
                sizes = {-1 - t: tensors[t].nbytes for t in k.writes}
                charged = charged_writes(k.ops, sizes)
                k.write_bytes = {-1 - key: b for key, b in charged.items() if b < sizes[key]}
        kernels, steps = looping.loop_repeated_kernels(kernels, steps, tensors,
                                                       all_reduces_per_layer)
    concrete = {}
    origins = {op.gather.origin for k in kernels for op in k.ops if op.gather is not None}
    for pos in origins - {None}:
        leaf = leaves[pos]
        if isinstance(leaf, (np.ndarray, jax.Array)) and not isinstance(leaf, jax.ShapeDtypeStruct):
            concrete[pos] = np.asarray(leaf)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(args)[0]]
    return Graph(kernels, tensors, steps, in_keys, out_keys, flat.constants, out_tree, in_tree,
                 concrete, mode, name or getattr(fn, "__name__", "fn"), paths, input_roles)


def _input_roles(args: tuple, roles: Any) -> list[str | None]:
    """Role of every flat argument of ``args`` from ``roles`` (see ``lower``)."""
    flat = jax.tree_util.tree_flatten_with_path(args)[0]
    if roles is None:
        out = [None] * len(flat)
    elif callable(roles):
        out = [roles(jax.tree_util.keystr(p), leaf) for p, leaf in flat]
    else:
        prefix = tuple(roles) if isinstance(roles, list) else roles
        try:
            nested = jax.tree.map(lambda r, sub: [r] * len(jax.tree.leaves(sub)), prefix, args,
                                  is_leaf=lambda x: x is None or isinstance(x, str))
        except ValueError as e:
            raise ValueError(f"roles must be a pytree prefix of the arguments: {e}") from None
        out = [r for group in jax.tree.leaves(nested, is_leaf=lambda x: isinstance(x, list))
               for r in group]
    bad = sorted({r for r in out if r is not None and r not in ROLES})
    if bad:
        raise ValueError(f"roles {bad} unknown; allowed: {', '.join(ROLES)} or None")
    return out


def _fused_kernel(fes: list[FlatEqn], flat: _Flat, index: int, all_reduces: int) -> Kernel:
    phase = fes[0].phase
    if len(fes) == 1 and is_loop_kernel(fes[0].eqn):
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
                if is_marked_kernel(fes[0].eqn) else f"{phase}.{index}")
    return Kernel(name, phase, body.ops, trips=trips, working_bytes=body.working,
                  largest_bytes=body.largest, carry_bytes=carry,
                  collectives=all_reduces if trips > 1 else 0)


def _layer_collectives(eqn, kernels: list[Kernel], all_reduces: int) -> None:
    """Operators of an unfused layer loop: the layer's ``all_reduces`` all-reduces (tensor
    parallel) follow its last matmuls, one each, of the loop carry's size."""
    nk = eqn.params["num_carry"]
    carry = sum(aval_bytes(v.aval) for v in eqn.params["jaxpr"].jaxpr.outvars[:nk])
    matmuls = [k for k in kernels if any(op.kind == "matmul" for op in k.ops)]
    for k in (matmuls[-all_reduces:] if all_reduces else []):
        k.collectives, k.carry_bytes = 1, carry


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
