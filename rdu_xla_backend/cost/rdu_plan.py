"""A training or inference step on many RDU sockets under a ``mapping.parallel.ParallelPlan``.

Each pipeline chunk runs its whole layers (``parallel.assign_layers``) for one micro-batch of
batch / (D M) sequences; its kernels are re-timed at that size by ``cost.rdu.kernel_time`` (passed
in as ``time_fn``), so a micro-batch pays its own launch, fill and drain, streams fewer tiles and
reads its stage's weights again (micro-batch efficiency):

- tiles per trip: ceil(tiles / (D M)); loop trips: the chunk's layers; layer carry / (D M).
- bytes: weights and optimizer state x (chunk's share of the layers) / T; activations and KV
  cache also / (D M); a socket's tensors live in HBM by priority (activations, KV cache,
  weights, optimizer state) up to its capacity, the rest in DDR.
- backward of a chunk: its backward kernels, plus its layers' forward again with recomputation.
- between chunks: one hop (``inter_socket_latency_seconds``) + the micro-batch's layer input /
  T over the inter-socket link, each way.

Step = simulated schedule (``pipeline.pipeline_schedule``) + optimizer update of the largest
parameter share + the data-parallel gradient all-reduce (not overlapped with the backward).

``choose_plan`` enumerates the plans the socket count, the batch and the layer widths allow
(``parallel.candidate_plans``), refuses those whose busiest socket does not fit HBM + DDR
(``parallel.socket_bytes``), ranks the rest by the closed-form pipeline time
sum(f + b) + (M - 1) max(f + b) and simulates the best few.

Units: seconds, bytes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from rdu_xla_backend.mapping import parallel as par
from rdu_xla_backend.mapping import pipeline as pl
from rdu_xla_backend.mapping.stages import Structure, carry_shape, structure

SIMULATED = 3  # plans simulated after ranking by the closed form


def hbm_fractions(held: dict[str, float], hbm_bytes: float) -> dict[str, float]:
    """Share of each category a socket keeps in HBM, filled by priority (activations, KV cache,
    weights and gradients, optimizer state); the rest is in DDR."""
    left, frac = hbm_bytes, {}
    order = (("activations", ("activations",)), ("kv_cache", ("kv_cache",)),
             ("weights", ("weights", "gradients")), ("optimizer_state", ("optimizer_state",)))
    for cat, parts in order:
        need = sum(held.get(p, 0.0) for p in parts)
        take = min(need, max(left, 0.0))
        frac[cat] = take / need if need else 1.0
        left -= take
    return frac


def stage_work(w, cat_bytes: dict, layer_frac: float, trips: int, batch_div: float,
               tensor: int, frac: dict, chip):
    """``KernelWork`` of one micro-batch of a kernel on one chunk (see the module docstring)."""
    default = "hbm" if chip.hbm_bytes > 0 else "ddr"
    nbytes = {"hbm": 0.0, "ddr": 0.0}
    for c, b in cat_bytes.items():
        b *= layer_frac / tensor / (1.0 if c in par.PARAMETER_CATEGORIES else batch_div)
        if default == "ddr":
            nbytes["ddr"] += b
        else:
            nbytes["hbm"] += b * frac[c]
            nbytes["ddr"] += b * (1 - frac[c])
    scale = layer_frac / batch_div
    nbytes[default] += w.spill_bytes * scale
    k = dataclasses.replace(w.kernel, trips=trips, carry_bytes=w.kernel.carry_bytes / batch_div)
    return dataclasses.replace(
        w, kernel=k, tiles=max(1, math.ceil(w.tiles / batch_div)),
        bytes={t: b for t, b in nbytes.items() if b > 0}, sram_bytes=w.sram_bytes * scale,
        spill_bytes=w.spill_bytes * scale, gather_cycles=w.gather_cycles * scale,
        gather_conflicts=w.gather_conflicts * scale)


@dataclass
class PlanTiming:
    """A plan's step: schedule, per-chunk micro-batch times, memory per socket, verdict."""

    plan: par.ParallelPlan
    forward_s: list[float]  # (P v,) one micro-batch per chunk
    backward_s: list[float] | None
    transfer_s: float
    update_s: float
    allreduce_s: float
    memory: list[dict[str, float]]  # per pipeline socket, by category
    fits: bool
    estimate_s: float  # closed-form step (ranking)
    schedule: pl.PipelineSchedule | None = None
    parts: dict = dataclasses.field(default_factory=dict)
    # (one layer, embedding chunk's other kernels, head chunk's other kernels) seconds of one
    # micro-batch: the costs the layers are balanced with.
    balance: tuple = (0.0, 0.0, 0.0)

    def kernels(self) -> list:
        """Per kernel (graph order), one ``KernelPerf`` of one data-parallel replica: every
        micro-batch on every pipeline chunk added up (per tensor-parallel socket)."""
        return [combine(self.parts[i]) for i in sorted(self.parts)]

    @property
    def step_s(self) -> float:
        pipe = self.schedule.total if self.schedule is not None else self.estimate_s - (
            self.update_s + self.allreduce_s)
        return pipe + self.update_s + self.allreduce_s

    def simulate(self) -> PlanTiming:
        self.schedule = pl.pipeline_schedule(self.forward_s, self.plan.micro_batches,
                                             self.backward_s, self.transfer_s,
                                             self.plan.schedule, self.plan.virtual_stages)
        return self


def group_seconds(works, st: Structure, time_fn) -> dict[str, float]:
    """Seconds of each kernel group over the whole batch on one tensor-parallel group (the
    costs ``assign_layers`` balances)."""
    out = {"first": 0.0, "layers": 0.0, "last": 0.0, "update": 0.0}
    for i, w in enumerate(works):
        out[st.groups[i]] += time_fn(w).time_s
    return out


def time_plan(plan: par.ParallelPlan, works, st: Structure, chip, time_fn) -> PlanTiming:
    """Per-chunk micro-batch times, memory per socket and the closed-form step of ``plan``
    (``works``: the program's ``KernelWork`` split ``plan.tensor`` ways)."""
    P, V, T = plan.pipeline, plan.chunks, plan.tensor
    div = plan.data * plan.micro_batches
    held = par.in_flight(plan, st.training)
    memory = [par.socket_bytes(plan, s, st.shares, st.training, held[s]) for s in range(P)]
    fits = all(sum(m.values()) <= chip.hbm_bytes + chip.ddr_bytes for m in memory)
    fracs = [hbm_fractions(m, chip.hbm_bytes) for m in memory]
    f, b, again, fixed = [0.0] * V, [0.0] * V, [0.0] * V, [0.0] * V
    parts: dict[int, list] = {}  # kernel -> [(KernelPerf of one run, runs per step)]
    for i, w in enumerate(works):
        g, k = st.groups[i], w.kernel
        if g == "update":
            continue
        for j in (range(V) if g == "layers" else [0] if g == "first" else [V - 1]):
            n = plan.layers[j] if g == "layers" else k.trips
            if n == 0:
                continue
            share = n / k.trips if g == "layers" else 1.0
            kp = time_fn(stage_work(w, st.cat_bytes[i], share, n, div, T, fracs[j % P], chip))
            kp.flops /= div
            parts.setdefault(i, []).append((kp, plan.micro_batches))
            t = kp.time_s
            fixed[j] += t if g != "layers" else 0.0
            if k.phase == "forward":
                f[j] += t
                again[j] += t if g == "layers" else 0.0
            else:
                b[j] += t
    if plan.recompute:  # the layers' forward runs again in the backward (its FLOPs too)
        b = [x + y for x, y in zip(b, again)]
        fixed = [x - y for x, y in zip(fixed, again)]  # the layers' share, for the balance
        for i in parts:
            if st.groups[i] == "layers" and works[i].kernel.phase == "forward":
                parts[i] = [(kp, 2 * runs) for kp, runs in parts[i]]
    hop = chip.params.inter_socket_latency_seconds if P > 1 else 0.0
    transfer = hop + st.shares["carry"] / (div * T) / chip.inter_socket_bytes_per_s
    update = 0.0
    for i, w in enumerate(works):  # each socket updates its own parameters
        if st.groups[i] != "update":
            continue
        parts[i] = []
        for s in range(P):
            share = memory[s]["weights"] * T / (st.shares["params"] or 1.0)
            kp = time_fn(stage_work(w, st.cat_bytes[i], share, w.kernel.trips, 1.0, T,
                                    fracs[s], chip))
            kp.flops *= share
            parts[i].append((kp, 1))
            update = max(update, kp.time_s)
    grads = max(s["gradients"] for s in memory)
    allreduce = par.collective_seconds(grads, plan.data, chip) if st.training else 0.0
    load = [sum(f[j] + b[j] for j in range(s, V, P)) for s in range(P)]
    top = max(load)
    pipe = (plan.micro_batches * top + (sum(f) + sum(b) - top) / plan.virtual_stages
            + (V - 1) * transfer * (2 if st.training else 1))
    layer_s = marginal_layer_seconds(plan, works, st, chip, time_fn, fracs[0])
    return PlanTiming(plan, f, b if st.training else None, transfer, update, allreduce, memory,
                      fits, pipe + update + allreduce, parts=parts,
                      balance=(layer_s, fixed[0], fixed[-1] if V > 1 else 0.0))


def marginal_layer_seconds(plan: par.ParallelPlan, works, st: Structure, chip, time_fn,
                           frac: dict) -> float:
    """Seconds one more layer adds to a chunk's micro-batch (forward + backward, + the
    recomputed forward): (T(L layers) - T(2 layers)) / (L - 2) of the layer kernels, so that a
    chunk's fixed costs (the loop kernel's launch, fill and drain) do not count per layer."""
    L, div, out = st.layers, plan.data * plan.micro_batches, 0.0
    for i, w in enumerate(works):
        if st.groups[i] != "layers":
            continue
        if L <= 2:
            t = time_fn(stage_work(w, st.cat_bytes[i], 1.0, L, div, plan.tensor, frac, chip))
            out += t.time_s / L
            continue
        many, two = (time_fn(stage_work(w, st.cat_bytes[i], n / L, n, div, plan.tensor, frac,
                                        chip)).time_s for n in (L, 2))
        per = (many - two) / (L - 2)
        out += per * (2 if plan.recompute and w.kernel.phase == "forward" else 1)
    return out


def lay_out_and_time(plan: par.ParallelPlan, virtual_stages: int, works, st: Structure, chip,
                     time_fn) -> list[PlanTiming]:
    """Timings of ``plan`` with whole layers per chunk (v virtual stages when the layers and
    micro-batches allow): balanced at the whole batch's costs, then at one micro-batch's
    marginal costs, and the even split; best closed-form estimate first (the estimate cannot
    rank close layouts: ``choose_plan`` simulates the layouts of its best plans)."""
    v = virtual_stages
    if plan.pipeline == 1 or st.layers < plan.pipeline * v or plan.micro_batches % (
            plan.pipeline if v > 1 else 1):
        v = 1
    c = group_seconds(works, st, time_fn)
    layers = (par.assign_layers(st.layers, plan.pipeline * v, c["layers"] / st.layers,
                                c["first"], c["last"])
              if st.layers > 1 else (1,) * plan.pipeline)
    plan = dataclasses.replace(plan, virtual_stages=v, layers=layers)
    timed = time_plan(plan, works, st, chip, time_fn)
    timings = [timed]
    if st.layers > 1 and plan.chunks > 1:
        layouts = {par.assign_layers(st.layers, plan.chunks, *timed.balance)}
        if st.layers % plan.chunks == 0:
            layouts.add((st.layers // plan.chunks,) * plan.chunks)
        timings += [time_plan(dataclasses.replace(plan, layers=other), works, st, chip, time_fn)
                    for other in sorted(layouts - {layers})]
    return sorted(timings, key=lambda t: (not t.fits, t.estimate_s))


def choose_plan(graph, chip, options, works_for, time_fn) -> tuple[PlanTiming, list[str]]:
    """The fastest plan of ``options.sockets`` sockets that fits (see the module docstring).

    Args:
        graph: the lowered program.
        chip: the RDU.
        options: ``cost.rdu.Options`` (sockets, parallel, micro_batches, schedule,
            virtual_stages, recompute, batch, heads).
        works_for: tensor degree T -> the program's ``KernelWork`` split T ways.
        time_fn: ``KernelWork`` -> ``KernelPerf`` (``cost.rdu.kernel_time`` with the options).
    Returns:
        (the chosen plan's timing, simulated; notes on what was refused or re-planned).
    Raises:
        ValueError: no plan fits HBM + DDR of the sockets.
    """
    st = structure(graph)
    shape = carry_shape(graph)
    batch = options.batch or (shape[0] if shape else 1)
    width = shape[-1] if shape else None
    if options.plan is not None:  # a plan chosen before (e.g. re-timed under other launches)
        given = time_plan(options.plan, works_for(options.plan.tensor), st, chip, time_fn)
        return given.simulate(), [f"plan: batch {batch}, given: {options.plan.describe(batch)}"]
    kinds = {"auto": ("tensor", "pipeline", "data")}.get(options.parallel, (options.parallel,))
    if st.recomputes or not st.training:
        recompute = (False,)
    else:
        recompute = (False, True) if options.recompute is None else (options.recompute,)
    notes = []

    def evaluate(kinds, micro_batches):
        plans = par.candidate_plans(options.sockets, st.layers, batch, st.training,
                                    par.tensor_degrees(options.sockets, width, options.heads),
                                    kinds, options.schedule, micro_batches, recompute)
        return [lay_out_and_time(p, options.virtual_stages, works_for(p.tensor), st, chip,
                                 time_fn) for p in plans]  # per plan: its layouts

    layouts = evaluate(kinds, options.micro_batches)
    timed = [ts[0] for ts in layouts]
    fitting = [t for t in timed if t.fits]
    for again_kinds, why in ((kinds, "micro-batches chosen instead"),
                             (("tensor", "pipeline", "data"), "re-planned over all splits")):
        if fitting or (again_kinds == kinds and not options.micro_batches) or (
                again_kinds != kinds and options.parallel == "auto"):
            continue
        notes.append(f"plan: no {options.parallel}-parallel plan of {options.sockets} sockets "
                     f"with {options.micro_batches or 'any number of'} micro-batches fits HBM + "
                     f"DDR (or the batch does not split so); {why}")
        layouts = evaluate(again_kinds, None)
        timed = [ts[0] for ts in layouts]
        fitting = [t for t in timed if t.fits]
    if not fitting:
        need = min((max(sum(m.values()) for m in t.memory) for t in timed), default=0.0)
        raise ValueError(f"no parallel plan of {options.sockets} {chip.name} sockets fits: the "
                         f"smallest needs {need / 1e9:.4g} GB on one socket, which has "
                         f"{(chip.hbm_bytes + chip.ddr_bytes) / 1e9:.4g} GB (HBM + DDR)")
    refused = len(timed) - sum(t.fits for t in timed)
    if refused:
        notes.append(f"plan: {refused} of {len(timed)} candidate plans refused: a socket's "
                     "parameters, gradients, optimizer state and held activations exceed its "
                     "HBM + DDR")
    best = sorted(range(len(timed)), key=lambda i: (not timed[i].fits, timed[i].estimate_s))
    chosen = min((t.simulate() for i in best[:SIMULATED] for t in layouts[i] if t.fits),
                 key=lambda t: t.step_s)
    if st.recomputes:
        notes.append("plan: the traced program already recomputes activations (remat): only "
                     "layer inputs are held for the backward")
    return chosen, notes + [f"plan: batch {batch}, {len(fitting)} of {len(timed)} candidate "
                            f"plans fit; chose {chosen.plan.describe(batch)}"]


SUMMED = ("calls", "trips", "flops", "pipeline_s", "network_s", "launch_s", "time_s",
          "spill_bytes", "gather_cycles", "gather_conflicts", "launches")


def combine(parts: list) -> object:
    """One ``KernelPerf`` from ``[(KernelPerf, runs)]``: times, bytes, FLOPs and calls added
    (trips once per chunk), the rest (tiles, units, bound) from the part that takes longest."""
    main = max(parts, key=lambda p: p[0].time_s * p[1])[0]
    out = {}
    for name in SUMMED:
        out[name] = sum(getattr(kp, name) * (1 if name == "trips" else runs)
                        for kp, runs in parts)
    for name in ("bytes", "memory_s"):
        d: dict[str, float] = {}
        for kp, runs in parts:
            for key, v in getattr(kp, name).items():
                d[key] = d.get(key, 0.0) + v * runs
        out[name] = d
    return dataclasses.replace(main, **out)


def plan_lines(t: PlanTiming, chip) -> list[str]:
    """Notes on a multi-socket plan: schedule, bubble, memory of the busiest socket, all-reduce."""
    p, s = t.plan, t.schedule
    lines = []
    if p.pipeline > 1:
        inter = f" interleaved x{p.virtual_stages}" if p.virtual_stages > 1 else ""
        mbs = f"{p.micro_batches} micro-batch{'es' if p.micro_batches > 1 else ''}"
        lines.append(f"pipeline over {p.pipeline} sockets: {mbs}, "
                     f"{s.schedule}{inter}, bubble {100 * s.bubble_fraction:.1f}% (equal stages: "
                     f"{100 * pl.gpipe_bubble(p.pipeline, p.micro_batches, p.virtual_stages):.1f}%)"
                     f", per micro-batch forward {max(t.forward_s) * 1e3:.4g} ms"
                     + (f", backward {max(t.backward_s) * 1e3:.4g} ms"
                        if t.backward_s else "")
                     + f" on the slowest stage, stage transfer {t.transfer_s * 1e3:.3g} ms")
    busiest = max(t.memory, key=lambda m: sum(m.values()))
    held = ", ".join(f"{k} {v / 1e9:.4g} GB" for k, v in busiest.items() if v)
    lines.append(f"memory per socket (busiest): {sum(busiest.values()) / 1e9:.4g} GB of "
                 f"{chip.hbm_bytes / 1e9:.4g} GB HBM + {chip.ddr_bytes / 1e9:.4g} GB DDR ({held})")
    if p.data > 1 and t.allreduce_s:
        lines.append(f"data parallel over {p.data} replicas: gradient all-reduce of "
                     f"{busiest['gradients'] / 1e9:.4g} GB per socket, "
                     f"{t.allreduce_s * 1e3:.4g} ms (after the backward, not overlapped)")
    if t.update_s:
        lines.append(f"optimizer update of the largest parameter share {t.update_s * 1e3:.4g} ms")
    return lines
