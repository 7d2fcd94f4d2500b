"""Timing of a lowered graph on an RDU: per kernel, per program, across sockets.

The mapping of the workload (``Graph``) onto a chip (``hardware.ChipSpec``) is this module; the
chip stays data. Per kernel call:

- Stages: every operator that does work is a pipeline stage. PCU stages (matmul, vector,
  transcendental, reduce) and PMU stages (memory movement, gathers) get units from their pools
  by ``pipeline.balance_stages``. Work of a stage on ONE unit, in cycles:
  matmul FLOPs / (2 x lanes x stages) (systolic mode: the public peak per PCU); vector and
  reduce FLOPs / (lanes x stages) (an element-wise chain packs into the SIMD stages);
  transcendental FLOPs / lanes (one tail stage); memory bytes / (banks x bank word); a gather's
  cycles come from ``memory.block_gather_cost`` on the real ``row_indices`` when the graph has
  them, else on a seeded random draw of the same shape (the expected-cost model).
- Tiles: the kernel streams tiles; a tile of its largest value fills half a PMU (double
  buffering), so tiles = ceil(largest value / (PMU bytes / 2)). A looped kernel streams
  trips x tiles through one pipeline when kernel looping is on (fill, drain and launch paid
  once), else pays them every trip. ``pipeline.fused_kernel_timing`` gives the cycles.
- Off-chip: the tensors a kernel reads and writes, each from the tier it is placed in (HBM, or
  DDR when the live tensors exceed HBM: a liveness-based greedy placement), at that tier's
  bandwidth; values produced inside a kernel stay in SRAM while the working set per tile fits,
  the excess spills to HBM and back.
- time = max(pipeline, memory, network) + launches x launch gap; the bound is the largest term.

Across sockets (``Options.sockets`` > 1): ``parallel='pipeline'`` splits each layer loop over the
sockets and feeds M micro-batches through them (``pipeline.pipeline_schedule``, bubbles
counted); ``parallel='tensor'`` splits every kernel's work and adds ring all-reduces of the layer
activation (two per layer per pass, Megatron style) on the inter-socket links, overlapped with
compute (the RDU streams collectives inside the kernel).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from rdu_xla_backend.emulator import memory as mem
from rdu_xla_backend.emulator import pipeline as pl
from rdu_xla_backend.graph import PCU_KINDS, GatherInfo, Graph, Kernel
from rdu_xla_backend.hardware import ChipSpec

BOUNDS = ("compute", "sram", "hbm", "ddr", "network", "launch")
PARALLEL = ("pipeline", "tensor")
ORCHESTRATION = ("software", "hardware")
MAX_GATHER_LISTS = 64  # index lists simulated per gather (evenly sampled); the rest scales
MAX_GATHER_FEATURES = 1 << 16  # elements per simulated list; longer lists are sampled and scaled
EXPECTED_SEED = 0


@dataclass(frozen=True)
class Options:
    """How the program is mapped.

    Attributes:
        sockets: RDU sockets.
        parallel: 'pipeline' (layers split, micro-batches) or 'tensor' (every matrix split).
        micro_batches: M for pipeline parallelism (default 4 x sockets).
        schedule: 'gpipe' or '1f1b'.
        orchestration: 'software' (host launches) or 'hardware' (AGCU-sequenced launches).
        kernel_looping: a looped kernel pays launch, fill and drain once (True) or every trip.
    """

    sockets: int = 1
    parallel: str = "pipeline"
    micro_batches: int | None = None
    schedule: str = "1f1b"
    orchestration: str = "software"
    kernel_looping: bool = True

    def __post_init__(self) -> None:
        if self.sockets < 1:
            raise ValueError(f"sockets must be >= 1, got {self.sockets}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel {self.parallel!r} unknown; allowed: {', '.join(PARALLEL)}")
        if self.orchestration not in ORCHESTRATION:
            raise ValueError(f"orchestration {self.orchestration!r} unknown; allowed: "
                             f"{', '.join(ORCHESTRATION)}")
        if self.schedule not in pl.SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} unknown; allowed: "
                             f"{', '.join(pl.SCHEDULES)}")


@dataclass
class KernelPerf:
    """Timing of one kernel; times are for ALL its calls (seconds), bytes likewise."""

    name: str
    phase: str
    calls: int
    trips: int
    flops: float
    bytes: dict[str, float]  # off-chip bytes per tier (plus 'sram' read by PMU stages)
    pipeline_s: float
    memory_s: dict[str, float]
    network_s: float
    launch_s: float
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

    @property
    def work_s(self) -> float:
        """Time without launches."""
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

    @property
    def flops(self) -> float:
        return sum(k.flops for k in self.kernels)

    @property
    def bound(self) -> str:
        """The bound of the kernels that take most of the time."""
        by = {}
        for k in self.kernels:
            by[k.bound] = by.get(k.bound, 0.0) + k.time_s
        return max(by, key=by.get) if by else "launch"


# ----------------------------------------------------------------------------- placement


def place_tensors(graph: Graph, chip) -> tuple[dict[int, str], list[int]]:
    """Tier of every graph tensor: HBM while the live tensors fit, then DDR, else 'overflow'.

    A tensor is live from its producing kernel to its last consumer (program outputs to the end);
    tensors are placed greedily in order of birth, freeing dead ones first.
    """
    capacity = {"hbm": chip.hbm_bytes, "ddr": getattr(chip, "ddr_bytes", 0.0)}
    left = {t: c for t, c in capacity.items() if c > 0}
    tiers = list(left)
    end = len(graph.kernels)
    outputs = {k for k in graph.outputs if isinstance(k, int)}
    order = sorted((t for t in graph.tensors.values() if not t.generated),
                   key=lambda t: (t.producer, t.key))
    live: list[tuple[int, int, str, float]] = []  # (death, key, tier, bytes)
    tier_of, overflow = {}, []
    for t in order:
        while live and live[0][0] < t.producer:
            _, _, tier, size = heapq.heappop(live)
            left[tier] += size
        death = end if t.key in outputs or not t.consumers else max(t.consumers)
        tier = next((x for x in tiers if t.nbytes <= left[x]), "overflow")
        tier_of[t.key] = tier
        if tier == "overflow":
            overflow.append(t.key)
            continue
        left[tier] -= t.nbytes
        heapq.heappush(live, (death, t.key, tier, t.nbytes))
    return tier_of, overflow


# ----------------------------------------------------------------------------- gathers


def _index_lists(info: GatherInfo, graph: Graph) -> tuple[np.ndarray, bool]:
    """(n_lists, indices) index lists for a gather: real ones if known, else a seeded draw."""
    arr = graph.concrete.get(info.origin) if info.origin is not None else None
    if arr is not None and arr.size % info.indices == 0:
        lists = np.clip(arr.reshape(-1, info.indices), 0, info.rows - 1)
        real = True
    else:
        rng = np.random.default_rng(EXPECTED_SEED)
        n = min(MAX_GATHER_LISTS, 16)
        if info.indices <= info.rows:
            lists = np.stack([np.sort(rng.choice(info.rows, info.indices, replace=False))
                              for _ in range(n)])
        else:
            lists = np.sort(rng.integers(0, info.rows, (n, info.indices)), axis=1)
        real = False
    if lists.shape[0] > MAX_GATHER_LISTS:
        lists = lists[np.linspace(0, lists.shape[0] - 1, MAX_GATHER_LISTS).astype(int)]
    return lists.astype(np.int64), real


def gather_cost(info: GatherInfo, graph: Graph, pmu: mem.PmuConfig,
                cache: dict | None = None) -> tuple[float, float, bool]:
    """(cycles, conflicts, from_real_indices) of ONE execution of a gather on one PMU."""
    key = (info, pmu)
    if cache is not None and key in cache:
        return cache[key]
    lists, real = _index_lists(info, graph)
    keep = max(1, min(info.indices, MAX_GATHER_FEATURES // max(info.run, 1)))
    scale = info.indices / keep
    cost = mem.block_gather_cost(lists[:, :keep], (info.run, 1), info.rows * info.run,
                                 info.tokens, pmu)
    out = (cost.cycles / lists.shape[0] * scale, cost.conflicts / lists.shape[0] * scale, real)
    if cache is not None:
        cache[key] = out
    return out


# ----------------------------------------------------------------------------- one kernel


def _stage_work(kernel: Kernel, chip: ChipSpec, graph: Graph, cache: dict):
    """Per trip: (names, cycles on one unit, is_pcu, sram bytes, gather cycles, conflicts)."""
    pmu = mem.PmuConfig.from_chip(chip)
    systolic = 2 * chip.macs_per_pcu_per_cycle
    simd = chip.simd_lanes_per_pcu * chip.stages_per_pcu
    pmu_bytes_per_cycle = chip.banks_per_pmu * chip.params.bank_word_bytes
    names, work, is_pcu, packed, chain = [], [], [], [], []
    sram = g_cycles = g_conf = 0.0
    for op in kernel.ops:
        if op.kind == "free":
            continue
        if op.kind == "matmul":
            w = op.total_flops / systolic
        elif op.kind in ("vector", "reduce"):
            w = op.total_flops / simd
        elif op.kind == "transcendental":
            w = op.total_flops / chip.simd_lanes_per_pcu
        elif op.kind == "gather":
            cyc, conf, _ = gather_cost(op.gather, graph, pmu, cache)
            w = cyc * op.count
            g_cycles += w
            g_conf += conf * op.count
            sram += op.total_bytes
        else:
            w = op.total_bytes / pmu_bytes_per_cycle
            sram += op.total_bytes
        if w <= 0:
            continue
        packable = op.kind in ("vector", "reduce", "transcendental")
        if packable and names and packed[-1] and chain[-1] < chip.stages_per_pcu:
            # Consecutive element-wise ops share one PCU: each takes one of its SIMD stages.
            work[-1] += w
            chain[-1] += 1
            names[-1] = f"{names[-1]}+{op.primitive}" if chain[-1] <= 3 else names[-1]
            continue
        names.append(op.primitive)
        work.append(w)
        is_pcu.append(op.kind in PCU_KINDS)
        packed.append(packable)
        chain.append(1)
    return names, np.asarray(work, np.float64), np.asarray(is_pcu, bool), sram, g_cycles, g_conf


def _merge(work: np.ndarray, limit: int) -> np.ndarray:
    """Merge consecutive stages into at most ``limit`` groups of about equal work."""
    if work.size <= limit:
        return work
    edges = np.searchsorted(np.cumsum(work), np.linspace(0, work.sum(), limit + 1)[1:-1])
    return np.asarray([c.sum() for c in np.split(work, edges)])


def _allocate(work: np.ndarray, is_pcu: np.ndarray, chip: ChipSpec):
    """Units per stage: PCU stages share the PCUs, PMU stages the PMUs."""
    alloc = np.zeros(work.size, np.int64)
    for mask, units in ((is_pcu, chip.pcus), (~is_pcu, chip.pmus)):
        if mask.any():
            alloc[mask] = pl.balance_stages(work[mask], units)
    return alloc


def kernel_perf(kernel: Kernel, graph: Graph, chip: ChipSpec, tier_of: dict[int, str],
                options: Options = Options(), cache: dict | None = None) -> KernelPerf:
    """Time all calls of one kernel on one socket (see the module docstring for the model)."""
    cache = {} if cache is None else cache
    names, work, is_pcu, sram, g_cycles, g_conf = _stage_work(kernel, chip, graph, cache)
    if work.size:
        pcu_w, pmu_w = _merge(work[is_pcu], chip.pcus), _merge(work[~is_pcu], chip.pmus)
        if pcu_w.size != is_pcu.sum() or pmu_w.size != (~is_pcu).sum():
            names = ["pcu group"] * pcu_w.size + ["pmu group"] * pmu_w.size
            work = np.concatenate([pcu_w, pmu_w])
            is_pcu = np.arange(work.size) < pcu_w.size
    tile_bytes = chip.sram_bytes_per_pmu / 2
    tiles = max(1, math.ceil(kernel.largest_bytes / tile_bytes))
    per_tile_sram = kernel.working_bytes / tiles
    spill = 2 * max(0.0, per_tile_sram - chip.sram_bytes) * tiles * kernel.trips
    looped = options.kernel_looping and kernel.trips > 1
    runs = 1 if looped else kernel.trips  # pipeline runs per call
    if work.size:
        alloc = _allocate(work, is_pcu, chip)
        timing = pl.fused_kernel_timing(work / tiles, chip.pcus + chip.pmus,
                                        tiles * (kernel.trips if looped else 1), alloc)
        cycles = timing.cycles * runs
        pcus, pmus = int(alloc[is_pcu].sum()), int(alloc[~is_pcu].sum())
        util = timing.utilisation
        mean_util = float((util * alloc).sum() / alloc.sum())
        bottleneck_pcu = bool(is_pcu[timing.bottleneck])
        share = [float(x) for x in util]
    else:
        cycles, pcus, pmus, mean_util, bottleneck_pcu, share = 0.0, 0, 0, 0.0, True, []
    pipeline_s = cycles / chip.clock_hz * kernel.calls

    nbytes: dict[str, float] = {}
    default = "hbm" if chip.hbm_bytes > 0 else "ddr"
    if kernel.local_bytes:  # unfused: every operand through off-chip memory
        tiers = {tier_of.get(k, default) for k in kernel.reads + kernel.writes}
        tier = "ddr" if "ddr" in tiers else default
        nbytes[tier] = kernel.local_bytes * kernel.calls
    for k in kernel.reads + kernel.writes:
        if kernel.local_bytes:
            break
        if graph.tensors[k].generated:
            continue
        tier = tier_of.get(k, default)
        tier = default if tier == "overflow" else tier
        nbytes[tier] = nbytes.get(tier, 0.0) + graph.tensors[k].nbytes * kernel.calls
    if spill:
        nbytes[default] = nbytes.get(default, 0.0) + spill * kernel.calls
    memory_s = {t: b / mem.tier_bytes_per_s(chip, t) for t, b in nbytes.items()}
    nbytes["sram"] = sram * kernel.trips * kernel.calls
    gap = (chip.launch_seconds_software if options.orchestration == "software"
           else chip.launch_seconds_hardware)
    launch_s = gap * runs * kernel.calls
    terms = {"compute" if bottleneck_pcu else "sram": pipeline_s, **memory_s}
    work_s = max(terms.values(), default=0.0)
    bound = max(terms, key=terms.get) if terms else "launch"
    if launch_s > work_s:
        bound = "launch"
    return KernelPerf(kernel.name, kernel.phase, kernel.calls, kernel.trips,
                      kernel.flops * kernel.calls, nbytes, pipeline_s, memory_s, 0.0, launch_s,
                      work_s + launch_s, bound, tiles, pcus, pmus, mean_util, per_tile_sram,
                      spill * kernel.calls, g_cycles * kernel.trips * kernel.calls,
                      g_conf * kernel.trips * kernel.calls, names, share)


# ----------------------------------------------------------------------------- program


def program_perf(graph: Graph, chip: ChipSpec, options: Options = Options()) -> ProgramPerf:
    """Time a lowered program on ``options.sockets`` sockets of ``chip``."""
    if not isinstance(chip, ChipSpec):
        raise ValueError(f"{chip.name} is not an RDU; use emulator.gpu for GPU baselines")
    tier_of, overflow = place_tensors(graph, chip)
    cache: dict = {}
    kernels = [kernel_perf(k, graph, chip, tier_of, options, cache) for k in graph.kernels]
    single = sum(k.time_s for k in kernels)
    notes = []
    if overflow:
        notes.append(f"{len(overflow)} tensors fit in no memory tier (overflow); charged at HBM")
    P = options.sockets
    schedule = None
    if P == 1:
        step = single
    elif options.parallel == "tensor":
        kernels = [_tensor_parallel(k, kg, chip, P, options) for k, kg in
                   zip(kernels, graph.kernels)]
        step = sum(k.time_s for k in kernels)
        notes.append(f"tensor parallel over {P} sockets: work / {P}, two ring all-reduces of the "
                     "layer activation per layer per pass on the inter-socket links (overlapped)")
    else:
        step, schedule, note = _pipeline_parallel(graph, kernels, chip, options)
        notes.append(note)
    return ProgramPerf(chip, options, kernels, single, step, schedule, tier_of, overflow, notes)


def _tensor_parallel(kp: KernelPerf, kernel: Kernel, chip: ChipSpec, P: int,
                     options: Options) -> KernelPerf:
    ring = 2 * (P - 1) / P * kernel.carry_bytes / chip.inter_socket_bytes_per_s
    network_s = 2 * ring * kernel.trips * kernel.calls if kernel.trips > 1 else 0.0
    work = kp.work_s / P
    time_s = max(work, network_s) + kp.launch_s
    bound = "network" if network_s > work and network_s > kp.launch_s else kp.bound
    out = KernelPerf(**{**kp.__dict__})
    out.pipeline_s, out.network_s, out.time_s, out.bound = kp.pipeline_s / P, network_s, time_s, bound
    out.memory_s = {t: s / P for t, s in kp.memory_s.items()}
    out.flops = kp.flops / P
    out.bytes = {t: b / P for t, b in kp.bytes.items()}
    return out


def _pipeline_parallel(graph: Graph, kernels: list[KernelPerf], chip: ChipSpec,
                       options: Options):
    """Layers split over sockets, micro-batches scheduled; returns (step_s, schedule, note)."""
    P = options.sockets
    M = options.micro_batches or 4 * P
    loops = [i for i, k in enumerate(graph.kernels) if k.trips > 1]
    if not loops:
        step = sum(k.work_s / P + k.launch_s for k in kernels)
        return step, None, (f"no layer loop to split: batch split over {P} sockets "
                            "(data parallel, gradient exchange not modelled)")
    f, b = np.zeros(P), np.zeros(P)
    has_backward = any(graph.kernels[i].phase == "backward" for i in loops)
    fwd_loop = next((i for i in loops if graph.kernels[i].phase == "forward"), loops[0])
    bwd_loop = next((i for i in loops if graph.kernels[i].phase == "backward"), None)
    update = 0.0
    carry = graph.kernels[fwd_loop].carry_bytes
    gap = (chip.launch_seconds_software if options.orchestration == "software"
           else chip.launch_seconds_hardware)
    for i, (k, kp) in enumerate(zip(graph.kernels, kernels)):
        if k.phase == "update":  # each socket updates the parameters of its own layers
            update += kp.work_s / P + kp.launch_s
        elif i in loops:  # each socket runs trips / P layers per micro-batch
            launches = 1 if options.kernel_looping else k.trips / P
            (b if k.phase == "backward" else f)[:] += kp.work_s / M / P + gap * launches * k.calls
        elif k.phase == "forward":  # embedding before the layers, head after them
            f[0 if i < fwd_loop else P - 1] += kp.work_s / M + kp.launch_s
        else:  # head backward before the layers' backward, embedding backward after
            b[P - 1 if bwd_loop is None or i < bwd_loop else 0] += kp.work_s / M + kp.launch_s
    transfer = carry / M / chip.inter_socket_bytes_per_s
    sched = pl.pipeline_schedule(f, M, b if has_backward else None, transfer, options.schedule)
    note = (f"pipeline parallel over {P} sockets: {M} micro-batches, {options.schedule}, "
            f"bubble {100 * sched.bubble_fraction:.1f}%, activation transfer "
            f"{transfer * 1e3:.3g} ms per micro-batch per boundary")
    return sched.total + update, sched, note


def assumptions(chip: ChipSpec, options: Options = Options()) -> list[str]:
    """The mapping assumptions of this model, beyond ``hardware.assumptions(chip)``."""
    return [
        f"mapping: matmul at 2 x lanes x stages = {2 * chip.macs_per_pcu_per_cycle} FLOP per PCU "
        "cycle (systolic); vector/reduce at lanes x stages; transcendental at lanes (tail stage)",
        f"mapping: memory stages move banks x word = "
        f"{chip.banks_per_pmu * chip.params.bank_word_bytes} B per PMU cycle; gathers priced by "
        "PMU bank conflicts (real row_indices when concrete, else a seeded random draw)",
        f"mapping: tile = half a PMU ({chip.sram_bytes_per_pmu / 2 / 2**10:.0f} KiB, double "
        "buffered); intermediates stay in SRAM while the working set per tile fits",
        "mapping: kernel-boundary tensors in HBM while the live set fits, else DDR; tensors "
        "broadcast from small inputs (masks, zero fills) are generated on chip, not stored",
        f"mapping: up to {chip.stages_per_pcu} consecutive element-wise ops share one PCU "
        "(one SIMD stage each)",
        f"mapping: {options.orchestration}-orchestrated launches, kernel looping "
        f"{'on' if options.kernel_looping else 'off'}",
        f"mapping: {options.sockets} socket(s), {options.parallel} parallel"
        + (f", {options.micro_batches or 4 * options.sockets} micro-batches, {options.schedule}"
           if options.sockets > 1 and options.parallel == "pipeline" else ""),
    ]
