"""BlockLayout: which blocks of one block-sparse weight are stored.

A weight of shape (in_features, out_features) is cut into blocks of (bk, bn). Every output
block-column j stores the same number k of blocks (balanced), so the stored values always have
the shape (n_col_blocks, k, bk, bn) and the layout is one int32 array
`row_indices[j] = sorted input block-rows stored in column j`. That array is a pytree leaf:
prune/regrow changes its contents, never its shape, and nothing recompiles.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

MIN_BLOCK = 16
MAX_BLOCK = 256


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["row_indices"], meta_fields=["shape", "block"]
)
@dataclasses.dataclass(frozen=True, eq=False)
class BlockLayout:
    """Static structure of one block-sparse weight.

    Attributes:
      row_indices: int32 (n_col_blocks, blocks_per_col); for each output block-column, the sorted
        input block-row indices of its stored blocks. The only pytree leaf.
      shape: (in_features, out_features) of the dense weight. Static.
      block: (bk, bn) block shape. Static.
    """

    row_indices: jax.Array
    shape: tuple[int, int]
    block: tuple[int, int]

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "block", tuple(int(b) for b in self.block))
        check_block_shape(self.shape, self.block)
        ri = self.row_indices
        # Pytree unflattening may pass placeholders (None, sharding specs); only check arrays.
        if isinstance(ri, (np.ndarray, jax.Array)):
            if ri.ndim != 2 or ri.shape[0] != self.n_col_blocks:
                raise ValueError(
                    f"row_indices: shape {ri.shape} is not allowed; expected "
                    f"(n_col_blocks={self.n_col_blocks}, blocks_per_col)"
                )
            if not 1 <= ri.shape[1] <= self.n_row_blocks:
                raise ValueError(
                    f"row_indices: {ri.shape[1]} blocks per column is not allowed; "
                    f"expected 1..{self.n_row_blocks}"
                )

    @property
    def n_row_blocks(self) -> int:
        return self.shape[0] // self.block[0]

    @property
    def n_col_blocks(self) -> int:
        return self.shape[1] // self.block[1]

    @property
    def blocks_per_col(self) -> int:
        return int(self.row_indices.shape[1])

    @property
    def density(self) -> float:
        """Actual fraction of stored weights (after rounding to whole blocks)."""
        return self.blocks_per_col / self.n_row_blocks

    @property
    def values_shape(self) -> tuple[int, int, int, int]:
        return (self.n_col_blocks, self.blocks_per_col, *self.block)

    @property
    def nnz(self) -> int:
        """Number of stored weights."""
        return self.n_col_blocks * self.blocks_per_col * self.block[0] * self.block[1]


def check_block_shape(shape, block) -> None:
    """Raise ValueError unless `block` tiles the weight `shape` with allowed block sizes."""
    if len(tuple(shape)) != 2 or any(int(s) <= 0 for s in shape):
        raise ValueError(f"shape: {tuple(shape)} is not allowed; expected (in_features, out_features) > 0")
    if len(tuple(block)) != 2:
        raise ValueError(f"block: {tuple(block)} is not allowed; expected (bk, bn)")
    for name, b, s in (("bk", block[0], shape[0]), ("bn", block[1], shape[1])):
        if not MIN_BLOCK <= int(b) <= MAX_BLOCK:
            raise ValueError(
                f"block: {name}={b} is not allowed; block sizes must be in {MIN_BLOCK}..{MAX_BLOCK}"
            )
        if int(s) % int(b):
            raise ValueError(
                f"block: {name}={b} does not divide the weight dimension {s} of shape "
                f"{tuple(shape)}; choose a block size that divides it"
            )


def blocks_per_column(n_row_blocks: int, density: float) -> int:
    """Number of stored blocks per column for `density` (rounded to the nearest whole block)."""
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density: {density} is not allowed; expected 0 < density <= 1")
    k = min(n_row_blocks, int(np.floor(n_row_blocks * density + 0.5)))
    if k < 1:
        raise ValueError(
            f"density: {density} leaves no block in a column of {n_row_blocks} blocks; "
            f"the smallest allowed density is about {1 / n_row_blocks:.4g} (one block per column)"
        )
    return k


def layout_from_mask(block_mask, block) -> BlockLayout:
    """BlockLayout from a concrete bool mask of shape (n_row_blocks, n_col_blocks)."""
    mask = np.asarray(block_mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"block_mask: ndim {mask.ndim} is not allowed; expected 2")
    counts = mask.sum(axis=0)
    if counts.min() != counts.max() or counts.min() == 0:
        raise ValueError(
            f"block_mask: column block counts {sorted(set(counts.tolist()))} are not allowed; "
            "every column must store the same number (>= 1) of blocks"
        )
    k = int(counts[0])
    # Stable argsort of ~mask puts stored rows first, in ascending order.
    rows = np.argsort(~mask, axis=0, kind="stable")[:k].T.astype(np.int32)
    shape = (mask.shape[0] * int(block[0]), mask.shape[1] * int(block[1]))
    return BlockLayout(jnp.asarray(rows), shape, tuple(block))


def layout_to_mask(layout: BlockLayout) -> jax.Array:
    """Bool mask (n_row_blocks, n_col_blocks); works with traced row_indices."""
    cols = jnp.arange(layout.n_col_blocks)[:, None]
    mask = jnp.zeros((layout.n_row_blocks, layout.n_col_blocks), bool)
    return mask.at[layout.row_indices, cols].set(True)


def _blocked(w, layout: BlockLayout):
    """(in, out) -> (n_col_blocks, n_row_blocks, bk, bn)."""
    (bk, bn) = layout.block
    w = w.reshape(layout.n_row_blocks, bk, layout.n_col_blocks, bn)
    return w.transpose(2, 0, 1, 3)


def dense_to_values(w, layout: BlockLayout) -> jax.Array:
    """Stored blocks of a dense weight: (in, out) -> (n_col_blocks, k, bk, bn)."""
    if tuple(w.shape) != layout.shape:
        raise ValueError(f"w: shape {tuple(w.shape)} is not allowed; expected {layout.shape}")
    cols = jnp.arange(layout.n_col_blocks)[:, None]
    return _blocked(jnp.asarray(w), layout)[cols, layout.row_indices]


def values_to_dense(values, layout: BlockLayout) -> jax.Array:
    """Dense (in, out) weight with zeros at unstored blocks."""
    if tuple(values.shape) != layout.values_shape:
        raise ValueError(
            f"values: shape {tuple(values.shape)} is not allowed; expected {layout.values_shape}"
        )
    (bk, bn) = layout.block
    cols = jnp.arange(layout.n_col_blocks)[:, None]
    out = jnp.zeros((layout.n_col_blocks, layout.n_row_blocks, bk, bn), values.dtype)
    out = out.at[cols, layout.row_indices].set(values)
    return out.transpose(1, 2, 0, 3).reshape(layout.shape)
