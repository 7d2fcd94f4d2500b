"""The ops of a jaxpr body: every primitive (through calls, scans and conds) as ``graph.Op``.

``collect_ops`` walks a body and returns its ops per execution, the SRAM working set (the values
it produces) and its largest value. Each op also records the values it reads and writes as
``(key, bytes)`` pairs (``Op.ins`` / ``Op.outs``): keys are program-wide integers that follow a
value through calls and loop boundaries, so ``operators`` can tell which bytes cross an
operator-level kernel boundary. Gather indices are followed back to the top-level argument they
come from (``GatherInfo.origin``) through slicing and reshaping.
"""

from __future__ import annotations

import itertools

from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from rdu_xla_backend.workload.graph import Op
from rdu_xla_backend.workload.rules import (
    CALLS,
    KERNEL_PREFIX,
    PASS_THROUGH,
    UnsupportedPrimitiveError,
    _call_name,
    _sub_jaxpr,
    aval_bytes,
    call_rule,
    op_of_eqn,
)

_KEYS = itertools.count()


def new_key() -> int:
    """A fresh program-wide value key."""
    return next(_KEYS)


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
                body: _Body | None = None, keys: list | None = None) -> _Body:
    """Every primitive of ``jaxpr`` (recursing into calls and loops) as Ops with ``count``.

    Args:
        jaxpr: the body.
        origins: per invar, the flat argument position its values come from, or None.
        count: executions of this body per kernel call.
        path: where the body sits (for error messages and op paths).
        body: accumulator to extend (a new one if None).
        keys: per invar, the value key it is bound to (fresh keys if None).
    """
    body = body or _Body()
    _collect(jaxpr, origins, keys, count, path, body)
    return body


def _collect(jaxpr: Jaxpr, origins: list, keys: list | None, count: int, path: str,
             body: _Body) -> list:
    """Add the ops of ``jaxpr`` to ``body``; returns the value keys of its outputs."""
    keys = keys if keys is not None else [None] * len(jaxpr.invars)
    env: dict = {v: (o, k if k is not None else new_key())
                 for v, o, k in zip(jaxpr.invars, origins, keys)}
    for eqn in jaxpr.eqns:
        got = [(None, None) if isinstance(v, Literal) else env.get(v, (None, None))
               for v in eqn.invars]
        ins, in_keys = [g[0] for g in got], [g[1] for g in got]
        outs = collect_eqn(eqn, ins, count, path, body, in_keys)
        for v, ok in zip(eqn.outvars, outs):
            env[v] = ok
    return [None if isinstance(v, Literal) else env.get(v, (None, None))[1]
            for v in jaxpr.outvars]


def collect_eqn(eqn, ins: list, count: int, path: str, body: _Body,
                in_keys: list | None = None) -> list[tuple]:
    """Add one equation's ops to ``body``; returns (index origin, value key) per output."""
    name = eqn.primitive.name
    here = (f"{path}/{name}" if name not in CALLS else f"{path}/{name}:{_call_name(eqn)}").lstrip("/")
    in_keys = in_keys if in_keys is not None else [None] * len(eqn.invars)
    if name == "scan":
        inner = eqn.params["jaxpr"].jaxpr
        nc, nk = eqn.params["num_consts"], eqn.params["num_carry"]
        out_keys = _collect(inner, ins[:nc] + [None] * nk + ins[nc + nk:], in_keys,
                            count * int(eqn.params["length"]), here, body)
        return [(None, k) for k in out_keys]
    if name == "while":
        raise UnsupportedPrimitiveError(
            f"primitive 'while' (in {path or 'top level'}): a loop with a data-dependent trip "
            "count has no static cost; use lax.scan or fori_loop with static bounds")
    if name == "cond":
        costs, outs = [], []
        for b in eqn.params["branches"]:
            c = _Body()
            outs.append(_collect(b.jaxpr, ins[1:], in_keys[1:], count, here, c))
            costs.append(c)
        # The branch moving the most bytes (then FLOPs): a conservative charge whatever the
        # predicate; ranking by one resource keeps the charge monotone when both branches are.
        i = max(range(len(costs)), key=lambda j: (sum(o.total_bytes for o in costs[j].ops),
                                                  sum(o.total_flops for o in costs[j].ops)))
        body.ops += costs[i].ops
        body.working += costs[i].working
        body.largest = max(body.largest, costs[i].largest)
        return [(None, k) for k in outs[i]]
    rule = call_rule(eqn)
    if rule is not None:  # a named call with a registered rule: its ops, not its body's
        ops = rule(eqn, ins, count, here)
        out_keys = [new_key() for _ in eqn.outvars]
        for i, op in enumerate(ops):
            # A rule names the operand positions an op reads in ``op.ins`` (default: all); the
            # last op writes the call's results.
            at = op.ins or tuple(range(len(eqn.invars)))
            last = i == len(ops) - 1
            _attach(op, [eqn.invars[a] for a in at], [in_keys[a] for a in at],
                    eqn.outvars if last else [], out_keys if last else [])
        body.ops += ops
        body.largest = max(body.largest, max(o.out_bytes_each for o in ops))
        return [(None, k) for k in out_keys]
    if name in CALLS:
        inner, _ = _sub_jaxpr(eqn)
        n_extra = len(eqn.invars) - len(inner.invars)
        out_keys = _collect(inner, ins[n_extra:], in_keys[n_extra:], count, here, body)
        return [(None, k) for k in out_keys]
    op = op_of_eqn(eqn, ins[1] if name == "gather" else None, path)
    op.count = count
    out_keys = [new_key() for _ in eqn.outvars]
    _attach(op, eqn.invars, in_keys, eqn.outvars, out_keys)
    body.ops.append(op)
    body.working += op.out_bytes_each
    body.largest = max(body.largest, op.out_bytes_each)
    origin = _pass_origin(eqn, ins)
    return [(origin, k) for k in out_keys]


def _attach(op: Op, invars, in_keys, outvars, out_keys) -> None:
    """Record the (key, bytes) of the values ``op`` reads and writes."""
    op.ins = tuple((k, aval_bytes(v.aval)) for v, k in zip(invars, in_keys)
                   if k is not None and not isinstance(v, Literal))
    op.outs = tuple((k, aval_bytes(v.aval)) for v, k in zip(outvars, out_keys)
                    if type(v).__name__ != "DropVar")


def has_matmul(jaxpr: Jaxpr) -> bool:
    """Whether ``jaxpr`` (or a body nested in it) does a matmul."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            return True
        for key in ("jaxpr", "call_jaxpr", "fun_jaxpr", "branches"):
            sub = eqn.params.get(key)
            subs = sub if isinstance(sub, tuple) else (sub,)
            for s in subs:
                j = s.jaxpr if isinstance(s, ClosedJaxpr) else s
                if isinstance(j, Jaxpr) and has_matmul(j):
                    return True
    return False


def is_loop_kernel(eqn) -> bool:
    """A scan doing matmuls (a stack of layers): one looped kernel."""
    return eqn.primitive.name == "scan" and has_matmul(eqn.params["jaxpr"].jaxpr)


def is_marked_kernel(eqn) -> bool:
    """A call wrapped by ``kernels.fused`` or a named call with a registered rule: a kernel of its
    own."""
    return eqn.primitive.name in ("jit", "pjit") and (
        _call_name(eqn).startswith(KERNEL_PREFIX) or call_rule(eqn) is not None)
