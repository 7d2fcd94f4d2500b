"""Workload: a JAX program lowered to a dataflow graph of fused kernels.

- ``graph``: tensors, operators, kernels (the lowered program as data).
- ``lowering``: jaxpr -> ``Graph`` (fused or one kernel per operator).
- ``rules``: FLOPs and bytes of each primitive; ``collect``: the operators of a body.
- ``operators``: unfused kernels as frameworks launch them.
- ``looping``: repeated kernel calls -> one looped kernel; ``kernels``: fused-kernel helpers.
"""
