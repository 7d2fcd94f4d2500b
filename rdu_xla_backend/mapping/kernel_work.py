"""What one call of a kernel does on one socket: stages, units, tiles, bytes per tier.

``kernel_work`` maps a kernel onto a chip's structure (PCUs, PMUs, lanes, stages, banks, SRAM,
capacities): it balances the pipeline stages and counts bytes, and depends on nothing that a
calibration fits (launch gaps, efficiencies, latencies). ``perf.kernel_time`` turns it into
seconds. The model of each quantity is described in ``perf``'s docstring.

Units: cycles per tile, bytes per call on one socket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rdu_xla_backend.mapping import banks as mem
from rdu_xla_backend.mapping import block_sparse
from rdu_xla_backend.mapping import pipeline as pl
from rdu_xla_backend.mapping.gathers import gather_cost
from rdu_xla_backend.workload.graph import PCU_KINDS, Graph, Kernel
from rdu_xla_backend.hardware import ChipSpec

COARSE_KINDS = ("matmul", "reduce", "gather")  # stages that need a whole tile before passing it


def _stage_work(kernel: Kernel, chip: ChipSpec, graph: Graph, cache: dict, shards: int):
    """Per trip and socket: (names, cycles on one unit, is_pcu, sram bytes, gather cycles,
    conflicts)."""
    pmu = mem.PmuConfig.from_chip(chip)
    systolic = 2 * chip.macs_per_pcu_per_cycle
    simd = chip.simd_lanes_per_pcu * chip.stages_per_pcu
    pmu_bytes_per_cycle = chip.banks_per_pmu * chip.params.bank_word_bytes
    names, work, is_pcu, packed, chain, coarse = [], [], [], [], [], []
    sram = g_cycles = g_conf = 0.0
    for op in kernel.ops:
        if op.kind == "free":
            continue
        if op.sparse is not None:  # a block-sparse matmul call: its mechanisms, real indices
            sc = block_sparse.sparse_cycles(op.sparse, graph, chip, cache)
            if op.kind == "matmul":
                w = sc.pcu * op.count
            else:
                w = sc.pmu * op.count
                g_cycles += w / shards
                g_conf += sc.conflicts * op.count / shards
                sram += op.total_bytes
        elif op.kind == "matmul":
            w = op.total_flops / systolic
        elif op.kind in ("vector", "reduce"):
            w = op.total_flops / simd
        elif op.kind == "transcendental":
            w = op.total_flops / chip.simd_lanes_per_pcu
        elif op.kind == "gather":
            cyc, conf, _ = gather_cost(op.gather, graph, pmu, cache)
            w = cyc * op.count
            g_cycles += w / shards
            g_conf += conf * op.count / shards
            sram += op.total_bytes
        else:
            w = op.total_bytes / pmu_bytes_per_cycle
            sram += op.total_bytes
        w /= shards
        if w <= 0:
            continue
        packable = op.kind in ("vector", "reduce", "transcendental")
        if packable and names and packed[-1] and chain[-1] < chip.stages_per_pcu:
            # Consecutive element-wise ops share one PCU: each takes one of its SIMD stages.
            work[-1] += w
            chain[-1] += 1
            coarse[-1] = coarse[-1] or op.kind in COARSE_KINDS
            names[-1] = f"{names[-1]}+{op.primitive}" if chain[-1] <= 3 else names[-1]
            continue
        names.append(op.primitive)
        work.append(w)
        is_pcu.append(op.kind in PCU_KINDS)
        packed.append(packable)
        chain.append(1)
        coarse.append(op.kind in COARSE_KINDS)
    return (names, np.asarray(work, np.float64), np.asarray(is_pcu, bool), sram / shards,
            g_cycles, g_conf, np.asarray(coarse, bool))


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


@dataclass(frozen=True)
class KernelWork:
    """What one call of a kernel does on one socket, independent of the fitted parameters.

    Cycles are per tile (``interval``, ``fill`` and ``drain`` include the stage latencies);
    bytes are per call on one socket, off-chip by tier (spill and, for a looped kernel run
    trip by trip, nothing of the carry: ``kernel_time`` adds it).
    """

    kernel: Kernel
    shards: int
    interval: float
    fill: float
    drain: float
    tiles: int
    pcus: int
    pmus: int
    utilisation: float
    bottleneck_pcu: bool
    stage_names: list[str]
    stage_share: list[float]
    bytes: dict[str, float]
    sram_bytes: float
    sram_per_tile: float
    spill_bytes: float
    gather_cycles: float
    gather_conflicts: float


def kernel_work(kernel: Kernel, graph: Graph, chip: ChipSpec, tier_of: dict[int, str],
                shards: int = 1, cache: dict | None = None) -> KernelWork:
    """Stages, units, tiles and bytes of one call of ``kernel`` on one of ``shards`` sockets."""
    cache = {} if cache is None else cache
    names, work, is_pcu, sram, g_cycles, g_conf, coarse = _stage_work(kernel, chip, graph,
                                                                      cache, shards)
    if work.size:
        pcu_w, pmu_w = _merge(work[is_pcu], chip.pcus), _merge(work[~is_pcu], chip.pmus)
        if pcu_w.size != is_pcu.sum() or pmu_w.size != (~is_pcu).sum():
            names = ["pcu group"] * pcu_w.size + ["pmu group"] * pmu_w.size
            work = np.concatenate([pcu_w, pmu_w])
            is_pcu = np.arange(work.size) < pcu_w.size
            coarse = np.ones(work.size, bool)
    tile_bytes = chip.sram_bytes_per_pmu / 2
    tiles = max(1, math.ceil(kernel.largest_bytes / shards / tile_bytes))
    per_tile_sram = kernel.working_bytes / shards / tiles
    spill = 2 * max(0.0, per_tile_sram - chip.sram_bytes) * tiles * kernel.trips
    lat = chip.params.stage_latency_cycles
    if work.size:
        alloc = _allocate(work, is_pcu, chip)
        t = pl.fused_kernel_timing(work / tiles, chip.pcus + chip.pmus, tiles, alloc)
        b = t.bottleneck
        # A stage that reduces over its tile (matmul, reduction, gather) hands it on when done;
        # an element-wise stage streams vectors on after its pipeline latency.
        first = np.where(coarse, t.stage_cycles, 0.0) + lat
        fill = float(first[:b].sum() + t.stage_cycles[b] + lat)
        drain = float(first[b + 1:].sum())
        interval, util = t.interval, t.utilisation
        pcus, pmus = int(alloc[is_pcu].sum()), int(alloc[~is_pcu].sum())
        mean_util = float((util * alloc).sum() / alloc.sum())
        bottleneck_pcu, share = bool(is_pcu[b]), [float(x) for x in util]
    else:
        interval = fill = drain = 0.0
        pcus, pmus, mean_util, bottleneck_pcu, share = 0, 0, 0.0, True, []
    default = "hbm" if chip.hbm_bytes > 0 else "ddr"
    nbytes: dict[str, float] = {}
    if kernel.local_bytes:  # unfused: every operand through off-chip memory
        tiers = {tier_of.get(k, default) for k in kernel.reads + kernel.writes}
        tier = "ddr" if "ddr" in tiers else default
        nbytes[tier] = kernel.local_bytes / shards
    else:
        for k in kernel.reads + kernel.writes:
            t = graph.tensors[k]
            if t.generated:
                continue
            tier = tier_of.get(k, default)
            tier = "host" if tier == "overflow" else tier  # fits no tier: streamed from the host
            size = (kernel.read_charge(k, t.nbytes) if k in kernel.reads
                    else kernel.write_charge(k, t.nbytes))
            nbytes[tier] = nbytes.get(tier, 0.0) + size / shards
    if spill:
        nbytes[default] = nbytes.get(default, 0.0) + spill
    return KernelWork(kernel, shards, float(interval), float(fill), float(drain), tiles, pcus,
                      pmus, mean_util, bottleneck_pcu, names, share, nbytes,
                      sram * kernel.trips, per_tile_sram, spill, g_cycles * kernel.trips,
                      g_conf * kernel.trips)
