"""GPU kernel costs: GEMMs by shape, element-wise passes, fused attention, collectives.

The pieces both GPU estimates are made of (``gpu.gpu_perf`` on a lowered graph, and
``gpu_training`` on a transformer's layer decomposition), so the two are one model.

- GEMM (m x k) @ (k x n), ``batch`` times: the library picks, among the CUTLASS/cuBLAS
  threadblock tiles ``TILES``, the one that finishes first. With a tile of Mt x Nt, the output
  has ``tiles = batch x ceil(m / Mt) x ceil(n / Nt)`` tiles (tile quantisation), run in
  ``waves = ceil(tiles / SMs)`` waves (wave quantisation). One tile takes
  ``(ceil(K / Kt) + overhead) x step``, a step being the slower of its math
  (2 Mt Nt Kt / (SM peak x achievable fraction)) and its operand traffic from L2
  ((Mt + Nt) Kt x 2 bytes / (L2 bandwidth / SMs)): small tiles reuse less and are L2-bound.
  The whole GEMM is also bounded by its HBM traffic (operands and result once). Efficiency
  (useful FLOPs / (time x peak)) thus rises with size towards, and never above, the achievable
  fraction ``GpuParameters.achievable_compute_fraction`` [CUBLAS].
- element-wise / reduction kernels: bytes / (HBM peak x achievable fraction), or their FLOPs at
  the FP32 rate if that is slower.
- fused attention (FlashAttention-2 style): its FLOPs at ``flash_attention_fraction`` x peak;
  only Q, K, V, O (and their gradients) touch HBM.
- all-reduce over ``n`` GPUs, ``g`` per node: inside a node a ring over NVLink moves
  2 (n - 1) / n x bytes per GPU; across ``k`` nodes it is hierarchical (reduce-scatter in the
  node, all-reduce of 1 / g of the bytes across nodes over each GPU's NIC, all-gather in the
  node), plus one launch. Point-to-point: bytes over the NIC (across nodes) or NVLink.

Units: seconds, bytes, FLOPs, FLOP/s.
"""

from __future__ import annotations

import math

from rdu_xla_backend.hardware import GpuSpec

# Threadblock tiles (Mt, Nt, Kt) the library chooses among (CUTLASS's default BF16 tensor-core
# configurations for sm80: 256x128, 128x256, 128x128, 128x64, 64x128, 64x64, K-step 32-64).
TILES = ((256, 128, 32), (128, 256, 32), (128, 128, 32), (128, 64, 32), (64, 128, 32),
         (64, 64, 32))
ITEMSIZE = 2  # bytes of a BF16/FP16 operand


def _tile_seconds(gpu: GpuSpec, mt: int, nt: int, kt: int, k: int) -> float:
    """Seconds one SM spends on one Mt x Nt output tile over a K of ``k``."""
    sm_flops = gpu.achievable_flops / gpu.sms
    sm_l2 = gpu.l2_bytes_per_s / gpu.sms
    step = max(2.0 * mt * nt * kt / sm_flops, (mt + nt) * kt * ITEMSIZE / sm_l2)
    return (math.ceil(k / kt) + gpu.params.gemm_tile_overhead_steps) * step


def gemm_seconds(m: int, n: int, k: int, gpu: GpuSpec, batch: int = 1) -> float:
    """Time of ``batch`` GEMMs (m x k) @ (k x n) in one launch (no launch cost included).

    The fastest of ``TILES`` (tile and wave quantisation on the SM count), and never faster
    than its HBM traffic (each operand and the result once, BF16).
    """
    m, n, k, batch = max(int(m), 1), max(int(n), 1), max(int(k), 1), max(int(batch), 1)
    best = math.inf
    for mt, nt, kt in TILES:
        tiles = batch * math.ceil(m / mt) * math.ceil(n / nt)
        waves = math.ceil(tiles / gpu.sms)
        best = min(best, waves * _tile_seconds(gpu, mt, nt, kt, k))
    hbm = batch * (m * k + k * n + m * n) * ITEMSIZE / gpu.achievable_hbm_bytes_per_s
    return max(best, hbm)


def gemm_efficiency(m: int, n: int, k: int, gpu: GpuSpec, batch: int = 1) -> float:
    """Useful FLOPs / (time x tensor peak) of a GEMM: in (0, achievable fraction]."""
    return 2.0 * batch * m * n * k / (gemm_seconds(m, n, k, gpu, batch) * gpu.peak_bf16_flops)


def elementwise_seconds(nbytes: float, gpu: GpuSpec, flops: float = 0.0) -> float:
    """A memory-bound kernel: its HBM bytes at the achievable bandwidth, or its FLOPs at the
    FP32 rate if slower."""
    return max(nbytes / gpu.achievable_hbm_bytes_per_s, flops / gpu.achievable_vector_flops)


def flash_attention_seconds(flops: float, nbytes: float, gpu: GpuSpec) -> float:
    """A fused attention kernel (FlashAttention-2 style): FLOPs at the fused-attention fraction
    of peak, or its HBM bytes (Q, K, V, O and gradients only) if slower."""
    return max(flops / (gpu.peak_bf16_flops * gpu.params.flash_attention_fraction),
               nbytes / gpu.achievable_hbm_bytes_per_s)


def all_reduce_seconds(nbytes: float, gpus: int, gpu: GpuSpec, per_node: int | None = None
                       ) -> float:
    """One all-reduce of ``nbytes`` (per GPU) over a group of ``gpus`` GPUs, ``per_node`` of
    them in each node (default: as many as a node holds); 0 for one GPU. A ring inside a node
    (NVLink); across nodes hierarchical, 1 / per_node of the bytes over each GPU's NIC."""
    if gpus <= 1:
        return 0.0
    g = max(1, min(gpus, per_node or gpu.gpus_per_node, gpu.gpus_per_node))
    nodes = math.ceil(gpus / g)
    inside = 2 * (g - 1) / g * nbytes / gpu.nvlink_collective_bytes_per_s if g > 1 else 0.0
    across = (2 * (nodes - 1) / nodes * nbytes / g / gpu.nic_collective_bytes_per_s
              if nodes > 1 else 0.0)
    return gpu.launch_sync_seconds + inside + across


def p2p_seconds(nbytes: float, gpu: GpuSpec, across_nodes: bool) -> float:
    """One point-to-point transfer of ``nbytes`` from one GPU to another (no launch)."""
    bw = gpu.nic_collective_bytes_per_s if across_nodes else gpu.nvlink_collective_bytes_per_s
    return nbytes / bw
