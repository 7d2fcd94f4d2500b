"""Across sockets: tensor-parallel collectives and the pipeline-parallel micro-batch schedule.

- Tensor parallel over P sockets: every kernel's work and bytes are split P ways; a layer
  (a trip of a looped kernel) all-reduces its activation twice per pass (Megatron style: after
  the attention output and the MLP down projection). One all-reduce of n bytes takes
  ``collective_parts``: ceil(log2 P) hops of ``inter_socket_latency_seconds`` (recursive
  doubling) and 2 (P - 1) / P x n bytes over the inter-socket link; the RDU streams the bytes
  tile by tile inside the kernel ([SN40L]: fused, pipelined collectives), the latency stays on
  each layer's dependency chain (``perf``).
- Pipeline parallel: layers split into P stages fed by M micro-batches (``pipeline.
  pipeline_schedule``, bubbles counted); embedding and head on the first and last sockets.
"""

from __future__ import annotations

import math

import numpy as np

from rdu_xla_backend.mapping import pipeline as pl

ALL_REDUCES_PER_LAYER = 2  # Megatron: attention output and MLP output, per pass


def collective_parts(nbytes: float, sockets: int, chip) -> tuple[float, float]:
    """(latency, bandwidth) seconds of one all-reduce of ``nbytes`` over ``sockets`` RDU
    sockets: ceil(log2 P) hops, and 2 (P - 1) / P x n bytes over the link; (0, 0) for one."""
    if sockets <= 1:
        return 0.0, 0.0
    hops = math.ceil(math.log2(sockets))
    return (hops * chip.params.inter_socket_latency_seconds,
            2 * (sockets - 1) / sockets * nbytes / chip.inter_socket_bytes_per_s)


def collective_seconds(nbytes: float, sockets: int, chip) -> float:
    """One all-reduce of ``nbytes`` over ``sockets`` RDU sockets, not overlapped (0 for one)."""
    return sum(collective_parts(nbytes, sockets, chip))


def gpu_collective_seconds(nbytes: float, gpus: int, gpu) -> float:
    """One all-reduce on ``gpus`` GPUs over NVLink: a kernel launch plus the ring's bytes."""
    if gpus <= 1:
        return 0.0
    return gpu.launch_sync_seconds + 2 * (gpus - 1) / gpus * nbytes / gpu.nvlink_bytes_per_s


def pipeline_parallel(graph, kernels, chip, options) -> tuple[float, object, str]:
    """Layers split over sockets, micro-batches scheduled; returns (step_s, schedule, note).

    Args:
        graph: the lowered program.
        kernels: its ``KernelPerf``s on one socket (same order).
        chip: the RDU.
        options: ``perf.Options`` (sockets, micro_batches, schedule, orchestration, looping).
    """
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
            launches = 1 if options.kernel_looping else k.trips * k.calls_per_trip / P
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
