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

from sparsetrain.kernels.dispatch import kernel_choice


def residual_gradient_barrier(x: jax.Array) -> jax.Array:
    """x (any shape) -> x; the gradient is x's cotangent, materialised (see module docstring).

    Only where it helps: traced for XLA:CPU with the compiled kernels allowed. Under
    `use_kernel_backend("jax")` (the RDU lowering, which costs every op) and on other backends
    it is the plain identity.
    """
    return _barrier(x) if cpu_fusions() else x


def cpu_fusions() -> bool:
    """Whether a call traced now takes this module's fused pieces: for XLA:CPU, unless
    `use_kernel_backend("jax")` is in force (the RDU lowering costs the plain ops)."""
    return jax.default_backend() == "cpu" and kernel_choice() != "jax"


@jax.custom_vjp
def _barrier(x):
    return x


def _barrier_fwd(x):
    return x, None


def _barrier_bwd(_, ct):
    # Two different branches: XLA folds a conditional whose branches are identical.
    first = ct.reshape(-1)[0]
    return (jax.lax.cond(first == first, lambda c: c, lambda c: c + first, ct),)


_barrier.defvjp(_barrier_fwd, _barrier_bwd)


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


@jax.custom_vjp
def head_cross_entropy(x: jax.Array, wte: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats) of the tied head's logits x @ wte.T against integer targets.

    x (N, d) float, wte (vocab, d), targets int32 (N,) -> float32 scalar. Forward and backward
    in float32. The forward also forms softmax - one_hot (N, vocab) in the same pass as the
    log-sum-exp, so the backward is the two products only (autodiff of log_softmax + gather
    re-reads the logits, recomputes the softmax and scatters the one-hot: three more passes over
    an N x vocab array).
    """
    return _head_ce_forward(x, wte, targets)[0]


def _head_ce_forward(x, wte, targets):
    logits = jnp.dot(x, wte.astype(x.dtype).T, preferred_element_type=jnp.float32)
    top = jax.lax.stop_gradient(logits.max(-1, keepdims=True))
    e = jnp.exp(logits - top)
    total = e.sum(-1, keepdims=True)
    one_hot = targets[:, None] == jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    picked = jnp.where(one_hot, logits, 0.0).sum(-1)
    loss = (top[:, 0] + jnp.log(total[:, 0]) - picked).mean()
    return loss, e / total - one_hot.astype(jnp.float32)


def _head_ce_fwd(x, wte, targets):
    loss, dlogits = _head_ce_forward(x, wte, targets)
    return loss, (x, wte, dlogits)


def _head_ce_bwd(res, g):
    x, wte, dlogits = res
    scale = (g / dlogits.shape[0]).astype(jnp.float32)
    dx = jnp.dot(dlogits, wte.astype(jnp.float32)) * scale
    dwte = jnp.dot(dlogits.T, x.astype(jnp.float32)) * scale
    return dx.astype(x.dtype), dwte.astype(wte.dtype), None


head_cross_entropy.defvjp(_head_ce_fwd, _head_ce_bwd)
