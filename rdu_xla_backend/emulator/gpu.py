"""GPU baseline: the same program run kernel by kernel on an A100/H100.

Every operator that does work is one kernel launch (wiring such as reshape launches nothing);
it reads its inputs from HBM and writes its outputs to HBM, and takes

    max(FLOPs / achievable FLOP/s, bytes / achievable HBM bandwidth) + launch and sync

with tensor-core FLOP/s for matmuls and FP32 FLOP/s for element-wise work (``GpuSpec``). A
gather pays the 32-byte sectors its addresses touch (``memory.sector_bytes_moved``): whole
64-wide block rows waste nothing, scattered elements waste most of each sector. No operator
fusion and no FlashAttention-style kernels: this is the per-op baseline the issue asks for, and
it is stated with every estimate. ``gpus`` > 1 divides the work ideally (no communication), which
favours the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rdu_xla_backend.emulator import memory as mem
from rdu_xla_backend.graph import GatherInfo, Graph
from rdu_xla_backend.hardware import GpuSpec


@dataclass
class GpuOpGroup:
    """All executions of one primitive kind on the GPU (seconds, FLOPs, bytes, launches)."""

    primitive: str
    launches: float
    flops: float
    bytes: float
    compute_s: float
    memory_s: float
    launch_s: float
    time_s: float


@dataclass
class GpuPerf:
    gpu: GpuSpec
    gpus: int
    groups: list[GpuOpGroup]
    step_s: float
    flops: float
    bytes: float
    launches: float

    @property
    def bound(self) -> str:
        c = sum(g.compute_s for g in self.groups)
        m = sum(g.memory_s for g in self.groups)
        lau = sum(g.launch_s for g in self.groups)
        return max((("compute", c), ("hbm", m), ("launch", lau)), key=lambda x: x[1])[0]


def _sector_bytes(info: GatherInfo, graph: Graph, sector: int, cache: dict) -> float:
    """HBM bytes of ONE execution of a gather, by sectors touched."""
    from rdu_xla_backend.perf import MAX_GATHER_FEATURES, _index_lists

    if info in cache:
        return cache[info]
    lists, _ = _index_lists(info, graph)
    keep = max(1, min(info.indices, MAX_GATHER_FEATURES // max(info.run, 1)))
    features = mem.block_feature_lists(lists[:, :keep], info.run, info.rows * info.run)
    moved = sum(mem.sector_bytes_moved(f[None], info.rows * info.run, info.tokens, info.itemsize,
                                       sector) for f in features)
    cache[info] = moved / lists.shape[0] * info.indices / keep
    return cache[info]


def gpu_perf(graph: Graph, gpu: GpuSpec, gpus: int = 1) -> GpuPerf:
    """Kernel-by-kernel time of ``graph`` (either lowering mode) on ``gpus`` GPUs."""
    if not isinstance(gpu, GpuSpec):
        raise ValueError(f"{gpu.name} is not a GPU baseline; use perf.program_perf for RDUs")
    groups: dict[str, GpuOpGroup] = {}
    cache: dict = {}
    for kernel in graph.kernels:
        runs = kernel.calls * kernel.trips
        for op in kernel.ops:
            if op.kind == "free":
                continue
            n = op.count * runs
            nbytes = op.bytes_in + op.bytes_out
            if op.gather is not None:
                nbytes = op.bytes_out + _sector_bytes(op.gather, graph, gpu.sector_bytes, cache)
            rate = gpu.achievable_flops if op.kind == "matmul" else gpu.achievable_vector_flops
            c, m = op.flops / rate, nbytes / gpu.achievable_hbm_bytes_per_s
            g = groups.setdefault(op.primitive, GpuOpGroup(op.primitive, 0, 0, 0, 0, 0, 0, 0))
            g.launches += n
            g.flops += op.flops * n
            g.bytes += nbytes * n
            g.compute_s += c * n / gpus
            g.memory_s += m * n / gpus
            g.launch_s += gpu.launch_sync_seconds * n
            g.time_s += (max(c, m) / gpus + gpu.launch_sync_seconds) * n
    ordered = sorted(groups.values(), key=lambda g: -g.time_s)
    return GpuPerf(gpu, gpus, ordered, float(sum(g.time_s for g in ordered)),
                   float(sum(g.flops for g in ordered)), float(sum(g.bytes for g in ordered)),
                   float(sum(g.launches for g in ordered)))


def assumptions(gpu: GpuSpec, gpus: int = 1) -> list[str]:
    return [
        f"{gpu.name} baseline: one kernel per operator (no fusion, no FlashAttention), "
        f"intermediates through HBM, {gpu.launch_sync_seconds * 1e6:.3g} us launch+sync each",
        f"{gpu.name} baseline: matmul at {gpu.achievable_flops / 1e12:.4g} TFLOP/s, element-wise "
        f"at {gpu.achievable_vector_flops / 1e12:.4g} TFLOP/s, HBM at "
        f"{gpu.achievable_hbm_bytes_per_s / 1e12:.4g} TB/s (achievable fractions assumed)",
        f"{gpu.name} baseline: gathers pay {gpu.sector_bytes}-byte sectors",
    ] + ([f"{gpu.name} baseline: {gpus} GPUs split the work ideally (no communication)"]
         if gpus > 1 else [])
