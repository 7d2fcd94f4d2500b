"""rdu_xla_backend: a JAX-implemented emulator and performance model of a reconfigurable dataflow
unit (SambaNova SN10/SN30/SN40L), with A100/H100 kernel-by-kernel baselines.

Usable without ``sparsetrain``; it must never import it.

- ``hardware``: chips as data (public numbers with sources; assumed values named).
- ``emulator.memory``: PMU banked SRAM (bank conflicts of real gathers), tiers, transfers.
- ``emulator.pipeline``: stage balancing in a fused kernel; micro-batch schedules across sockets.
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

__all__ = ["CHIPS", "ChipSpec", "GpuParameters", "GpuSpec", "ModelParameters", "assumptions",
           "get_chip"]
