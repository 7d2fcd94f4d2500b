"""GPU baseline, per operator: the same lowered program run kernel by kernel on an A100/H100.

One kernel launch per *operator* (``operators.operator_groups``): every matmul, gather and cache
update, and each run of element-wise ops and reductions between them (a softmax, a norm, an
activation: what a framework's element-wise fusion makes one kernel). Wiring and views launch
nothing. A kernel reads its inputs from HBM and writes its outputs to HBM, and takes

    max(compute, bytes / achievable HBM bandwidth) + launch and sync

where compute is, for a matmul, its GEMM shape's time (``gpu_kernels.gemm_seconds``: tile and
wave quantisation; a block-sparse matmul is one GEMM per column block) and, for element-wise
work, its FLOPs at the FP32 rate. A gather pays the 32-byte sectors its addresses touch
(``banks.sector_bytes_moved``): whole 64-wide block rows waste nothing, scattered elements
waste most of each sector. No FlashAttention-style kernels and no CUDA graphs: this prices any
program as written; a GPT training step planned over many GPUs (Megatron-style, fused
attention, memory checked) is ``gpu_training``. ``gpus`` > 1 splits every kernel's work
ideally (tensor parallel) and adds the layer all-reduces (``gpu_kernels.all_reduce_seconds``),
each a kernel of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdu_xla_backend.cost import gpu_kernels as gk
from rdu_xla_backend.mapping import banks as mem
from rdu_xla_backend.workload.graph import GatherInfo, Graph
from rdu_xla_backend.hardware import GpuSpec
from rdu_xla_backend.mapping.gathers import MAX_GATHER_FEATURES
from rdu_xla_backend.mapping.gathers import index_fingerprint
from rdu_xla_backend.mapping.gathers import index_lists as _index_lists
from rdu_xla_backend.workload.operators import operator_groups


@dataclass
class GpuOpGroup:
    """All executions of one kind of operator kernel on the GPU (seconds, FLOPs, bytes,
    launches); ``primitive`` names it by its main op (e.g. "dot_general", "exp+4")."""

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
    key = (info, index_fingerprint(info, graph))  # the values too: prune/regrow changes them
    if key in cache:
        return cache[key]
    lists, _ = _index_lists(info, graph)
    keep = max(1, min(info.indices, MAX_GATHER_FEATURES // max(info.run, 1)))
    features = mem.block_feature_lists(lists[:, :keep], info.run, info.rows * info.run)
    moved = sum(mem.sector_bytes_moved(f[None], info.rows * info.run, info.tokens, info.itemsize,
                                       sector) for f in features)
    cache[key] = moved / lists.shape[0] * info.indices / keep
    return cache[key]


def _matmul_seconds(op, gpu: GpuSpec) -> float:
    """One execution of a matmul op: by its GEMM shape (``gpu_kernels.gemm_seconds``), or at
    the achievable large-GEMM rate when the shape is unknown."""
    if op.gemm:
        batch, m, n, k = op.gemm
        return gk.gemm_seconds(m, n, k, gpu, batch)
    return op.flops / gpu.achievable_flops


def _groups(graph: Graph) -> list[list]:
    """Operator groups of every kernel (cached on the graph: they depend on nothing else)."""
    cache = graph.__dict__.setdefault("_operator_groups", {})
    if "groups" not in cache:
        cache["groups"] = [operator_groups(k.ops) for k in graph.kernels]
    return cache["groups"]


def gpu_perf(graph: Graph, gpu: GpuSpec, gpus: int = 1) -> GpuPerf:
    """Kernel-by-kernel time of ``graph`` (either lowering mode) on ``gpus`` GPUs."""
    if not isinstance(gpu, GpuSpec):
        raise ValueError(f"{gpu.name} is not a GPU baseline; use cost.rdu.program_perf for RDUs")
    groups: dict[str, GpuOpGroup] = {}
    cache = graph.__dict__.setdefault("_sector_cache", {})
    for kernel, kgroups in zip(graph.kernels, _groups(graph)):
        runs = kernel.calls * kernel.trips
        for grp in kgroups:
            n = grp.count * runs
            nbytes = grp.in_bytes + grp.out_bytes
            gathers = [op for op in grp.ops if op.gather is not None]
            if gathers:
                nbytes = grp.out_bytes + sum(op.bytes_out + _sector_bytes(
                    op.gather, graph, gpu.sector_bytes, cache) for op in gathers)
            mm = sum(op.flops for op in grp.ops if op.kind == "matmul")
            c = sum(_matmul_seconds(op, gpu) for op in grp.ops if op.kind == "matmul") + \
                (grp.flops - mm) / gpu.achievable_vector_flops
            m = nbytes / gpu.achievable_hbm_bytes_per_s
            _add(groups, grp.name, n, grp.flops, nbytes, c / gpus, m / gpus,
                 gpu.launch_sync_seconds)
        if gpus > 1 and kernel.collectives:
            n = kernel.collectives * runs
            each = gk.all_reduce_seconds(kernel.carry_bytes, gpus, gpu)
            _add(groups, "all_reduce", n, 0.0, 0.0, 0.0, 0.0, each)
    ordered = sorted(groups.values(), key=lambda g: -g.time_s)
    return GpuPerf(gpu, gpus, ordered, float(sum(g.time_s for g in ordered)),
                   float(sum(g.flops for g in ordered)), float(sum(g.bytes for g in ordered)),
                   float(sum(g.launches for g in ordered)))


def _add(groups: dict, name: str, n: float, flops: float, nbytes: float, compute_s: float,
         memory_s: float, launch_s: float) -> None:
    """Add ``n`` executions of one kernel (per-execution values) to its group."""
    g = groups.setdefault(name, GpuOpGroup(name, 0, 0, 0, 0, 0, 0, 0))
    g.launches += n
    g.flops += flops * n
    g.bytes += nbytes * n
    g.compute_s += compute_s * n
    g.memory_s += memory_s * n
    g.launch_s += launch_s * n
    g.time_s += (max(compute_s, memory_s) + launch_s) * n


def assumptions(gpu: GpuSpec, gpus: int = 1) -> list[str]:
    return [
        f"{gpu.name} baseline: one kernel per operator (matmul, gather, or a run of element-wise "
        f"ops; no FlashAttention, no CUDA graphs), intermediates through HBM, "
        f"{gpu.launch_sync_seconds * 1e6:.3g} us launch+sync each",
        f"{gpu.name} baseline: matmul at {gpu.achievable_flops / 1e12:.4g} TFLOP/s, element-wise "
        f"at {gpu.achievable_vector_flops / 1e12:.4g} TFLOP/s, HBM at "
        f"{gpu.achievable_hbm_bytes_per_s / 1e12:.4g} TB/s (achievable fractions assumed)",
        f"{gpu.name} baseline: gathers pay {gpu.sector_bytes}-byte sectors",
    ] + ([f"{gpu.name} baseline: {gpus} GPUs split every kernel's work (tensor parallel), "
          "plus the layer all-reduces over NVLink (a launch each)"]
         if gpus > 1 else [])
