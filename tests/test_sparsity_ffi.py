"""The compiled CPU kernel (XLA FFI) equals the pure-JAX kernel and the masked dense matmul.

Forward y, dx and dvalues over block sizes 16..256, rectangular blocks, in != out, densities
from one block per column to dense, unbalanced layouts and leading batch dims; skipped (with the
reason) when the library was not built.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsetrain.sparsity import (
    block_sparse_matmul,
    dense_to_values,
    layout_from_mask,
    random_balanced,
    values_to_dense,
)
from sparsetrain.kernels import ffi
from sparsetrain.kernels.dispatch import kernel_backend, use_kernel_backend

pytestmark = pytest.mark.skipif(not ffi.AVAILABLE, reason=f"compiled kernel {ffi.DESCRIPTION}")

# (tokens, n_row_blocks, n_col_blocks, (bk, bn), blocks per column). All are checked against the
# masked dense matmul; those in PURE_JAX_TOO also against the pure-JAX kernel (whose compile
# takes seconds per shape; the pure-JAX kernel itself is checked against dense in
# test_sparsity_ops.py).
CASES = [
    (37, 3, 5, (16, 16), 1),     # one block per column, tokens not a multiple of the tile
    (64, 4, 2, (32, 64), 2),     # rectangular blocks, in != out
    (50, 2, 3, (64, 32), 2),     # dense (every block stored)
    (96, 6, 4, (64, 64), 3),
    (20, 2, 2, (128, 48), 1),    # columns beyond whole vectors on AVX-512 (48 = 3 x 16)
    (9, 2, 1, (256, 256), 1),
    (33, 3, 2, (24, 40), 2),     # block sizes not multiples of any vector width
]
PURE_JAX_TOO = {0, 1, 6}


def _operands(tokens, nr, nc, block, k, seed=0):
    shape = (nr * block[0], nc * block[1])
    layout = random_balanced(jax.random.PRNGKey(seed), shape, block, k / nr)
    kx, kw, kd = jax.random.split(jax.random.PRNGKey(seed + 1), 3)
    x = jax.random.normal(kx, (tokens, shape[0]), jnp.float32)
    w = jax.random.normal(kw, shape, jnp.float32)
    dy = jax.random.normal(kd, (tokens, shape[1]), jnp.float32)
    return x, dense_to_values(w, layout), layout, dy


def _run(backend, x, values, layout, dy):
    with use_kernel_backend(backend):
        y, vjp = jax.vjp(lambda x, v: block_sparse_matmul(x, v, layout), x, values)
        return (y, *vjp(dy))


def _close(a, b, fan_in):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.sqrt(fan_in))


@pytest.mark.parametrize("i", range(len(CASES)),
                         ids=[f"T{c[0]}-{c[1]}x{c[2]}-b{c[3][0]}x{c[3][1]}-k{c[4]}" for c in CASES])
def test_ffi_equals_masked_dense_and_pure_jax(i):
    tokens = CASES[i][0]
    x, values, layout, dy = _operands(*CASES[i])
    got = _run("ffi", x, values, layout, dy)
    w = values_to_dense(values, layout)
    dense = (x @ w, dy @ w.T, dense_to_values(x.T @ dy, layout))
    fan_in = (w.shape[0], w.shape[1], tokens)
    refs = [dense] + ([_run("jax", x, values, layout, dy)] if i in PURE_JAX_TOO else [])
    for ref in refs:
        for a, b, n in zip(got, ref, fan_in):
            _close(a, b, n)


@pytest.mark.parametrize("threads", [1, 3])
def test_rows_split_over_threads_and_chunks(monkeypatch, threads):
    """Enough tokens that the backward cuts them in chunks (2000: no multiple of the chunk or the
    row tile) and, with 3 participants, sums per-participant partial dvalues."""
    monkeypatch.setattr(ffi, "THREADS", threads)
    jax.clear_caches()  # the kernels' jitted calls read THREADS when traced
    x, values, layout, dy = _operands(2000, 8, 12, (64, 64), 2, seed=5)
    got = _run("ffi", x, values, layout, dy)
    w = values_to_dense(values, layout)
    dense = (x @ w, dy @ w.T, dense_to_values(x.T @ dy, layout))
    for a, b, n in zip(got, dense, (w.shape[0], w.shape[1], 2000)):
        _close(a, b, n)


def test_backward_is_bit_reproducible_on_the_thread_pool():
    """The same call gives the same bits every time: dvalues' per-slice partial sums are added in
    a fixed order, whichever pool thread claimed which rows (XLA's intra-op pool, 2 participants)."""
    x, values, layout, dy = _operands(2048, 8, 16, (64, 64), 1, seed=7)
    first = [np.asarray(a) for a in _run("ffi", x, values, layout, dy)]
    for _ in range(6):
        for a, b in zip(_run("ffi", x, values, layout, dy), first):
            np.testing.assert_array_equal(np.asarray(a), b)


def test_unbalanced_layout_and_leading_dims():
    """Input rows holding unequal block counts (the transposed structure is ragged), x (2, 3, in)."""
    mask = np.zeros((4, 6), bool)
    mask[0, :] = True
    mask[1, :3] = True
    mask[3, 3:] = True  # input block-row 2 stores nothing: its dx columns are zero
    layout = layout_from_mask(mask, (32, 16))
    kx, kw, kd = jax.random.split(jax.random.PRNGKey(3), 3)
    x = jax.random.normal(kx, (2, 3, 128))
    values = dense_to_values(jax.random.normal(kw, (128, 96)), layout)
    dy = jax.random.normal(kd, (2, 3, 96))
    y, dx, dv = _run("ffi", x, values, layout, dy)
    jy, jdx, jdv = _run("jax", x, values, layout, dy)
    for got, ref in ((y, jy), (dx, jdx), (dv, jdv)):
        _close(got, ref, 128)
    assert not np.asarray(dx[..., 64:96]).any()


def test_vmap_and_jit_with_traced_layout():
    x, values, layout, dy = _operands(16, 4, 3, (16, 32), 2)
    xs = jnp.stack([x, 2 * x])
    with use_kernel_backend("ffi"):
        f = jax.jit(jax.vmap(lambda x, v, lay: block_sparse_matmul(x, v, lay), in_axes=(0, None, None)))
        y = f(xs, values, layout)
    w = values_to_dense(values, layout)
    _close(y, jnp.einsum("bti,io->bto", xs, w), 64)


def test_backend_choice():
    # auto: compiled for float32 on one CPU device (a mesh would run the custom call replicated)
    assert kernel_backend(jnp.float32) == ("ffi" if jax.device_count() == 1 else "jax")
    assert kernel_backend(jnp.bfloat16) == "jax"  # bfloat16 keeps the pure-JAX kernel
    with use_kernel_backend("jax"):
        assert kernel_backend(jnp.float32) == "jax"
    with pytest.raises(ValueError, match="kernel backend: 'cuda' is not allowed"):
        with use_kernel_backend("cuda"):
            pass
    x, values, layout, _ = _operands(8, 2, 2, (16, 16), 1)
    jaxpr = str(jax.make_jaxpr(lambda x, v: block_sparse_matmul(x, v, layout))(x, values))
    assert "name=block_sparse_matmul_forward" in jaxpr and "sparsetrain_bsmm_forward" in jaxpr
