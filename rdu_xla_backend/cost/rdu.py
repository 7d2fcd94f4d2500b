"""Timing of a lowered graph on an RDU: per kernel, per program, across sockets.

The mapping of the workload (``Graph``) onto a chip (``hardware.ChipSpec``) is this module; the
chip stays data. Work a kernel does is computed once (``kernel_work``: stages, units, tiles, bytes
per tier; it depends on the chip's structure, not on its fitted parameters) and timed by
``kernel_time`` (cheap: a calibration refits launch gaps, efficiencies and latencies without
re-balancing any pipeline).

Per kernel, ``kernel_work``:

- Stages: every operator that does work is a pipeline stage. PCU stages (matmul, vector,
  transcendental, reduce) and PMU stages (memory movement, gathers) get units from their pools
  by ``pipeline.balance_stages``. Work of a stage on ONE unit, in cycles: matmul FLOPs /
  (2 x lanes x stages) (systolic mode: the public peak per PCU); vector and reduce FLOPs /
  (lanes x stages); transcendental FLOPs / lanes (one tail stage); memory bytes / (banks x bank
  word); a gather's cycles from ``banks.block_gather_cost`` on its real indices when the graph
  has them (``gathers``: data-dependent indices as distinct rows, flagged); a block-sparse
  matmul from its mechanisms and real indices (``block_sparse``: PCU lanes and stages per
  block, the transposed layout's balance, PMU gathers with row and column access).
- Fill and drain: a stage that reduces over its tile (matmul, reduction, gather) passes the tile
  on when it is done with it (its per-tile cycles add to the fill, or the drain after the slowest
  stage); an element-wise stage streams vectors on; every stage adds ``stage_latency_cycles``.
- Tiles: a tile of the kernel's largest value fills half a PMU (double buffering).
- Off-chip: the tensors it reads and writes, from the tier ``placement`` put them in; values
  produced inside stay in SRAM while the working set per tile fits, the excess spills to HBM.

Per call, ``kernel_time`` (I interval, F fill, D drain per tile; t tiles; n trips; M memory
seconds per call at the achievable bandwidth ``efficiency x peak``):

- pipeline of one trip: P1 = F + (t - 1) I + D.
- collectives (tensor parallel): their bytes stream tile by tile as one more stage (Cb per
  trip), their hop latency Cl is on the layer's dependency chain: a trip's pipeline is
  T1 = F + D + Cl + max((t - 1) I, Cb).
- looped kernel, ``kernel_looping`` on ([KL]: one call, outer loop pipelined): a trip may start
  its first tile once the previous trip's first tile has left the pipeline (the layer carry),
  so the loop takes (n - 1) max(t I, Cb, F + D + Cl) + T1; weights of trip i + 1 stream while
  trip i computes: time = gap + latency + max(loop, M).
- otherwise every trip is a call of its own (``calls_per_trip`` launches): it cannot prefetch
  before it starts and the next one cannot start before it drains, so each trip takes
  gap x calls_per_trip + latency + max(T1, M / n + D + one collective's latency); the loop carry
  goes through HBM between trips.
- a call that is not one looped kernel's call therefore exposes, per call: the launch gap, the
  first off-chip access latency, the weights it cannot prefetch before it starts (its whole
  stream M / n follows the call start instead of overlapping the previous call), its drain
  and the latency of its last collective. No bandwidth derating is applied on top: at batch 1
  these exposures are what [KL] removes ("synchronization penalties at layer boundaries").
- gap: ``launch_seconds_software`` (host-orchestrated) or ``launch_seconds_hardware``
  (AGCU-orchestrated); latency: ``offchip_latency_seconds`` (first off-chip access of a call).

Across sockets (``Options.sockets`` > 1): ``parallel='tensor'`` splits every kernel's work and
bytes and adds the layer all-reduces (``parallel.collective_seconds``); otherwise
``rdu_plan.choose_plan`` picks the fastest tensor x pipeline x data plan that fits the sockets'
memory ('auto', the default) or of one split ('pipeline', 'data'), and times it (whole layers per
stage, micro-batches re-timed at their size, simulated schedule, gradient all-reduce).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


from rdu_xla_backend.mapping import parallel as par
from rdu_xla_backend.mapping import tiers
from rdu_xla_backend.mapping import pipeline as pl
from rdu_xla_backend.cost import rdu_plan
from rdu_xla_backend.workload.graph import Graph, Kernel, values_fingerprint
from rdu_xla_backend.hardware import ChipSpec
from rdu_xla_backend.mapping.kernel_work import KernelWork, kernel_work
from rdu_xla_backend.mapping.placement import MemoryPlan, plan_memory

BOUNDS = ("compute", "sram", "hbm", "ddr", "network", "launch")
PARALLEL = ("auto", "pipeline", "tensor", "data")
ORCHESTRATION = ("software", "hardware")


@dataclass(frozen=True)
class Options:
    """How the program is mapped.

    Attributes:
        sockets: RDU sockets.
        parallel: 'auto' (the fastest tensor x pipeline x data plan that fits, ``rdu_plan``),
            'pipeline', 'data' (plans of that split only; re-planned when none fits) or
            'tensor' (every matrix split over all sockets).
        micro_batches: M per replica (None: chosen; inference at one sequence per replica is
            never cut).
        schedule: 'gpipe' or '1f1b'.
        virtual_stages: chunks of layers per pipeline socket (interleaved schedule when > 1).
        recompute: activation recomputation in the backward (None: chosen when needed to fit).
        batch: sequences in the step (None: the leading axis of the layer carry).
        heads: attention heads, which a tensor-parallel degree must divide (None: unchecked).
        orchestration: 'software' (host launches) or 'hardware' (AGCU-sequenced launches).
        kernel_looping: a looped kernel's outer loop is pipelined (launch, sync, fill and drain
            paid once per call) when True, else every trip is a kernel call of its own.
        plan: a ``parallel.ParallelPlan`` to time as given (layers per chunk included), e.g. the
            one an earlier search chose; None: searched as ``parallel`` says.
    """

    sockets: int = 1
    parallel: str = "auto"
    micro_batches: int | None = None
    schedule: str = "1f1b"
    virtual_stages: int = 1
    recompute: bool | None = None
    batch: int | None = None
    heads: int | None = None
    orchestration: str = "software"
    kernel_looping: bool = True
    plan: par.ParallelPlan | None = None

    def __post_init__(self) -> None:
        for name in ("sockets", "virtual_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("micro_batches", "batch", "heads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel {self.parallel!r} unknown; allowed: {', '.join(PARALLEL)}")
        if self.orchestration not in ORCHESTRATION:
            raise ValueError(f"orchestration {self.orchestration!r} unknown; allowed: "
                             f"{', '.join(ORCHESTRATION)}")
        if self.schedule not in pl.SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} unknown; allowed: "
                             f"{', '.join(pl.SCHEDULES)}")

    @property
    def shards(self) -> int:
        """Ways every kernel's work is split (tensor parallel), else 1."""
        return self.sockets if self.parallel == "tensor" else 1


@dataclass
class KernelPerf:
    """Timing of one kernel on one socket (its share); times and bytes for ALL its calls."""

    name: str
    phase: str
    calls: int
    trips: int
    flops: float
    bytes: dict[str, float]  # off-chip bytes per tier (plus 'sram' read by PMU stages)
    pipeline_s: float
    memory_s: dict[str, float]
    network_s: float
    launch_s: float  # launch gaps and first-access latencies
    time_s: float
    bound: str
    tiles: int
    pcus: int
    pmus: int
    utilisation: float  # mean busy fraction of the allocated units
    sram_per_tile: float
    spill_bytes: float
    gather_cycles: float
    gather_conflicts: float
    stage_names: list[str] = field(default_factory=list)
    stage_share: list[float] = field(default_factory=list)  # busy fraction of each stage
    launches: float = 0.0  # kernel calls made (per trip when the loop is not pipelined)

    @property
    def work_s(self) -> float:
        """Time without launch gaps and latencies."""
        return self.time_s - self.launch_s

    @property
    def achieved_flops(self) -> float:
        return self.flops / self.time_s if self.time_s else 0.0

    @property
    def offchip_bytes(self) -> float:
        return sum(v for t, v in self.bytes.items() if t != "sram")


@dataclass
class ProgramPerf:
    """Timing of a whole program on ``sockets`` sockets."""

    chip: ChipSpec
    options: Options
    kernels: list[KernelPerf]
    single_socket_s: float  # all kernels in order on one socket
    step_s: float  # with the options' parallelism
    schedule: pl.PipelineSchedule | None
    placement: dict[int, str]
    overflow: list[int]  # tensors that fit no tier (reported, never hidden)
    notes: list[str]
    memory: MemoryPlan | None = None
    works: list[KernelWork] = field(default_factory=list)  # what ``kernels`` were timed from
    plan: rdu_plan.PlanTiming | None = None  # the multi-socket plan (None: one socket, tensor)

    @property
    def flops(self) -> float:
        """FLOPs of the whole step on all sockets (``kernels`` hold one socket's share: one
        tensor-parallel shard of one data-parallel replica)."""
        if self.plan is not None:
            shards = self.plan.plan.tensor * self.plan.plan.data
        else:
            shards = self.options.sockets if self.options.parallel == "tensor" else 1
        return shards * sum(k.flops for k in self.kernels)

    @property
    def launches(self) -> float:
        """Kernel calls of one run of the program (per socket)."""
        return sum(k.launches for k in self.kernels)

    @property
    def bound(self) -> str:
        """The bound of the kernels that take most of the time."""
        by = {}
        for k in self.kernels:
            by[k.bound] = by.get(k.bound, 0.0) + k.time_s
        return max(by, key=by.get) if by else "launch"


def achievable_bytes_per_s(chip: ChipSpec, tier: str) -> float:
    """Bandwidth a streaming kernel reaches on a tier (bytes/s): peak x the tier's efficiency;
    DDR's public figure is a lower bound, so its peak is that x ``ddr_peak_factor``."""
    p = chip.params
    eff = {"hbm": p.hbm_efficiency, "ddr": p.ddr_efficiency * p.ddr_peak_factor}.get(tier, 1.0)
    return tiers.tier_bytes_per_s(chip, tier) * eff


def kernel_time(w: KernelWork, chip: ChipSpec, options: Options = Options()) -> KernelPerf:
    """Time all calls of a kernel from its work (see the module docstring for the model)."""
    k = w.kernel
    clk, n, t = chip.clock_hz, k.trips, w.tiles
    interval, fill, drain = w.interval / clk, w.fill / clk, w.drain / clk
    one_trip = fill + (t - 1) * interval + drain
    # The layer's all-reduces stream tile by tile with the pipeline (their bytes overlap the
    # other stages); their hop latency is on the layer's dependency chain.
    lat_each, bw_each = (par.collective_parts(k.carry_bytes, w.shards, chip) if k.collectives
                         else (0.0, 0.0))
    coll_lat, coll_bw = k.collectives * lat_each, k.collectives * bw_each
    gap = (chip.launch_seconds_software if options.orchestration == "software"
           else chip.launch_seconds_hardware)
    nbytes = dict(w.bytes)
    looped = options.kernel_looping and n > 1
    if n > 1 and not looped:  # the carry goes off chip between the trips' calls
        default = "hbm" if chip.hbm_bytes > 0 else "ddr"
        nbytes[default] = nbytes.get(default, 0.0) + 2 * k.carry_bytes * (n - 1) / w.shards
    latency = chip.params.offchip_latency_seconds if nbytes else 0.0
    memory = {tier: b / achievable_bytes_per_s(chip, tier) for tier, b in nbytes.items()}
    m = sum(memory.values())
    chain = fill + drain + coll_lat  # a tile's way through one trip, collectives included
    trip_pipe = chain + max((t - 1) * interval, coll_bw)
    if looped:
        pipe = (n - 1) * max(t * interval, coll_bw, chain) + trip_pipe
        work_s, launch_s, launches = max(pipe, m), gap + latency, 1
    else:
        pipe = n * trip_pipe
        work_s = n * max(trip_pipe, m / n + drain + lat_each)
        launch_s, launches = n * (gap * k.calls_per_trip + latency), n * k.calls_per_trip
    network = n * (coll_lat + coll_bw)
    terms = {"compute" if w.bottleneck_pcu else "sram": pipe, **memory, "network": network}
    bound = max(terms, key=terms.get)
    if launch_s > work_s:
        bound = "launch"
    nbytes["sram"] = w.sram_bytes
    c = k.calls
    return KernelPerf(k.name, k.phase, c, n, k.flops * c / w.shards,
                      {x: b * c for x, b in nbytes.items()}, pipe * c,
                      {x: s * c for x, s in memory.items()}, network * c, launch_s * c,
                      (work_s + launch_s) * c, bound, t, w.pcus, w.pmus, w.utilisation,
                      w.sram_per_tile, w.spill_bytes * c, w.gather_cycles * c,
                      w.gather_conflicts * c, w.stage_names, w.stage_share, launches * c)


# ----------------------------------------------------------------------------- program


def _structure(chip: ChipSpec) -> tuple:
    """The chip values ``kernel_work`` depends on (the cache key; fitted values excluded)."""
    p = chip.params
    return (chip.name, chip.peak_bf16_flops, chip.pcus, chip.pmus, chip.sram_bytes,
            chip.hbm_bytes, getattr(chip, "ddr_bytes", 0.0), chip.pmu_addresses_per_cycle,
            p.simd_lanes_per_pcu, p.stages_per_pcu, p.banks_per_pmu, p.bank_word_bytes,
            p.clock_hz, p.stage_latency_cycles)


def _concrete_key(graph: Graph) -> tuple:
    """The graph's concrete index values as a hashable key (shapes and a hash of the bytes)."""
    return tuple((pos, values_fingerprint(a)) for pos, a in sorted(graph.concrete.items()))


def program_work(graph: Graph, chip: ChipSpec, shards: int, placement_sockets: int):
    """(memory plan, per-kernel work) of ``graph``, cached on the graph for refits.

    The key holds the concrete index values: a prune/regrow update that replaces them
    (``graph.concrete``) reprices the gathers and the sparse matmuls.
    """
    cache = graph.__dict__.setdefault("_work_cache", {})
    key = (_structure(chip), shards, placement_sockets, _concrete_key(graph))
    if key not in cache:
        plan = plan_memory(graph, chip, placement_sockets)
        gathers = graph.__dict__.setdefault("_gather_cache", {})
        works = [kernel_work(k, graph, chip, plan.tier_of, shards, gathers)
                 for k in graph.kernels]
        cache[key] = (plan, works)
    return cache[key]


def program_perf(graph: Graph, chip: ChipSpec, options: Options = Options()) -> ProgramPerf:
    """Time a lowered program on ``options.sockets`` sockets of ``chip``.

    One socket: the kernels in order (planned like many sockets when its activations spill to
    DDR: micro-batches may keep them in HBM). ``parallel='tensor'``: every kernel split over all
    sockets with the layer all-reduces. Otherwise a tensor x pipeline x data plan
    (``rdu_plan.choose_plan``); ``kernels`` are then one data-parallel replica's, every
    micro-batch on every pipeline stage added up, on one tensor-parallel shard (the table), and
    the step time comes from the plan's simulated schedule, update and all-reduce.

    Raises:
        ValueError: not an RDU, or no plan of the sockets fits their memory.
    """
    if not isinstance(chip, ChipSpec):
        raise ValueError(f"{chip.name} is not an RDU; use cost.gpu for GPU baselines")
    P = options.sockets
    plan, works = program_work(graph, chip, 1, P)
    kernels = [kernel_time(w, chip, options) for w in works]
    single = sum(k.time_s for k in kernels)
    notes = plan.notes()
    schedule, timing = None, None
    # One socket whose activations spill to DDR (or fit nowhere) is planned too: gradient
    # accumulation over micro-batches may hold them in HBM.
    spilled = any(plan.category_of.get(k) == "activations" for k in plan.spilled + plan.overflow)
    if P == 1 and not (spilled and options.parallel == "auto"):
        step = single
    elif options.parallel == "tensor":
        _, works = program_work(graph, chip, P, P)
        kernels = [kernel_time(w, chip, options) for w in works]
        step = sum(k.time_s for k in kernels)
        hop = chip.params.inter_socket_latency_seconds
        notes.append(f"tensor parallel over {P} sockets: work / {P}; per layer per pass "
                     f"{max((k.collectives for k in graph.kernels), default=0)} all-reduces of the "
                     "layer activation "
                     f"({math.ceil(math.log2(P))} hops x {hop:.3g} s on each layer's dependency "
                     "chain, ring bytes streamed with the pipeline)")
    else:
        timing, plan_notes = rdu_plan.choose_plan(
            graph, chip, options, lambda t: program_work(graph, chip, t, P)[1],
            lambda w: kernel_time(w, chip, options))
        works = program_work(graph, chip, timing.plan.tensor, P)[1]
        kernels = timing.kernels()
        step = timing.step_s
        schedule = timing.schedule if timing.plan.pipeline > 1 else None
        notes += plan_notes + rdu_plan.plan_lines(timing, chip)
    notes += sram_notes(kernels, chip)
    spills = [k for k in kernels if k.spill_bytes > 0]
    if spills:
        notes.append(f"memory: SRAM overflow: {len(spills)} kernels' working set per tile "
                     f"exceeds SRAM; {sum(k.spill_bytes for k in spills) / 1e9:.4g} GB spilled "
                     "to HBM and back")
    return ProgramPerf(chip, options, kernels, single, step, schedule, plan.tier_of,
                       plan.overflow, notes, plan, works, timing)


def sram_notes(kernels: list[KernelPerf], chip: ChipSpec) -> list[str]:
    """A note on kernels whose working set per tile is larger than one tile buffer: it is the
    sum of every stage's output buffer for one tile (each stage writes its own PMUs), held over
    the kernel's PMUs; only what exceeds the chip's SRAM spills (charged, see the spill note)."""
    tile = chip.sram_bytes_per_pmu / 2
    big = sorted((k for k in kernels if k.sram_per_tile > tile), key=lambda k: -k.sram_per_tile)
    if not big:
        return []
    over = [k.name for k in big if k.sram_per_tile > chip.sram_bytes]
    worst = ", ".join(f"{k.name} {k.sram_per_tile / 2**10:,.0f} KiB = "
                      f"{math.ceil(k.sram_per_tile / tile)} buffers on {k.pmus} PMUs"
                      for k in big[:3])
    return [f"sram: {len(big)} kernels hold more than one {tile / 2**10:.0f} KiB tile per tile: "
            f"the sum of their stages' output buffers, one per stage ({worst}); "
            + (f"{', '.join(over)} exceed the chip's SRAM and spill" if over
               else "all fit the chip's SRAM")]


def assumptions(chip: ChipSpec, options: Options = Options()) -> list[str]:
    """The mapping assumptions of this model, beyond ``hardware.assumptions(chip)``."""
    p = chip.params
    gap = (chip.launch_seconds_software if options.orchestration == "software"
           else chip.launch_seconds_hardware)
    return [
        f"mapping: matmul at 2 x lanes x stages = {2 * chip.macs_per_pcu_per_cycle} FLOP per PCU "
        "cycle (systolic); vector/reduce at lanes x stages; transcendental at lanes (tail stage)",
        f"mapping: memory stages move banks x word = "
        f"{chip.banks_per_pmu * p.bank_word_bytes} B per PMU cycle; gathers priced by "
        "PMU bank conflicts and address-generation rate on the real indices; block-sparse "
        "matmuls per stored block (lanes x stages rounding, dx through the transposed layout's "
        "fullest row, dvalues' column access of x)",
        f"mapping: tile = half a PMU ({chip.sram_bytes_per_pmu / 2 / 2**10:.0f} KiB, double "
        "buffered); intermediates stay in SRAM while the working set per tile fits",
        "mapping: kernel-boundary tensors in HBM by priority (activations, KV cache, weights, "
        "optimizer state), spilling to DDR, overflow reported; tensors broadcast from small "
        "inputs are generated on chip",
        f"mapping: HBM at {p.hbm_efficiency:.3g} and DDR at {p.ddr_efficiency:.3g} of peak "
        f"(DDR peak {p.ddr_peak_factor:.3g} x the public figure); an unlooped call exposes its "
        "launch gap, first access, weight stream, drain and last collective latency; "
        f"first off-chip access of a call {p.offchip_latency_seconds:.3g} s; "
        f"{p.stage_latency_cycles:.3g} cycles per stage added to fill/drain",
        f"mapping: up to {chip.stages_per_pcu} consecutive element-wise ops share one PCU "
        "(one SIMD stage each)",
        f"mapping: {options.orchestration}-orchestrated launches "
        f"({gap:.3g} s per call), kernel looping {'on' if options.kernel_looping else 'off'}",
        f"mapping: {options.sockets} socket(s), {options.parallel} parallel"
        + (f" (plan chosen by memory and time; {options.schedule} when pipelined; "
           "micro-batches re-timed at their size; data-parallel gradient all-reduce "
           "not overlapped; activations split over tensor-parallel sockets as with sequence "
           "parallelism)" if options.sockets > 1 and options.parallel != "tensor" else ""),
    ]
