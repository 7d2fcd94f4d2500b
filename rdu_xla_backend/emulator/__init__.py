"""The RDU emulator: memory (PMU banks, tiers, transfers), pipeline (stages, schedules),
execute (run a lowered graph on real arrays) and gpu (the kernel-by-kernel GPU baseline)."""

from rdu_xla_backend.emulator import execute, gpu, memory, pipeline

__all__ = ["execute", "gpu", "memory", "pipeline"]
