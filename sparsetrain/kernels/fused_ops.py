"""Element-wise pieces of the GPT step with hand-written gradients, for XLA:CPU.

`residual_gradient_barrier(x)`: identity forward; its backward passes the cotangent through a
`lax.cond` (identity when the cotangent's first element is a number, else the cotangent plus that
NaN, so a non-finite gradient stays non-finite), so the residual stream's gradient is materialised
once per layer: XLA does not fuse across a conditional, and it removes `lax.optimization_barrier`
before fusing on CPU. Without it XLA:CPU's fusion duplicates the chain of residual-gradient additions into every
consumer: the fusion producing layer l's input gradient re-adds the LayerNorm-backward terms of
every layer above it (in a small-30m trace, fusions of 44 up to 144 operands, 8 x 256 x 512 each:
O(layers^2) memory traffic, a third of the sparse step's element-wise time).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


@jax.custom_vjp
def residual_gradient_barrier(x: jax.Array) -> jax.Array:
    """x (any shape) -> x; the gradient is x's cotangent, materialised (see module docstring)."""
    return x


def _barrier_fwd(x):
    return x, None


def _barrier_bwd(_, ct):
    # Two different branches: XLA folds a conditional whose branches are identical.
    first = ct.reshape(-1)[0]
    return (jax.lax.cond(first == first, lambda c: c, lambda c: c + first, ct),)


residual_gradient_barrier.defvjp(_barrier_fwd, _barrier_bwd)


_GELU_C = math.sqrt(2.0 / math.pi)  # tanh-approximation constants of jax.nn.gelu(approximate=True)
_GELU_A = 0.044715


def _gelu_parts(u):
    """(gelu(u), tanh term) of the tanh-approximate GELU."""
    t = jnp.tanh(_GELU_C * (u + _GELU_A * u * u * u))
    return 0.5 * u * (1.0 + t), t


@jax.custom_vjp
def bias_gelu(y: jax.Array, bias: jax.Array) -> jax.Array:
    """gelu(y + bias), tanh approximation (jax.nn.gelu's default). y (..., n), bias (n,) -> (..., n).

    Its backward recomputes the tanh from y and bias in the one pass that forms the input gradient
    (autodiff of jax.nn.gelu has XLA store the tanh and read it back in two more passes: one more
    array of y's size written and read twice per layer).
    """
    return _gelu_parts(y + bias.astype(y.dtype))[0]


def _bias_gelu_fwd(y, bias):
    return bias_gelu(y, bias), (y, bias)


def _bias_gelu_bwd(res, g):
    y, bias = res
    u = (y + bias.astype(y.dtype)).astype(jnp.float32)
    # Written unlike the forward's tanh argument on purpose: XLA would otherwise merge the two
    # (common-subexpression elimination) and store the forward's tanh for the backward.
    t = jnp.tanh(u * (_GELU_C + (_GELU_C * _GELU_A) * (u * u)))
    slope = 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * u * u)
    du = (g.astype(jnp.float32) * slope).astype(y.dtype)
    dbias = du.reshape(-1, du.shape[-1]).sum(0, dtype=jnp.float32).astype(bias.dtype)
    return du, dbias


bias_gelu.defvjp(_bias_gelu_fwd, _bias_gelu_bwd)
