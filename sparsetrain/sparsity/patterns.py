"""Block mask generators. Each returns a balanced BlockLayout (same block count per column).

`density` is a fraction in (0, 1]; it is rounded to whole blocks per column, and the actual
value is `layout.density`. Pick a pattern by name with `make_layout`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from sparsetrain.sparsity.layout import BlockLayout, blocks_per_column, check_block_shape


def _grid(shape, block):
    check_block_shape(shape, block)
    return shape[0] // block[0], shape[1] // block[1]


def random_balanced(key, shape, block, density) -> BlockLayout:
    """Random blocks, k per column, and as even as possible per input block-row.

    Columns are filled one after the other; each takes the k rows used least so far, ties broken
    at random. Row counts therefore never differ by more than one, so the transposed layout is
    balanced too. Jittable in `key`.
    """
    nr, nc = _grid(shape, block)
    k = blocks_per_column(nr, density)
    rows = _random_balanced_rows(key, nr, nc, k)
    return BlockLayout(rows, tuple(shape), tuple(block))


@partial(jax.jit, static_argnums=(1, 2, 3))
def _random_balanced_rows(key, nr: int, nc: int, k: int) -> jax.Array:
    """int32 (nc, k): per column, the k least-used rows so far (ties at random), sorted.

    Jitted once per grid shape: an un-jitted scan would be re-traced on every call.
    """

    def pick(counts, col_key):
        score = counts + jax.random.uniform(col_key, (nr,))
        _, rows = jax.lax.top_k(-score, k)
        return counts.at[rows].add(1.0), jnp.sort(rows)

    _, rows = jax.lax.scan(pick, jnp.zeros((nr,)), jax.random.split(key, nc))
    return rows.astype(jnp.int32)


def magnitude(weight, block, density) -> BlockLayout:
    """The k blocks of largest Frobenius norm in each column of a dense `weight` (in, out)."""
    shape = tuple(weight.shape)
    nr, nc = _grid(shape, block)
    k = blocks_per_column(nr, density)
    w = jnp.asarray(weight, jnp.float32).reshape(nr, block[0], nc, block[1])
    norms = jnp.sum(w * w, axis=(1, 3))  # (nr, nc); squared norm ranks the same
    _, rows = jax.lax.top_k(norms.T, k)
    return BlockLayout(jnp.sort(rows, axis=1).astype(jnp.int32), shape, tuple(block))


def butterfly(shape, block, density) -> BlockLayout:
    """Deterministic flat block butterfly (pixelfly-style).

    Column j is anchored at the diagonal row r = j * nr // nc and takes the rows r XOR 2^s for
    s = 0, 1, 2, ... (the union of butterfly factors); if those run out before k, it continues
    with the rows after r, cyclically.
    """
    nr, nc = _grid(shape, block)
    k = blocks_per_column(nr, density)
    rows = np.empty((nc, k), np.int32)
    for j in range(nc):
        r = j * nr // nc
        chosen = [r]
        s = 0
        while len(chosen) < k and (1 << s) < 2 * nr:
            cand = r ^ (1 << s)
            if cand < nr and cand not in chosen:
                chosen.append(cand)
            s += 1
        t = 1
        while len(chosen) < k:
            cand = (r + t) % nr
            if cand not in chosen:
                chosen.append(cand)
            t += 1
        rows[j] = sorted(chosen)
    return BlockLayout(jnp.asarray(rows), tuple(shape), tuple(block))


def dense(shape, block) -> BlockLayout:
    """Every block stored (density 1)."""
    nr, nc = _grid(shape, block)
    rows = np.broadcast_to(np.arange(nr, dtype=np.int32), (nc, nr))
    return BlockLayout(jnp.asarray(rows), tuple(shape), tuple(block))


LAYOUT_BUILDERS = {
    "random_balanced": random_balanced,
    "magnitude": magnitude,
    "butterfly": butterfly,
    "dense": dense,
}


def make_layout(pattern: str, shape, block, density, *, key=None, weight=None) -> BlockLayout:
    """Layout by pattern name ('random_balanced' or 'random-balanced', 'magnitude', ...).

    Args:
      pattern: a key of LAYOUT_BUILDERS (hyphens and underscores are interchangeable).
      shape: (in_features, out_features).
      block: (bk, bn).
      density: fraction of blocks to store, in (0, 1]; must be 1 for 'dense'.
      key: jax PRNG key, required by 'random_balanced'.
      weight: dense (in, out) weight, required by 'magnitude'.
    """
    name = str(pattern).replace("-", "_")
    if name not in LAYOUT_BUILDERS:
        raise ValueError(f"pattern: {pattern!r} is not allowed; expected one of {sorted(LAYOUT_BUILDERS)}")
    shape, block = tuple(shape), tuple(block)
    if name == "random_balanced":
        if key is None:
            raise ValueError("key: None is not allowed for pattern 'random_balanced'; pass a jax PRNG key")
        return random_balanced(key, shape, block, density)
    if name == "magnitude":
        if weight is None or tuple(weight.shape) != shape:
            got = None if weight is None else tuple(weight.shape)
            raise ValueError(f"weight: shape {got} is not allowed for pattern 'magnitude'; expected {shape}")
        return magnitude(weight, block, density)
    if name == "butterfly":
        return butterfly(shape, block, density)
    if float(density) != 1.0:
        raise ValueError(f"density: {density} is not allowed for pattern 'dense'; expected 1.0")
    return dense(shape, block)
