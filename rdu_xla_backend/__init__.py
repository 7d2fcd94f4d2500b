"""rdu_xla_backend: a JAX-implemented emulator and performance model of a reconfigurable dataflow
unit (SambaNova SN10/SN30/SN40L), with A100/H100 kernel-by-kernel baselines.

Usable without ``sparsetrain``; it must never import it.

- ``hardware``: chips as data (public numbers with sources; assumed values named).
- ``emulator.memory``: PMU banked SRAM (bank conflicts of real gathers), tiers, transfers.
- ``emulator.pipeline``: stage balancing in a fused kernel; micro-batch schedules across sockets.
- ``lowering.lower(fn, *args)``: jaxpr -> ``graph.Graph`` of fused kernels, loops and tensors
  (``rules``: per-primitive cost; ``collect``: ops of a body; ``operators``: unfused kernels;
  ``looping``: repeated kernel calls -> one looped kernel).
- ``perf.program_perf(graph, chip, Options(...))``: time, bytes per tier, bound, per kernel
  (``kernel_work``: stages and bytes; ``placement``: three-tier memory; ``parallel``: sockets).
- ``coe``: Composition of Experts on an RDU node vs a DGX; ``fit``: calibration machinery.
- ``emulator.execute.execute(graph, *args)``: real outputs, counters per kernel.
- ``emulator.gpu.gpu_perf(graph, gpu)``: the kernel-by-kernel GPU baseline.
- ``report``: markdown table, JSON, timeline and roofline PNGs.
"""

from rdu_xla_backend.hardware import (
    CHIPS,
    ChipSpec,
    GpuParameters,
    GpuSpec,
    ModelParameters,
    assumptions,
    get_chip,
)
from rdu_xla_backend.lowering import UnsupportedPrimitiveError, lower
from rdu_xla_backend.perf import Options, program_perf

__all__ = ["CHIPS", "ChipSpec", "GpuParameters", "GpuSpec", "ModelParameters", "Options",
           "UnsupportedPrimitiveError", "assumptions", "get_chip", "lower", "program_perf"]
