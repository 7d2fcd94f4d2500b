"""Block-sparse matmul kernels for GPUs, written in Pallas (Triton backend).

Same operands and results as the CPU kernels of sparsetrain.kernels.block_sparse (layout in
sparsetrain/sparsity/layout.py): x2 (T, in), values (nc, k, bk, bn), rows (nc, k) int32 (the
sorted input block-rows stored in output block-column j), dy (T, out). Every FLOP touches a stored
block: forward, dx and dvalues each cost 2 * T * nnz FLOPs.

- forward, grid (T / tile, nc): program (i, j) loads, for each of column j's k stored blocks, the
  input tile x[i-tile, rows[j, s]-block] (bt, bk) and the block values[j, s] (bk, bn) and
  accumulates their product in float32; y[i-tile, j-block] = the sum, cast to x's dtype.
- dx, grid (T / tile, nr), through the transposed layout (CSR by input row, built on device from
  rows by a stable argsort, so any per-row count works: unbalanced layouts such as magnitude):
  program (i, r) loops over the stored blocks b = j * k + s of input row r and accumulates
  dy[i-tile, j-block] @ values[b].T (bt, bk).
- dvalues, grid (nc, k): program (j, s) reduces over tokens, tile by tile,
  x[:, rows[j, s]-block].T @ dy[:, j-block] (bk, bn).
All dots take the operands' dtype (bfloat16 or float32) and accumulate in float32.

The Triton backend of Pallas has no scalar prefetch (PrefetchScalarGridSpec is TPU-only in JAX
0.10.2, and jax/_src/pallas/triton/lowering.py refuses `num_index_operands`), so the block indices
are ordinary int32 operands that each program reads as scalars, and x / dy are passed as whole
token tiles (or whole arrays) that the kernel slices with `pl.ds` at the stored block's offset.

`interpret=True` runs the same kernels through Pallas' HLO interpreter on any backend (the tests
run them that way on CPU); on a GPU backend they lower to Triton.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

# Token tiles (rows of x per program). Chosen automatically: the largest of AUTO_TILES dividing
# the token count (else the token count is padded to a multiple of 16); 256 may be asked for.
# 128 rows x a 64..128-wide block is a float32 accumulator of at most 64 KiB per program. Triton's
# tl.dot needs every dimension >= 16 (triton-lang.org, triton.language.dot). Not tuned on a GPU
# yet: benchmarks/gpu_block_sparse.py --tiles sweeps them.
TOKEN_TILES = (256, 128, 64, 32, 16)
AUTO_TILES = (128, 64, 32, 16)
NUM_STAGES = 3  # software-pipelining depth of the block loops (JAX's Triton default on CUDA)


def num_warps(tile: int, block) -> int:
    """Warps per program: Triton's default 4, 8 once the float32 accumulator passes 64 KiB."""
    return 4 if tile * max(block) <= 128 * 128 else 8


def supports(block) -> bool:
    """True if blocks of shape (bk, bn) run here: Triton tiles are powers of two, dots >= 16."""
    return all(b >= 16 and b & (b - 1) == 0 for b in block)


def _token_tile(tokens: int, tile: int | None) -> int:
    if tile is not None:
        if tile not in TOKEN_TILES:
            raise ValueError(f"tile: {tile} is not allowed; expected one of {list(TOKEN_TILES)}")
        return tile
    return next((t for t in AUTO_TILES if tokens % t == 0), AUTO_TILES[-1])


def _pad_tokens(a, tile: int):
    pad = (-a.shape[0]) % tile
    return a if pad == 0 else jnp.pad(a, ((0, pad), (0, 0)))


def _params(interpret: bool, tile: int, block):
    if interpret:
        return None
    return pltriton.CompilerParams(num_warps=num_warps(tile, block), num_stages=NUM_STAGES)


def _forward_kernel(rows_ref, x_ref, v_ref, y_ref, *, k: int, bk: int):
    j = pl.program_id(1)
    bt, bn = y_ref.shape

    def body(s, acc):
        r = rows_ref[j, s]
        xt = x_ref[:, pl.ds(pl.multiple_of(r * bk, bk), bk)]
        return acc + jnp.dot(xt, v_ref[s], preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, k, body, jnp.zeros((bt, bn), jnp.float32))
    y_ref[...] = acc.astype(y_ref.dtype)


def forward(x2, values, rows, *, interpret: bool = False, tile: int | None = None):
    """y (T, nc * bn) = x2 @ W from x2 (T, nr * bk), values (nc, k, bk, bn), rows (nc, k) int32."""
    t, n_in = x2.shape
    nc, k, bk, bn = values.shape
    bt = _token_tile(t, tile)
    xp = _pad_tokens(x2, bt)
    tp = xp.shape[0]
    y = pl.pallas_call(
        functools.partial(_forward_kernel, k=k, bk=bk),
        grid=(tp // bt, nc),
        in_specs=[
            pl.BlockSpec((nc, k), lambda i, j: (0, 0)),
            pl.BlockSpec((bt, n_in), lambda i, j: (i, 0)),
            pl.BlockSpec((None, k, bk, bn), lambda i, j: (j, 0, 0, 0)),
        ],
        out_specs=pl.BlockSpec((bt, bn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((tp, nc * bn), x2.dtype),
        compiler_params=_params(interpret, bt, (bk, bn)),
        interpret=interpret,
        name="block_sparse_forward",
    )(rows.astype(jnp.int32), xp, values)
    return y[:t]


def transposed_layout(rows, n_row_blocks: int):
    """CSR of the stored blocks by input row: (row_ptr (nr + 1,), block_ids (nc * k,)) int32.

    block_ids[row_ptr[r]:row_ptr[r + 1]] are the flat ids j * k + s of the blocks stored in input
    block-row r, ascending. Works with traced rows (stable argsort on device).
    """
    flat = rows.reshape(-1).astype(jnp.int32)
    ids = jnp.argsort(flat, stable=True).astype(jnp.int32)
    counts = jnp.zeros((n_row_blocks,), jnp.int32).at[flat].add(1)
    row_ptr = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(counts).astype(jnp.int32)])
    return row_ptr, ids


def _dx_kernel(ptr_ref, ids_ref, dy_ref, v_ref, dx_ref, *, k: int, bn: int):
    r = pl.program_id(1)
    bt, bk = dx_ref.shape

    def body(p, acc):
        b = ids_ref[p]
        g = dy_ref[:, pl.ds(pl.multiple_of((b // k) * bn, bn), bn)]
        w = v_ref[b]
        return acc + lax.dot_general(g, w, (((1,), (1,)), ((), ())),
                                     preferred_element_type=jnp.float32)

    acc = lax.fori_loop(ptr_ref[r], ptr_ref[r + 1], body, jnp.zeros((bt, bk), jnp.float32))
    dx_ref[...] = acc.astype(dx_ref.dtype)


def _dvalues_kernel(rows_ref, x_ref, dy_ref, dw_ref, *, bt: int, n_tiles: int):
    j, s = pl.program_id(0), pl.program_id(1)
    bk, bn = dw_ref.shape
    r = rows_ref[j, s]

    def body(i, acc):
        rows_i = pl.ds(pl.multiple_of(i * bt, bt), bt)
        xt = x_ref[rows_i, pl.ds(pl.multiple_of(r * bk, bk), bk)]
        g = dy_ref[rows_i, pl.ds(pl.multiple_of(j * bn, bn), bn)]
        return acc + lax.dot_general(xt, g, (((0,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, n_tiles, body, jnp.zeros((bk, bn), jnp.float32))
    dw_ref[...] = acc.astype(dw_ref.dtype)


def backward(x2, values, rows, dy, *, interpret: bool = False, tile: int | None = None):
    """(dx (T, in), dvalues (nc, k, bk, bn)) of y = forward(x2, values, rows) for cotangent dy.

    dy (T, out) is cast to x2's dtype; both results accumulate in float32 and come back in
    x2's dtype. Any layout (per-input-row counts need not be equal).
    """
    t, n_in = x2.shape
    nc, k, bk, bn = values.shape
    nr, n_out = n_in // bk, nc * bn
    bt = _token_tile(t, tile)
    xp = _pad_tokens(x2, bt)
    dyp = _pad_tokens(dy.astype(x2.dtype), bt)  # padded rows are zero: they add nothing to dvalues
    tp = xp.shape[0]
    rows = rows.astype(jnp.int32)
    row_ptr, ids = transposed_layout(rows, nr)
    vflat = values.reshape(nc * k, bk, bn)
    dx = pl.pallas_call(
        functools.partial(_dx_kernel, k=k, bn=bn),
        grid=(tp // bt, nr),
        in_specs=[
            pl.BlockSpec((nr + 1,), lambda i, r: (0,)),
            pl.BlockSpec((nc * k,), lambda i, r: (0,)),
            pl.BlockSpec((bt, n_out), lambda i, r: (i, 0)),
            pl.BlockSpec((nc * k, bk, bn), lambda i, r: (0, 0, 0)),
        ],
        out_specs=pl.BlockSpec((bt, bk), lambda i, r: (i, r)),
        out_shape=jax.ShapeDtypeStruct((tp, n_in), x2.dtype),
        compiler_params=_params(interpret, bt, (bk, bn)),
        interpret=interpret,
        name="block_sparse_dx",
    )(row_ptr, ids, dyp, vflat)
    dvalues = pl.pallas_call(
        functools.partial(_dvalues_kernel, bt=bt, n_tiles=tp // bt),
        grid=(nc, k),
        in_specs=[
            pl.BlockSpec((nc, k), lambda j, s: (0, 0)),
            pl.BlockSpec((tp, n_in), lambda j, s: (0, 0)),
            pl.BlockSpec((tp, n_out), lambda j, s: (0, 0)),
        ],
        out_specs=pl.BlockSpec((None, None, bk, bn), lambda j, s: (j, s, 0, 0)),
        out_shape=jax.ShapeDtypeStruct(values.shape, x2.dtype),
        compiler_params=_params(interpret, bt, (bk, bn)),
        interpret=interpret,
        name="block_sparse_dvalues",
    )(rows, xp, dyp)
    return dx[:t], dvalues
