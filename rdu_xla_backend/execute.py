"""Run a lowered graph on real arrays, kernel by kernel, with counters per kernel.

Each step of the graph (one fused kernel, or one top-level equation when unfused) is compiled
once with ``jax.jit`` from its equations (``Primitive.bind`` with each equation's params, as
``jax.core.eval_jaxpr`` does) and called on the values of its input tensors; the outputs are the
program's own, so they equal the plain XLA run within float tolerance (the same operations,
compiled in smaller pieces). Counters per kernel: calls, FLOPs, bytes per tier (from ``perf``),
measured wall seconds, and the PMU cycles of its sparse gathers priced from the index values the
step actually read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import numpy as np
from jax.extend.core import Literal

from rdu_xla_backend.workload.graph import Graph, Step
from rdu_xla_backend.mapping import banks as mem
from rdu_xla_backend.mapping.gathers import gather_cost


@dataclass
class KernelCounters:
    """What one execution of the program did in one kernel."""

    name: str
    calls: int
    flops: float
    wall_s: float  # measured on the host running the emulation
    gather_cycles: float = 0.0  # PMU cycles of the kernel's gathers (real indices)
    gather_conflicts: float = 0.0


def _step_function(step: Step, inputs: list[int], outputs: list[int]):
    """A function of the step's input values returning its output values."""

    def run(*values):
        env = dict(zip(inputs, values))
        read = lambda k: k.val if isinstance(k, Literal) else env[k]
        for fe in step.eqns:
            eqn = fe.eqn
            params = eqn.primitive.get_bind_params(eqn.params)
            with eqn.ctx.manager:
                out = eqn.primitive.bind(*[read(k) for k in fe.ins], **params)
            out = out if eqn.primitive.multiple_results else [out]
            for k, v in zip(fe.outs, out):
                if k is not None:
                    env[k] = v
        return [env[k] for k in outputs]

    return run


def _plan(graph: Graph):
    """Per step: (input keys, output keys, jitted function), cached on the graph."""
    plan = getattr(graph, "_execution_plan", None)
    if plan is not None:
        return plan
    needed_later: set = {k for k in graph.outputs if isinstance(k, int)}
    per_step = []
    for step in reversed(graph.steps):
        defined = {k for fe in step.eqns for k in fe.outs if k is not None}
        used = []
        for fe in step.eqns:
            used += [k for k in fe.ins if not isinstance(k, Literal) and k not in defined
                     and k not in used]
        outs = [k for k in defined if k in needed_later]
        per_step.append((used, outs))
        needed_later = (needed_later - defined) | set(used)
    plan = [(ins, outs, jax.jit(_step_function(s, ins, outs)))
            for s, (ins, outs) in zip(graph.steps, reversed(per_step))]
    graph._execution_plan = plan
    return plan


def execute(graph: Graph, *args, chip=None, timed: bool = True):
    """Run ``graph`` on concrete ``args`` (the same pytree structure it was lowered with).

    Args:
        graph: from ``lowering.lower``.
        *args: concrete arrays.
        chip: an RDU ChipSpec to price the gathers' bank cycles from the real indices (optional).
        timed: block after each step to measure its wall time (slower; False for throughput).
    Returns:
        (outputs pytree, list[KernelCounters] in kernel order)
    """
    leaves, tree = jax.tree.flatten(args)
    if tree != graph.in_tree:
        raise ValueError(f"arguments have structure {tree}, the graph was lowered with "
                         f"{graph.in_tree}")
    env = dict(zip(graph.inputs, leaves))
    env.update(graph.constants)
    counters = [KernelCounters(k.name, k.calls, k.flops * k.calls, 0.0) for k in graph.kernels]
    for step, (ins, outs, fn) in zip(graph.steps, _plan(graph)):
        t0 = time.perf_counter()
        values = fn(*[env[k] for k in ins])
        if timed:
            jax.block_until_ready(values)
        dt = time.perf_counter() - t0
        env.update(zip(outs, values))
        for i in step.kernels:
            counters[i].wall_s += dt / len(step.kernels)
    if chip is not None:
        _gather_counters(graph, leaves, chip, counters)
    flat_out = [k.val if isinstance(k, Literal) else env[k] for k in graph.outputs]
    return jax.tree.unflatten(graph.out_tree, flat_out), counters


def _gather_counters(graph: Graph, leaves, chip, counters) -> None:
    """Bank cycles of every gather from the index values of this run's arguments."""
    saved = graph.concrete
    graph.concrete = {pos: np.asarray(leaves[pos]) for pos in range(len(leaves))
                      if np.issubdtype(np.asarray(leaves[pos]).dtype, np.integer)}
    try:
        pmu = mem.PmuConfig.from_chip(chip)
        for kernel, c in zip(graph.kernels, counters):
            for op in kernel.ops:
                if op.gather is not None:
                    cyc, conf, _ = gather_cost(op.gather, graph, pmu)
                    n = op.count * kernel.trips * kernel.calls
                    c.gather_cycles += cyc * n
                    c.gather_conflicts += conf * n
    finally:
        graph.concrete = saved
