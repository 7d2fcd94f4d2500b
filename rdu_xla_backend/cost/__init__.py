"""Cost: seconds from work.

- ``rdu``: the RDU timing model (per kernel, per program, across sockets).
- ``gpu``: the GPU baseline on the same lowered program.
- ``coe``: Composition of Experts on an RDU node vs a DGX.
"""
