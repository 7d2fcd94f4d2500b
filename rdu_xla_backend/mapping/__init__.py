"""Mapping: how a lowered graph is laid onto a chip.

- ``kernel_work``: stages, units, tiles and bytes of one kernel call on one socket.
- ``banks``: PMU banked scratchpads (bank conflicts of real gathers), memory tiers, transfers.
- ``gathers``: index lists of a lowered gather, priced on a PMU.
- ``pipeline``: stage balancing inside a fused kernel; micro-batch schedules across sockets.
- ``placement``: three-tier memory (SRAM/HBM/DDR) by tensor role.
- ``stages``: which kernels a pipeline stage runs; the bytes a socket must hold.
- ``parallel``: collectives, tensor x pipeline x data plans across sockets (whole layers per
  stage, candidate plans, memory per socket).
- ``gpu_plan``: a GPT training job on GPUs: TP/PP/DP plan, memory per GPU, plans that fit.
"""
