"""Cost: seconds from work.

- ``rdu``: the RDU timing model (per kernel, per program, across sockets).
- ``rdu_plan``: a step on many sockets under a parallel plan (micro-batches re-timed, schedule,
  gradient all-reduce, memory check); the plan search.
- ``gpu``: the GPU baseline on the same lowered program.
- ``coe``: Composition of Experts on an RDU node vs a DGX.
"""
