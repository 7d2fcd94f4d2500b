"""Cost: seconds from work.

- ``rdu``: the RDU timing model (per kernel, per program, across sockets).
- ``rdu_plan``: a step on many sockets under a parallel plan (micro-batches re-timed, schedule,
  gradient all-reduce, memory check); the plan search.
- ``gpu``: the GPU baseline on the same lowered program, kernel by kernel.
- ``gpu_kernels``: GPU kernel costs (GEMMs by shape, element-wise, fused attention, collectives).
- ``gpu_training``: a GPT training step on many GPUs under a Megatron-style plan.
- ``coe``: Composition of Experts on an RDU node vs a DGX.
"""
