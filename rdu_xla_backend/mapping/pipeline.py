"""Pipelines: stage balancing inside a fused kernel, micro-batch schedules across sockets.

Inside a kernel, operators are stages that work at once on different tiles, each on its share of
PCUs/PMUs; steady throughput is set by the slowest stage:

    cycles = fill + (tiles - 1) * interval + drain

with ``interval`` the slowest stage's cycles per tile, ``fill`` the cycles for the first tile to
leave the slowest stage (all stages up to and including it) and ``drain`` the stages after it.
This equals the max-plus recurrence of ``pipeline_schedule`` with one stage per operator.

Across sockets, P pipeline stages (socket s runs forward ``f[s]`` and backward ``b[s]`` seconds
per micro-batch) process M micro-batches under GPipe, 1F1B or interleaved 1F1B (v chunks of
layers per socket, chunk j on socket j % P; [MEG] Sec. 2.2). GPipe holds all M micro-batches'
activations until their backward, 1F1B at most P - s on stage s (``peak_in_flight``). Each
socket runs its operations in the schedule's fixed order (``stage_orders``); an operation starts
when the previous one on its socket has ended and its input has arrived:

    start[op] = max(end[previous op on the socket], end[producer] + transfer)
    end[op]   = start[op] + duration

evaluated by ``jax.lax.scan`` over the operations in dependency order (max-plus recurrence).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("gpipe", "1f1b")

# ----------------------------------------------------------------------------- inside a kernel


def balance_stages(work_cycles: Sequence[float], units: int) -> np.ndarray:
    """Units per stage (ints >= 1, sum <= units) minimising the slowest stage work / units.

    Greedy: start at one unit each and give the next unit to the current slowest stage (optimal
    for this separable min-max problem); then return the fewest units reaching that optimum
    (``ceil(work / interval)``), so unused units stay free.

    Args:
        work_cycles: (n_ops,) cycles per tile of each operator on ONE unit (>= 0).
        units: unit budget (PCUs, or PMUs) for the kernel.
    Returns:
        (n_ops,) int64 allocation.
    """
    w = np.asarray(work_cycles, np.float64)
    if w.ndim != 1 or w.size == 0 or (w < 0).any():
        raise ValueError(f"work_cycles must be a non-empty 1-D array of >= 0, got {w!r}")
    if units < w.size:
        raise ValueError(f"{units} units cannot give each of {w.size} stages one unit")
    alloc = np.ones(w.size, np.int64)
    heap = [(-x, i) for i, x in enumerate(w)]
    heapq.heapify(heap)
    for _ in range(units - w.size):
        neg, i = heapq.heappop(heap)
        if neg == 0:
            heapq.heappush(heap, (neg, i))
            break
        alloc[i] += 1
        heapq.heappush(heap, (-w[i] / alloc[i], i))
    interval = (w / alloc).max()
    if interval == 0:
        return np.ones(w.size, np.int64)
    # Smallest allocation with the same interval (tolerance for float division).
    return np.maximum(1, np.ceil(w / interval * (1 - 1e-12))).astype(np.int64)


@dataclass(frozen=True)
class KernelTiming:
    """Timing of one fused kernel, in cycles.

    Attributes:
        allocation: (n_ops,) units per stage.
        stage_cycles: (n_ops,) cycles per tile of each stage at its allocation.
        interval: slowest stage's cycles per tile.
        bottleneck: index of the slowest stage (first if tied).
        fill: cycles until the first tile leaves the slowest stage.
        drain: cycles of the stages after the slowest stage for the last tile.
        tiles: tiles streamed through the kernel.
        cycles: fill + (tiles - 1) * interval + drain.
    """

    allocation: np.ndarray
    stage_cycles: np.ndarray
    interval: float
    bottleneck: int
    fill: float
    drain: float
    tiles: int
    cycles: float

    @property
    def utilisation(self) -> np.ndarray:
        """(n_ops,) busy fraction of each stage over the kernel's run."""
        return self.tiles * self.stage_cycles / self.cycles if self.cycles else 0 * self.stage_cycles

    def seconds(self, clock_hz: float) -> float:
        return self.cycles / clock_hz


def fused_kernel_timing(work_cycles: Sequence[float], units: int, tiles: int,
                        allocation: Sequence[int] | None = None) -> KernelTiming:
    """Balance a fused kernel's stages over ``units`` and time ``tiles`` tiles through it.

    Args:
        work_cycles: (n_ops,) cycles per tile of each operator on one unit, in pipeline order.
        units: unit budget.
        tiles: number of tiles (>= 1).
        allocation: optional fixed (n_ops,) allocation instead of ``balance_stages``.
    Returns:
        KernelTiming (cycles; ``seconds(chip.clock_hz)`` converts).
    """
    if tiles < 1:
        raise ValueError(f"tiles must be >= 1, got {tiles}")
    w = np.asarray(work_cycles, np.float64)
    alloc = (balance_stages(w, units) if allocation is None
             else np.asarray(allocation, np.int64))
    if alloc.shape != w.shape or (alloc < 1).any() or alloc.sum() > units:
        raise ValueError(f"allocation {alloc} invalid for {w.size} stages and {units} units")
    d = w / alloc
    b = int(np.argmax(d))
    fill, drain = float(d[: b + 1].sum()), float(d[b + 1:].sum())
    return KernelTiming(alloc, d, float(d[b]), b, fill, drain, tiles,
                        fill + (tiles - 1) * float(d[b]) + drain)


# ----------------------------------------------------------------------------- across sockets


@dataclass(frozen=True)
class PipelineSchedule:
    """A simulated micro-batch schedule; all times in seconds.

    Attributes:
        total: time from the first start to the last end.
        busy: (P,) busy seconds of each socket (M * its chunks' forward + backward).
        bubble_fraction: 1 - sum(busy) / (P * total), the idle share of socket time.
        forward_start, forward_end: (V, M) per pipeline chunk and micro-batch (V = P x virtual
            stages; chunk j runs on socket j % P).
        backward_start, backward_end: (V, M), or None for a forward-only schedule.
        schedule: 'gpipe' or '1f1b'.
        peak_in_flight: (P,) most micro-batch chunks whose forward ran but backward did not yet,
            per socket (activations held); 1 for a forward-only schedule.
        virtual_stages: chunks per socket (1: plain; > 1: interleaved [MEG] Sec. 2.2.2).
    """

    total: float
    busy: np.ndarray
    bubble_fraction: float
    forward_start: np.ndarray
    forward_end: np.ndarray
    backward_start: np.ndarray | None
    backward_end: np.ndarray | None
    schedule: str
    peak_in_flight: np.ndarray
    virtual_stages: int = 1

    @property
    def sockets(self) -> int:
        return self.busy.size


def gpipe_bubble(stages: int, micro_batches: int, virtual_stages: int = 1) -> float:
    """Closed-form bubble fraction of equal stages: (P - 1) / (v M + P - 1) ([MEG] Sec. 2.2:
    bubble time (P - 1) / v per (M x stage time); v = 1 without interleaving)."""
    return (stages - 1) / (virtual_stages * micro_batches + stages - 1)


def stage_orders(P: int, M: int, backward: bool, schedule: str,
                 virtual_stages: int = 1) -> list[list[tuple[int, int, int]]]:
    """Per socket, the (kind, chunk, micro-batch) sequence it runs; kind 0 forward, 1 backward.

    Chunk j (0..P v - 1, model order) runs on socket j % P. GPipe: all forwards, then all
    backwards. 1F1B (PipeDream-flush, [MEG] Sec. 2.2.1): P - s - 1 warm-up forwards, then one
    forward one backward, then the cool-down backwards. Interleaved (v > 1, [MEG] Sec. 2.2.2,
    Megatron-LM's schedule): micro-batches go in groups of P through a socket's chunks in turn,
    warm-up (P - s - 1) x 2 + (v - 1) x P forwards; needs M % P == 0.
    """
    v = virtual_stages
    if v > 1 and M % P:
        raise ValueError(f"interleaved schedule needs micro-batches ({M}) divisible by the "
                         f"pipeline stages ({P})")
    orders = []
    for s in range(P):
        if v == 1:
            fwd = [(0, s, m) for m in range(M)]
            bwd = [(1, s, m) for m in range(M)]
            warm = min(P - s - 1, M)
        else:
            fwd = [(0, ((k // P) % v) * P + s, (k // (P * v)) * P + k % P) for k in range(M * v)]
            bwd = [(1, (v - 1 - (k // P) % v) * P + s, (k // (P * v)) * P + k % P)
                   for k in range(M * v)]
            warm = min((P - s - 1) * 2 + (v - 1) * P, M * v)
        if not backward:
            orders.append(fwd)
        elif schedule == "gpipe":
            orders.append(fwd + bwd)
        else:
            order = fwd[:warm]
            for i in range(len(fwd) - warm):
                order += [fwd[warm + i], bwd[i]]
            orders.append(order + bwd[len(fwd) - warm:])
    return orders


def peak_in_flight(order: Sequence[tuple[int, int, int]],
                   chunk_weight: Sequence[float] | None = None) -> float:
    """Most (weighted) micro-batch chunks a socket holds between their forward and backward.

    Args:
        order: one socket's (kind, chunk, micro-batch) sequence from ``stage_orders``.
        chunk_weight: (V,) weight of each chunk (e.g. its activation bytes), default 1 each.
    """
    held = peak = 0.0
    for kind, j, _ in order:
        held += (1.0 if chunk_weight is None else chunk_weight[j]) * (1 if kind == 0 else -1)
        peak = max(peak, held)
    return peak


@jax.jit
def _max_plus_scan(ids, dur, prev, dep, lag):
    """end[id] = max(end[prev], end[dep] + lag) + dur over ops in dependency order.

    All inputs (L,); slot L of the carried (L + 1,) end array is the time origin (stays 0).
    Returns (L + 1,) start and end times indexed by op id.
    """
    def step(carry, op):
        start_t, end_t = carry
        i, d, p, q, g = op
        s = jnp.maximum(end_t[p], end_t[q] + g)
        return (start_t.at[i].set(s), end_t.at[i].set(s + d)), None

    zeros = jnp.zeros(ids.shape[0] + 1, dur.dtype)
    (start, end), _ = jax.lax.scan(step, (zeros, zeros), (ids, dur, prev, dep, lag))
    return start, end


def pipeline_schedule(forward_seconds: Sequence[float], micro_batches: int,
                      backward_seconds: Sequence[float] | None = None,
                      transfer_seconds: float | Sequence[float] = 0.0,
                      schedule: str = "gpipe", virtual_stages: int = 1) -> PipelineSchedule:
    """Simulate P pipeline stages (sockets) over M micro-batches.

    Args:
        forward_seconds: (V,) forward time of one micro-batch on each chunk, V = P x
            ``virtual_stages`` in model order (chunk j on socket j % P); V = P when not
            interleaved.
        micro_batches: M >= 1.
        backward_seconds: (V,) backward times, or None for a forward-only (inference) pipeline.
        transfer_seconds: scalar or (V - 1,) time to send one micro-batch's activations (and,
            backward, gradients) across the boundary between chunk j and j + 1.
        schedule: 'gpipe' (all forwards, then all backwards) or '1f1b'; identical if forward-only.
        virtual_stages: v >= 1 chunks per socket (interleaved schedule when > 1).
    Returns:
        PipelineSchedule with totals and (V, M) start/end arrays for a timeline.
    """
    f = np.asarray(forward_seconds, np.float64)
    V, M, v = f.size, int(micro_batches), int(virtual_stages)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} unknown; allowed: {', '.join(SCHEDULES)}")
    if f.ndim != 1 or V == 0 or M < 1 or (f < 0).any() or v < 1 or V % v:
        raise ValueError("forward_seconds must be (P x virtual_stages,) >= 0 with P >= 1, "
                         "micro_batches >= 1")
    P = V // v
    b = None if backward_seconds is None else np.asarray(backward_seconds, np.float64)
    if b is not None and (b.shape != f.shape or (b < 0).any()):
        raise ValueError(f"backward_seconds must be ({V},) >= 0")
    c = np.broadcast_to(np.asarray(transfer_seconds, np.float64), (max(V - 1, 0),))
    if (c < 0).any():
        raise ValueError("transfer_seconds must be >= 0")

    kinds = 1 if b is None else 2
    n = kinds * V * M
    L = 1 << max(n - 1, 1).bit_length()  # pad to a power of two: few distinct compiles
    ZERO = L

    def op_id(kind, j, m):
        return (kind * V + j) * M + m

    dur = np.zeros(L)
    dep = np.full(L, ZERO, np.int64)
    lag = np.zeros(L)
    for j in range(V):
        for m in range(M):
            i = op_id(0, j, m)
            dur[i] = f[j]
            if j > 0:
                dep[i], lag[i] = op_id(0, j - 1, m), c[j - 1]
            if b is not None:
                k = op_id(1, j, m)
                dur[k] = b[j]
                dep[k], lag[k] = ((op_id(1, j + 1, m), c[j]) if j < V - 1
                                  else (op_id(0, j, m), 0.0))
    prev = np.full(L, ZERO, np.int64)
    in_flight = np.ones(P)
    for s, order in enumerate(stage_orders(P, M, b is not None, schedule, v)):
        ids = [op_id(k, j, m) for k, j, m in order]
        prev[ids[1:]] = ids[:-1]
        if b is not None:
            in_flight[s] = peak_in_flight(order)
    order_ids = _dependency_order(n, prev, dep, ZERO)
    seq = np.concatenate([order_ids, np.arange(n, L)]).astype(np.int32)
    start, end = _max_plus_scan(jnp.asarray(seq), jnp.asarray(dur[seq], jnp.float32),
                                jnp.asarray(prev[seq], jnp.int32), jnp.asarray(dep[seq], jnp.int32),
                                jnp.asarray(lag[seq], jnp.float32))
    start, end = np.asarray(start[:n], np.float64), np.asarray(end[:n], np.float64)
    start, end = start.reshape(kinds, V, M), end.reshape(kinds, V, M)
    total = float(end.max() - start.min())
    per_chunk = M * (f if b is None else f + b)
    busy = per_chunk.reshape(v, P).sum(axis=0)
    # The scan runs in float32 (JAX default): clamp the rounding noise of a bubble-free schedule.
    bubble = max(0.0, 1.0 - float(busy.sum()) / (P * total)) if total > 0 else 0.0
    return PipelineSchedule(total, busy, bubble, start[0], end[0],
                            None if b is None else start[1], None if b is None else end[1],
                            schedule, in_flight.astype(np.int64), v)


def _dependency_order(n: int, prev: np.ndarray, dep: np.ndarray, zero: int) -> np.ndarray:
    """Topological order of ops 0..n-1 whose predecessors are prev[i] and dep[i] (Kahn)."""
    indeg = np.zeros(n, np.int64)
    users: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for p in {int(prev[i]), int(dep[i])} - {zero}:
            indeg[i] += 1
            users[p].append(i)
    ready = [i for i in range(n) if indeg[i] == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
    if len(order) != n:
        raise RuntimeError("schedule has a cyclic dependency (deadlock)")
    return np.asarray(order, np.int64)
