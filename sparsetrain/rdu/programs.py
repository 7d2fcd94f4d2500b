"""Lowering a sparsetrain program for the RDU performance model and emulator.

The backend costs block-sparse matmuls from their named calls and attention from its dataflow
operators, so a program is traced with the pure-JAX kernels (`use_kernel_backend("jax")`): the
compiled CPU kernels are opaque custom calls to it. This is the one place that choice is made.
"""

from __future__ import annotations

from typing import Any, Callable

from rdu_xla_backend.lowering import lower

from sparsetrain.kernels.dispatch import use_kernel_backend


def lower_program(fn: Callable, *args: Any, **kwargs: Any):
    """`rdu_xla_backend.lower(fn, *args, **kwargs)` with every kernel traced in pure JAX.

    Args:
      fn: the program, e.g. a train step `(state, batch) -> (state, metrics)`.
      args: its arguments (arrays or ShapeDtypeStructs).
      kwargs: options of `lower` (mode="fused"/"unfused", name=...).

    Returns:
      The lowered graph of fused kernels.
    """
    with use_kernel_backend("jax"):
        return lower(fn, *args, **kwargs)
