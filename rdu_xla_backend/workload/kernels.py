"""Fused kernels as first-class ops in the traced program.

``fused(name, fn)`` returns ``fn`` as a ``jax.jit`` call named ``rdu_kernel:<name>``: it shows in
the jaxpr as one equation holding the whole body (with every operand, e.g. a block-sparse
layout's ``row_indices``, visible as an input), XLA compiles it as usual on CPU/GPU, gradients
flow through it (JAX differentiates the call; the backward keeps the name under ``transpose``),
and ``lowering.lower`` makes a top-level call of it a kernel of its own (inside a layer loop it is
part of the loop's fused kernel). Static arguments must be bound first (``functools.partial``).

    linear = kernels.fused("block_sparse_linear", lambda x, v, layout, b: act(bsmm(x, v, layout) + b))
    layer = kernels.fused("decoder_layer", functools.partial(decoder_layer, spec=spec))
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

from rdu_xla_backend.workload.lowering import KERNEL_PREFIX


def fused(name: str, fn: Callable) -> Callable:
    """``fn`` as a named fused kernel (a jit call ``rdu_kernel:<name>`` in the jaxpr)."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"kernel name {name!r}: use letters, digits and '_'")

    @functools.wraps(fn)
    def body(*args, **kwargs):
        return fn(*args, **kwargs)

    body.__name__ = body.__qualname__ = f"{KERNEL_PREFIX}{name}"
    return jax.jit(body)


def fused_linear(matmul: Callable, activation: Callable | None = None) -> Callable:
    """A fused (sparse) linear ``activation(matmul(x, w, layout) + bias)`` as one kernel.

    Args:
        matmul: e.g. a block-sparse matmul ``(x, values, layout) -> y`` (passed in: the backend
            does not depend on any model library).
        activation: optional element-wise function applied in the same kernel.
    Returns:
        ``f(x, values, layout, bias)``.
    """
    def linear(x, values, layout, bias):
        y = matmul(x, values, layout) + bias.astype(x.dtype)
        return activation(y) if activation is not None else y

    return fused("block_sparse_linear", linear)
