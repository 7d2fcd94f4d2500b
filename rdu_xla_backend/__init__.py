"""rdu_xla_backend: a JAX-implemented emulator and performance model of a reconfigurable dataflow
unit (SambaNova SN10/SN30/SN40L), with A100/H100 baselines.

Usable without ``sparsetrain``; it must never import it. Laid out as Timeloop separates a model:

- ``hardware``: the architecture, chips as data (public numbers with sources; the rest named,
  with plausible ranges).
- ``workload``: ``lowering.lower(fn, *args)``: jaxpr -> ``graph.Graph`` of fused kernels, loops
  and tensors (``rules``, ``collect``, ``operators``, ``looping``).
- ``mapping``: kernel work (stages, units, tiles, bytes), PMU banks and gathers, three-tier
  placement, pipeline stages and schedules, parallel plans across sockets.
- ``cost``: ``rdu.program_perf(graph, chip, Options(...))`` (time, bytes per tier, bound, per
  kernel), ``gpu.gpu_perf(graph, gpu)`` (the GPU baseline, kernel by kernel), ``gpu_training`` (a
  GPT training step on GPUs under a plan that fits), ``coe`` (Composition of Experts).
- ``execute.execute(graph, *args)``: real outputs, counters per kernel.
- ``calibrate``: the bounded fit to published measurements (cases, validation set, suite with
  leave-one-out; programs come from a builder passed in).
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
from rdu_xla_backend.workload.lowering import UnsupportedPrimitiveError, lower
from rdu_xla_backend.cost.rdu import Options, program_perf

__all__ = ["CHIPS", "ChipSpec", "GpuParameters", "GpuSpec", "ModelParameters", "Options",
           "UnsupportedPrimitiveError", "assumptions", "get_chip", "lower", "program_perf"]
