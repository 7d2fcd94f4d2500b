"""The RDU emulator: memory (PMU banks, tiers, transfers) and pipeline (stages, schedules)."""

from rdu_xla_backend.emulator import memory, pipeline

__all__ = ["memory", "pipeline"]
