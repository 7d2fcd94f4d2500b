"""The block-sparse matmul kernels: y = x2 @ W for a weight stored as blocks (sparsity/layout.py).

Everything runs on block-major activations: x (T, in) is transposed once to xbm (nr, T, bk), so
input block-row r is the contiguous plane xbm[r] and `lax.dynamic_index_in_dim` reads it without
a gather (XLA:CPU gathers copy element-wise at ~1 GB/s, slower than all the dots together).

Forward, per output block-column j: y_j = sum_t xbm[rows[j, t]] @ values[j, t] (k dots of
(T, bk) @ (bk, bn), float32 accumulation), columns concatenated.
Backward, with dy block-major too (dybm (nc, T, bn)):
  dvalues[j, t] = xbm[rows[j, t]].T @ dybm[j];
  dx (block-major, then transposed back): plane r = sum over stored blocks (j, t) in input row r
  of dybm[j] @ values[j, t].T. The (j, t) of each input row come from the transposed layout,
  computed on device from row_indices (argsort); rows are padded to a static cap
  ceil(nc * k / nr) slots (exact for balanced layouts such as random_balanced), padded slots
  multiply a zeroed block. A layout with a row above the cap (e.g. magnitude) takes, via
  lax.cond, a general path: a rolled loop adding each block's contribution into its plane.
Every FLOP touches a stored block, so forward and backward cost scale with density.
Loops are unrolled (XLA:CPU then runs independent dots concurrently on its threads and its cost
analysis counts each one) up to MAX_UNROLL_DOTS dots, beyond that a loop over unrolled groups.

Three kernels, one API: float32 on a CPU device, or on every device of a CPU mesh in force
(`jax.set_mesh`; each device runs it on its shard, mesh.py), runs the compiled kernel of ffi.py
(XLA FFI, built at `pip install`) when it was built; a single GPU runs the Pallas (Triton) kernels
of pallas_block_sparse.py (float32 and bfloat16); everything else (bfloat16 on CPU, other
platforms, several devices and no mesh in force, several GPUs, no compiled library, or
SPARSETRAIN_KERNEL=jax) runs the pure-JAX
kernel above, which is also the reference the others are tested against. "pallas" forced off a GPU
runs the same kernels in Pallas interpret mode (slow; for tests). The choice is made when a call is
traced, by `dispatch.kernel_backend(dtype)` (`dispatch.use_kernel_backend("jax")` forces one for
the calls traced inside it). All are the named calls block_sparse_matmul_forward/_backward below,
with the same operands.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from sparsetrain.kernels import ffi, pallas_block_sparse
from sparsetrain.kernels.dispatch import kernel_backend
from sparsetrain.kernels.mesh import BlockSparseSplit, mesh_axes

# Dots per unrolled loop body. Compile time grows with it; beyond it, a fori_loop runs groups.
MAX_UNROLL_DOTS = 128


def _group_size(n: int, dots_per_item: int) -> int:
    """Largest divisor of n with group * dots_per_item <= MAX_UNROLL_DOTS (at least 1)."""
    limit = max(1, MAX_UNROLL_DOTS // max(1, dots_per_item))
    return max(g for g in range(1, min(n, limit) + 1) if n % g == 0)


def _plane(a, i):
    return lax.dynamic_index_in_dim(a, i, 0, keepdims=False)


def _block_major(a, b):
    """(T, n*b) -> (n, T, b)."""
    return a.reshape(a.shape[0], -1, b).transpose(1, 0, 2)


def _grouped(n, dots_per_item, item, outs):
    """Run item(i) for i < n; item returns (token-major slab (T, b), block stack (m, ...)).

    Returns (slabs concatenated on axis 1, block stacks concatenated on axis 0). Unrolled, or a
    fori_loop over unrolled groups writing into buffers shaped like `outs` (zeros to fill).
    """
    g = _group_size(n, dots_per_item)

    def group(i0):
        parts = [item(i0 + i) for i in range(g)]
        return tuple(jnp.concatenate([p[a] for p in parts], axis=1 - a) for a in range(2))

    if g == n:
        return group(0)

    def body(step, acc):
        slab, blocks = group(step * g)
        return (lax.dynamic_update_slice_in_dim(acc[0], slab, step * slab.shape[1], axis=1),
                lax.dynamic_update_slice_in_dim(acc[1], blocks, step * blocks.shape[0], axis=0))

    return lax.fori_loop(0, n // g, body, outs)


def _forward(x2, values, rows):
    t, _ = x2.shape
    nc, k, bk, bn = values.shape
    xbm = _block_major(x2, bk)
    dummy = jnp.zeros((nc, 0), x2.dtype)

    def column(j):
        acc = None
        for s in range(k):
            d = jnp.dot(_plane(xbm, rows[j, s]), values[j, s], preferred_element_type=jnp.float32)
            acc = d if acc is None else acc + d
        return acc.astype(x2.dtype), dummy[:1] if isinstance(j, int) else lax.dynamic_slice_in_dim(dummy, j, 1)

    return _grouped(nc, k, column, (jnp.zeros((t, nc * bn), x2.dtype), dummy))[0]


def _transposed_layout(rows, nr, cap):
    """Per input row r: up to `cap` flat block ids j*k+t stored in it (sorted), validity, counts."""
    flat = rows.reshape(-1)
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)
    counts = jnp.zeros((nr,), jnp.int32).at[flat].add(1)
    start = jnp.cumsum(counts) - counts
    slot = jnp.arange(cap, dtype=jnp.int32)
    valid = slot[None, :] < counts[:, None]
    pos = jnp.clip(start[:, None] + slot[None, :], 0, flat.shape[0] - 1)
    ids = jnp.where(valid, order[pos], 0)
    return ids, valid, jnp.max(counts)


def _backward_balanced(xbm, dybm, vflat, rows, k, cap):
    """Per input row r: g = its columns' dy planes side by side (T, cap*bn);
    dx_r = g @ [values blocks].T and dvalues of its blocks = xbm[r].T @ g."""
    nr, t, bk = xbm.shape
    nb, _, bn = vflat.shape
    ids, valid, _ = _transposed_layout(rows, nr, cap)
    zero = jnp.zeros((), vflat.dtype)

    def row(r):
        b = ids[r]
        g = jnp.concatenate([_plane(dybm, b[s] // k) for s in range(cap)], axis=1)
        w = jnp.concatenate([jnp.where(valid[r, s], _plane(vflat, b[s]), zero) for s in range(cap)], axis=1)
        dx_r = lax.dot_general(g, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        dw_r = lax.dot_general(_plane(xbm, r), g, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        dw_r = dw_r.reshape(bk, cap, bn).transpose(1, 0, 2)
        return dx_r.astype(xbm.dtype), dw_r.astype(vflat.dtype)

    outs = (jnp.zeros((t, nr * bk), xbm.dtype), jnp.zeros((nr * cap, bk, bn), vflat.dtype))
    dx, dw_slots = _grouped(nr, 2 * cap, row, outs)
    # Slot (r, s) holds block ids[r, s]; put each stored block's gradient back at its id.
    slot_of = jnp.zeros((nb,), jnp.int32).at[jnp.where(valid, ids, nb).reshape(-1)].set(
        jnp.arange(nr * cap, dtype=jnp.int32), mode="drop")
    return dx, jnp.take(dw_slots, slot_of, axis=0)


def _backward_general(xbm, dybm, vflat, rows, k):
    """Any layout: a rolled loop over stored blocks, adding each dx contribution into its plane."""
    nr, t, bk = xbm.shape
    nb, _, bn = vflat.shape
    flat = rows.reshape(-1)

    def body(i, acc):
        dxbm, dw = acc
        r = flat[i]
        dyp = _plane(dybm, i // k)
        d = lax.dot_general(dyp, _plane(vflat, i), (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        dxbm = lax.dynamic_update_index_in_dim(dxbm, _plane(dxbm, r) + d, r, 0)
        dwi = lax.dot_general(_plane(xbm, r), dyp, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        return dxbm, lax.dynamic_update_index_in_dim(dw, dwi.astype(dw.dtype), i, 0)

    dxbm, dw = lax.fori_loop(0, nb, body, (jnp.zeros((nr, t, bk), jnp.float32), jnp.zeros_like(vflat)))
    return dxbm.astype(xbm.dtype).transpose(1, 0, 2).reshape(t, nr * bk), dw


def _backward(x2, values, rows, dy):
    t, n_in = x2.shape
    nc, k, bk, bn = values.shape
    nr = n_in // bk
    xbm = _block_major(x2, bk)
    dybm = _block_major(dy.astype(x2.dtype), bn)
    vflat = values.reshape(nc * k, bk, bn)
    cap = -(-nc * k // nr)  # exact for layouts balanced per input row (random_balanced)
    _, _, max_count = _transposed_layout(rows, nr, 1)
    dx, dw = lax.cond(
        max_count <= cap,
        lambda: _backward_balanced(xbm, dybm, vflat, rows, k, cap),
        lambda: _backward_general(xbm, dybm, vflat, rows, k),
    )
    return dx, dw.reshape(values.shape)


# Named calls: the jaxpr shows each block-sparse matmul as one call with its layout argument, so a
# dataflow lowering (rdu_xla_backend.workload.lowering) can cost it as one fused kernel from its operands
# and real indices instead of from this CPU-specific formulation. Both kernels use the same names
# and operands: (x2, values, rows) forward, (x2, values, rows, dy) backward.
def _named_call(fn, name: str, doc: str):
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return jax.jit(fn)


FORWARD_CALL, BACKWARD_CALL = "block_sparse_matmul_forward", "block_sparse_matmul_backward"
CALL_NAMES = (FORWARD_CALL, BACKWARD_CALL)  # what the RDU lowering recognises (tests/test_rdu_gpt.py)
_FORWARD_DOC = "y (T, out) from x2 (T, in), values (nc, k, bk, bn), rows (nc, k)."
_BACKWARD_DOC = "(dx (T, in), dvalues (nc, k, bk, bn)) from the forward's operands and dy (T, out)."
block_sparse_matmul_forward = _named_call(
    lambda x2, values, rows: _forward(x2, values, rows), FORWARD_CALL, _FORWARD_DOC)
block_sparse_matmul_backward = _named_call(
    lambda x2, values, rows, dy: _backward(x2, values, rows, dy), BACKWARD_CALL,
    _BACKWARD_DOC)
_CALLS = {
    "jax": (block_sparse_matmul_forward, block_sparse_matmul_backward),
    "ffi": (_named_call(lambda x2, values, rows: ffi.forward(x2, values, rows),
                        FORWARD_CALL, _FORWARD_DOC),
            _named_call(lambda x2, values, rows, dy: ffi.backward(x2, values, rows, dy),
                        BACKWARD_CALL, _BACKWARD_DOC)),
    # Triton on a GPU backend, Pallas' interpreter elsewhere (decided when the call is traced).
    "pallas": (_named_call(lambda x2, values, rows: pallas_block_sparse.forward(
                               x2, values, rows, interpret=jax.default_backend() != "gpu"),
                           FORWARD_CALL, _FORWARD_DOC),
               _named_call(lambda x2, values, rows, dy: pallas_block_sparse.backward(
                               x2, values, rows, dy, interpret=jax.default_backend() != "gpu"),
                           BACKWARD_CALL, _BACKWARD_DOC)),
}


def _forward_call(backend: str, split: BlockSparseSplit | None):
    call = _CALLS[backend][0]
    return call if split is None else split.forward(call)


def _backward_call(backend: str, split: BlockSparseSplit | None):
    call = _CALLS[backend][1]
    return call if split is None else split.backward(call)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bsmm(x2, values, rows, backend, split):
    return _forward_call(backend, split)(x2, values, rows)


def _bsmm_fwd(x2, values, rows, backend, split):
    return _forward_call(backend, split)(x2, values, rows), (x2, values, rows)


def _bsmm_bwd(backend, split, res, dy):
    x2, values, rows = res
    dx, dw = _backward_call(backend, split)(x2, values, rows, dy)
    return dx, dw, None


_bsmm.defvjp(_bsmm_fwd, _bsmm_bwd)


def block_sparse_product(x2, values, rows):
    """y (T, out) = x2 (T, in) @ W, W given by its stored blocks; differentiable in x2 and values.

    Args:
      x2: (T, in) float32 or bfloat16.
      values: (nc, k, bk, bn) stored blocks, x2's dtype.
      rows: (nc, k) int32 block-row index of each stored block (may be traced).

    The kernel (compiled, Pallas or pure JAX) is the one `dispatch.kernel_backend` names when this
    is traced. Under a mesh in force (`jax.set_mesh`) the compiled kernel runs on every device's
    shard inside a shard_map (`mesh.BlockSparseSplit`); the pure-JAX one is left to XLA's sharding
    propagation (and a forced Pallas kernel, not yet split, runs whole on every device).
    """
    backend = kernel_backend(x2.dtype)
    if backend == "pallas" and not pallas_block_sparse.supports(values.shape[2:]):
        backend = "jax"  # Triton tiles must be powers of two
    split = None
    if backend == "ffi" and (axes := mesh_axes()):
        split = BlockSparseSplit.of(x2.shape[0], values.shape[0], axes)
        split = split if split.used else None
    return _bsmm(x2, values, rows, backend, split)
