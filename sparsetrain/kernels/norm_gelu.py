"""LayerNorm and bias + tanh-GELU of the GPT by the compiled float32 CPU kernels (csrc/elementwise.cc).

XLA:CPU runs these element-wise passes as several separate fusions each (a LayerNorm forward is
four passes over its (N, d) array, its backward more; bias-GELU's forward ~2.5x the time of one
read and one write of its array). The compiled kernels do one pass per direction, on the same
threads as the other compiled kernels (XLA's intra-op pool):

- `layer_norm(x, scale, bias, eps)`: LayerNorm over the last axis; the forward also saves each
  row's mean and 1/sqrt(var + eps) (N,) for the backward (dx, dscale, dbias in one pass).
- `add_layer_norm(x, a, scale, bias, eps, a_bias)`: (s, LayerNorm(s)) of s = x + a (+ a_bias,
  the bias of the linear that made a), the residual add and the LayerNorm after it in one pass;
  its backward adds s's cotangent (the residual stream's gradient) to dx in the same pass and sums
  that over rows for a_bias's gradient.
- `bias_gelu(u, bias)`: gelu(u + bias), `jax.nn.gelu(approximate=True)`'s math; the backward
  recomputes the tanh and sums dbias over rows.

dscale, dbias are column sums taken per fixed chunk of rows and added in chunk order: the same
result on every run, whatever the thread count. Every function takes x (..., d) and returns its
shape. `compiled_elementwise(dtype)` says whether a call traced now should use them; the callers
(models/gpt.py) keep the plain jnp formulas otherwise. The compiled calls are the named jits
`layer_norm_forward`, `layer_norm_backward`, `bias_gelu_forward`, ... (profiles show them so).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sparsetrain.kernels import ffi, fused_ops
from sparsetrain.kernels.dispatch import kernel_backend
from sparsetrain.kernels.mesh import mesh_axes

_F32 = jnp.float32


def compiled_elementwise(dtype) -> bool:
    """Whether LayerNorm / bias-GELU calls of `dtype` traced now run the compiled kernels: for
    XLA:CPU's fused pieces (`fused_ops.cpu_fusions`), the compiled kernels chosen for `dtype`
    (`dispatch.kernel_backend`: float32 on CPU with the library loaded) and no mesh in force
    (under a mesh the plain formulas run, which XLA splits over the devices itself)."""
    return fused_ops.cpu_fusions() and kernel_backend(dtype) == "ffi" and not mesh_axes()


def _norm_outs(n: int, d: int, with_sum: bool):
    rows = jax.ShapeDtypeStruct((n, d), _F32)
    stats = jax.ShapeDtypeStruct((n,), _F32)
    return (rows,) * (2 if with_sum else 1) + (stats, stats)


@functools.partial(jax.jit, static_argnames="eps")
def layer_norm_forward(x2, scale, bias, eps):
    """(y, mean, rstd): y (N, d) LayerNorm of x2 (N, d), mean and rstd (N,)."""
    return ffi.call("sparsetrain_layer_norm_forward", _norm_outs(*x2.shape, False), x2, scale, bias,
                    eps=np.float32(eps))


@functools.partial(jax.jit, static_argnames="eps")
def add_layer_norm_forward(x2, a2, a_bias, scale, bias, eps):
    """(s, y, mean, rstd): s = x2 + a2 + a_bias (N, d), y its LayerNorm, mean and rstd (N,)."""
    return ffi.call("sparsetrain_add_layer_norm_forward", _norm_outs(*x2.shape, True), x2, a2,
                    a_bias, scale, bias, eps=np.float32(eps))


@jax.jit
def layer_norm_backward(x2, mean, rstd, scale, dy):
    """(dx (N, d), dscale (d,), dbias (d,)) of y = LayerNorm(x2) for cotangent dy (N, d)."""
    n, d = x2.shape
    outs = (jax.ShapeDtypeStruct((n, d), _F32),) + (jax.ShapeDtypeStruct((d,), _F32),) * 2
    return ffi.call("sparsetrain_layer_norm_backward", outs, x2, mean, rstd, scale, dy)


@jax.jit
def add_layer_norm_backward(s2, mean, rstd, scale, dy, ds):
    """layer_norm_backward's three with ds (N, d) (the cotangent of s) added to dx, and the
    column sums of that dx (d,) (a_bias's gradient)."""
    n, d = s2.shape
    outs = (jax.ShapeDtypeStruct((n, d), _F32),) + (jax.ShapeDtypeStruct((d,), _F32),) * 3
    return ffi.call("sparsetrain_add_layer_norm_backward", outs, s2, mean, rstd, scale, dy, ds)


@jax.jit
def bias_gelu_forward(u2, bias):
    """gelu(u2 + bias) (N, n), tanh approximation."""
    return ffi.call("sparsetrain_bias_gelu_forward", jax.ShapeDtypeStruct(u2.shape, _F32), u2, bias)


@jax.jit
def bias_gelu_backward(u2, bias, g):
    """(du (N, n), dbias (n,)) of gelu(u2 + bias) for cotangent g (N, n)."""
    outs = (jax.ShapeDtypeStruct(u2.shape, _F32), jax.ShapeDtypeStruct(bias.shape, _F32))
    return ffi.call("sparsetrain_bias_gelu_backward", outs, u2, bias, g)


# LayerNorm ---------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x2, scale, bias, eps):
    return layer_norm_forward(x2, scale, bias, eps)[0]


def _layer_norm_fwd(x2, scale, bias, eps):
    y, mean, rstd = layer_norm_forward(x2, scale, bias, eps)
    return y, (x2, mean, rstd, scale)


def _layer_norm_bwd(eps, res, dy):
    return layer_norm_backward(*res, dy)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis. x (..., d) float32,
    scale and bias (d,) -> (..., d) float32."""
    d = x.shape[-1]
    y = _layer_norm(x.reshape(-1, d), scale.astype(_F32), bias.astype(_F32), float(eps))
    return y.reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _add_layer_norm(x2, a2, a_bias, scale, bias, eps):
    s, y, _, _ = add_layer_norm_forward(x2, a2, a_bias, scale, bias, eps)
    return s, y


def _add_layer_norm_fwd(x2, a2, a_bias, scale, bias, eps):
    s, y, mean, rstd = add_layer_norm_forward(x2, a2, a_bias, scale, bias, eps)
    return (s, y), (s, mean, rstd, scale)


def _add_layer_norm_bwd(eps, res, cts):
    ds, dy = cts
    dx, dscale, dbias, da_bias = add_layer_norm_backward(*res, dy, ds)
    return dx, dx, da_bias, dscale, dbias


_add_layer_norm.defvjp(_add_layer_norm_fwd, _add_layer_norm_bwd)


def add_layer_norm(x: jax.Array, a: jax.Array, scale: jax.Array, bias: jax.Array,
                   eps: float = 1e-5, a_bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(s, layer_norm(s, scale, bias, eps)) of s = x + a + a_bias (a_bias (d,) or None: zero).
    x, a (..., d) float32 -> two (..., d)."""
    d = x.shape[-1]
    a_bias = jnp.zeros((d,), _F32) if a_bias is None else a_bias.astype(_F32)
    s, y = _add_layer_norm(x.reshape(-1, d), a.reshape(-1, d), a_bias, scale.astype(_F32),
                           bias.astype(_F32), float(eps))
    return s.reshape(x.shape), y.reshape(x.shape)


# bias + GELU -------------------------------------------------------------------------------


@jax.custom_vjp
def _bias_gelu(u2, bias):
    return bias_gelu_forward(u2, bias)


def _bias_gelu_fwd(u2, bias):
    return bias_gelu_forward(u2, bias), (u2, bias)


def _bias_gelu_bwd(res, g):
    return bias_gelu_backward(*res, g)


_bias_gelu.defvjp(_bias_gelu_fwd, _bias_gelu_bwd)


def bias_gelu(u: jax.Array, bias: jax.Array) -> jax.Array:
    """gelu(u + bias), `jax.nn.gelu(approximate=True)`. u (..., n) float32, bias (n,) -> (..., n)."""
    n = u.shape[-1]
    return _bias_gelu(u.reshape(-1, n), bias.astype(_F32)).reshape(u.shape)
