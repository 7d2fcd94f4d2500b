"""Causal self-attention of the GPT: one function, two kernels.

`causal_attention(q, k, v)` takes and returns (B, T, heads, head_dim) arrays (the layout the qkv
projection produces, so no transposes around it) and computes softmax(q k^T / sqrt(head_dim) +
causal mask) v with float32 softmax.

- Compiled kernel (`ffi.attention_forward/backward`, csrc/attention.cc, XLA FFI): fused per
  (sequence, head) on CPU threads, the T x T scores never leave the thread's cache; it computes
  only the causal triangle (by row blocks) and saves the per-query log-sum-exp (B, heads, T) for
  the backward, which recomputes the probabilities. Used for float32 on one CPU device when the
  library was built, under the same rules and switches as block_sparse_matmul's compiled kernel
  (`dispatch.kernel_backend`, `SPARSETRAIN_KERNEL=jax`, `dispatch.use_kernel_backend`). Under a
  mesh in force (`jax.set_mesh`) every device runs it on its own sequences and heads: a
  shard_map with the batch over data x fsdp and the heads over tensor (`mesh.AttentionSplit`).
- On a GPU backend, bfloat16/float16: `jax.nn.dot_product_attention(implementation="cudnn")`
  (cuDNN's fused flash attention, causal) when cuDNN takes the operands; JAX checks that while
  tracing and raises for a missing cuDNN, an unsupported head_dim or GPU, and then the XLA
  implementation below runs instead.
- `jax.nn.dot_product_attention(is_causal=True)` (XLA) otherwise: bfloat16 on CPU, float32 on a
  GPU, TPU, several devices with no mesh in force, and inside
  `use_kernel_backend("jax")`, which the RDU glue (`sparsetrain.rdu`) enters around its lowering so
  that attention is costed from its dataflow operators. It is also the reference the compiled
  kernel is tested against.

`causal_attention_packed(qkv)` takes the qkv projection's output unsplit, (B, T, 3, heads,
head_dim): the compiled kernel reads q, k and v from it in place and writes the packed gradient, so
the training step has no split copies and no concatenation of dq, dk, dv; the other kernels get
the split operands.

The compiled forward and backward are the named calls `causal_attention_forward` and
`causal_attention_backward` (`causal_attention_packed_forward` / `_backward` for the packed entry).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sparsetrain.kernels import ffi
from sparsetrain.kernels.dispatch import kernel_backend, kernel_choice
from sparsetrain.kernels.mesh import AttentionSplit, mesh_axes

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)  # cuDNN flash attention takes 16-bit operands only


def attention_kernel(dtype=jnp.float32) -> str:
    """'ffi' (compiled CPU kernel), 'cudnn' (tried first on a GPU) or 'jax': the kernel a
    causal_attention call of `dtype` traced now runs (pure JAX everywhere under
    `use_kernel_backend("jax")`)."""
    if kernel_choice() == "jax":
        return "jax"
    if jax.default_backend() == "gpu":
        return "cudnn" if jnp.dtype(dtype) in CUDNN_DTYPES else "jax"
    return "ffi" if kernel_backend(dtype) == "ffi" else "jax"


def cudnn_or_xla_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal attention by cuDNN when it takes these operands, else by XLA (same math).

    q, k, v: (B, T, heads, head_dim) -> (B, T, heads, head_dim).
    """
    try:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    except (RuntimeError, ValueError, NotImplementedError, TypeError):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


@jax.jit
def causal_attention_forward(q, k, v):
    return ffi.attention_forward(q, k, v)


@jax.jit
def causal_attention_backward(q, k, v, o, lse, do):
    return ffi.attention_backward(q, k, v, o, lse, do)


def _forward(split: AttentionSplit | None):
    if split is None:
        return causal_attention_forward
    return split.map(causal_attention_forward, ("bthd",) * 3, ("bthd", "bht"))


def _backward(split: AttentionSplit | None):
    if split is None:
        return causal_attention_backward
    return split.map(causal_attention_backward, ("bthd",) * 4 + ("bht", "bthd"), ("bthd",) * 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _compiled(q, k, v, split):
    return _forward(split)(q, k, v)[0]


def _compiled_fwd(q, k, v, split):
    o, lse = _forward(split)(q, k, v)
    return o, (q, k, v, o, lse)


def _compiled_bwd(split, res, do):
    return _backward(split)(*res, do.astype(jnp.float32))


_compiled.defvjp(_compiled_fwd, _compiled_bwd)


def _split(batch: int, heads: int) -> AttentionSplit | None:
    """The shard_map split of a compiled call under the mesh in force, or None (no mesh)."""
    axes = mesh_axes()
    if not axes:
        return None
    split = AttentionSplit.of(batch, heads, axes)
    return split if split.batch + split.heads else None


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal softmax attention. q, k, v: (B, T, heads, head_dim) -> (B, T, heads, head_dim)."""
    if q.shape != k.shape or q.shape != v.shape or q.ndim != 4:
        raise ValueError(f"q, k, v: shapes {q.shape}, {k.shape}, {v.shape} are not allowed; "
                         "expected three equal (B, T, heads, head_dim) shapes")
    kernel = attention_kernel(q.dtype)
    if kernel == "ffi" and ffi.AVAILABLE:
        return _compiled(q, k, v, _split(q.shape[0], q.shape[2]))
    if kernel == "cudnn":
        return cudnn_or_xla_attention(q, k, v)
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)


@jax.jit
def causal_attention_packed_forward(qkv):
    return ffi.attention_packed_forward(qkv)


@jax.jit
def causal_attention_packed_backward(qkv, o, lse, do):
    return (ffi.attention_packed_backward(qkv, o, lse, do),)


def _packed_forward(split: AttentionSplit | None):
    if split is None:
        return causal_attention_packed_forward
    return split.map(causal_attention_packed_forward, ("bt3hd",), ("bthd", "bht"))


def _packed_backward(split: AttentionSplit | None):
    if split is None:
        return causal_attention_packed_backward
    return split.map(causal_attention_packed_backward, ("bt3hd", "bthd", "bht", "bthd"), ("bt3hd",))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _compiled_packed(qkv, split):
    return _packed_forward(split)(qkv)[0]


def _compiled_packed_fwd(qkv, split):
    o, lse = _packed_forward(split)(qkv)
    return o, (qkv, o, lse)


def _compiled_packed_bwd(split, res, do):
    return _packed_backward(split)(*res, do.astype(jnp.float32))


_compiled_packed.defvjp(_compiled_packed_fwd, _compiled_packed_bwd)


def split_qkv(qkv: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q, k, v, each (B, T, heads, head_dim), of a packed (B, T, 3, heads, head_dim) array."""
    q, k, v = jnp.split(qkv, 3, axis=2)
    return q[:, :, 0], k[:, :, 0], v[:, :, 0]


def causal_attention_packed(qkv: jax.Array) -> jax.Array:
    """causal_attention(*split_qkv(qkv)) without the split: qkv (B, T, 3, heads, head_dim), the
    qkv projection's output as it lies -> (B, T, heads, head_dim).

    The compiled kernel (same rules as causal_attention's) reads q, k, v in place and its
    backward writes the packed gradient (B, T, 3, heads, head_dim) directly, so neither the split
    copies nor the concatenation of dq, dk, dv run; every other kernel gets the split operands.
    """
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv: shape {qkv.shape} is not allowed; expected (B, T, 3, heads, head_dim)")
    if attention_kernel(qkv.dtype) == "ffi" and ffi.AVAILABLE:
        return _compiled_packed(qkv, _split(qkv.shape[0], qkv.shape[3]))
    return causal_attention(*split_qkv(qkv))


def causal_attention_dropout(q: jax.Array, k: jax.Array, v: jax.Array, rate: float,
                             key: jax.Array) -> jax.Array:
    """Causal attention with dropout on the probabilities (training GPT-2 style), plain XLA ops.

    q, k, v: (B, T, heads, head_dim) -> (B, T, heads, head_dim). Scores and softmax in float32;
    each probability is zeroed with probability `rate` and the rest scaled by 1 / (1 - rate).
    """
    T, hd = q.shape[1], q.shape[-1]
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(hd))
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1)
    keep = jax.random.bernoulli(key, 1.0 - rate, p.shape)
    p = jnp.where(keep, p / (1.0 - rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v,
                      preferred_element_type=jnp.float32).astype(q.dtype)
