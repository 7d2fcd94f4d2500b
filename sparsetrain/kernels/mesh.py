"""The compiled kernels on every device of a mesh: `jax.shard_map` around each custom call.

A custom call (the compiled CPU kernels of ffi.py, the Pallas kernels) has no partitioning rule:
under a mesh, XLA's sharding propagation (GSPMD) cannot split it and would run it whole on every
device. So each kernel call traced while a mesh is in force (`with jax.set_mesh(mesh):`, read at
trace time from `jax.sharding.get_abstract_mesh()`, no argument threaded through the model) runs
inside a shard_map: every device calls the kernel on its own shard, with explicit collectives.

The mesh axes have fixed roles (the same names as `training.sharding`'s mesh):

- `data` and `fsdp` split the batch (tokens of a linear, sequences of attention);
- `fsdp` also splits the stored blocks of a block-sparse weight (its block-column axis): the
  forward and backward all-gather them over `fsdp`, the backward reduce-scatters dvalues over
  `fsdp` (psum_scatter) and sums them over `data` (psum);
- `tensor` splits a block-sparse weight's block-columns (each device computes its output columns
  from the whole input, whose dx contributions are summed over `tensor`) and attention's heads.

An axis is used for a dimension only when its size divides it (`split_axes`, the rule the
parameter shardings follow too); otherwise the dimension is whole on every device of that axis
and they compute the same thing. Axes of size 1, axes of other names and axes already manual
(inside an enclosing shard_map) are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import jax
from jax import lax
from jax.sharding import AxisType, PartitionSpec as P

DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
AXES = (DATA, FSDP, TENSOR)
BATCH_AXES = (DATA, FSDP)
COLUMN_AXES = (TENSOR, FSDP)  # tensor major: gathering over fsdp gives one tensor shard's columns


def split_axes(dim: int, names: Sequence[str], sizes: Mapping[str, int]) -> tuple[str, ...]:
    """The axes of `names` (in order) that split a dimension of `dim`: each of size > 1 and the
    product of those kept so far dividing `dim`; the others leave it whole."""
    kept, size = [], 1
    for name in names:
        n = sizes.get(name, 1)
        if n > 1 and dim % (size * n) == 0:
            kept.append(name)
            size *= n
    return tuple(kept)


def mesh_axes() -> dict[str, int]:
    """name -> size of the axes of the mesh in force that a kernel call may split over: the
    `data`, `fsdp` and `tensor` axes of size > 1 not already manual. Empty without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return {}
    manual = set(mesh.manual_axes)
    return {n: s for n, s in mesh.shape.items() if n in AXES and s > 1 and n not in manual}


def describe(axes: Mapping[str, int]) -> str:
    """'on each of 8 devices (shard_map over data x fsdp x tensor)' for these axes."""
    n = 1
    for s in axes.values():
        n *= s
    return f"on each of {n} devices (shard_map over {' x '.join(axes)})"


def _entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


@dataclass(frozen=True)
class BlockSparseSplit:
    """How one block-sparse product x2 (T, in) @ W (values (nc, k, bk, bn)) is split: the axes
    splitting T (`batch`) and the block-columns nc (`columns`)."""

    batch: tuple[str, ...]
    columns: tuple[str, ...]

    @classmethod
    def of(cls, tokens: int, n_col_blocks: int, axes: Mapping[str, int]) -> "BlockSparseSplit":
        return cls(split_axes(tokens, BATCH_AXES, axes), split_axes(n_col_blocks, COLUMN_AXES, axes))

    @property
    def used(self) -> frozenset[str]:
        return frozenset(self.batch + self.columns)

    def specs(self):
        """PartitionSpecs of x2, values, rows and y (dx, dvalues, dy are like x2, values, y)."""
        cols, batch = _entry(self.columns), _entry(self.batch)
        out = TENSOR if TENSOR in self.columns else None
        return P(batch, None), P(cols, None, None, None), P(cols, None), P(batch, out)

    def _gathered(self, values, rows):
        if FSDP in self.columns:
            values = lax.all_gather(values, FSDP, axis=0, tiled=True)
            rows = lax.all_gather(rows, FSDP, axis=0, tiled=True)
        return values, rows

    def forward(self, call: Callable) -> Callable:
        """call(x2, values, rows) -> y on one device's shard, as a function of the global arrays."""
        x_spec, v_spec, r_spec, y_spec = self.specs()

        def local(x2, values, rows):
            return call(x2, *self._gathered(values, rows))

        return jax.shard_map(local, in_specs=(x_spec, v_spec, r_spec), out_specs=y_spec,
                             axis_names=set(self.used), check_vma=False)

    def backward(self, call: Callable) -> Callable:
        """call(x2, values, rows, dy) -> (dx, dvalues) per shard, with the sums over shards:
        dx over `tensor` (each device held some columns), dvalues over the batch axes
        (reduce-scattered over `fsdp` when values are stored split over it)."""
        x_spec, v_spec, r_spec, y_spec = self.specs()

        def local(x2, values, rows, dy):
            full_values, full_rows = self._gathered(values, rows)
            dx, dw = call(x2, full_values, full_rows, dy)
            if TENSOR in self.columns:
                dx = lax.psum(dx, TENSOR)
            for name in self.batch:
                if name == FSDP and FSDP in self.columns:
                    dw = lax.psum_scatter(dw, FSDP, scatter_dimension=0, tiled=True)
                else:
                    dw = lax.psum(dw, name)
            if FSDP in self.columns and FSDP not in self.batch:  # whole sum here: keep our part
                dw = lax.dynamic_slice_in_dim(dw, lax.axis_index(FSDP) * values.shape[0],
                                              values.shape[0], axis=0)
            return dx, dw

        return jax.shard_map(local, in_specs=(x_spec, v_spec, r_spec, y_spec),
                             out_specs=(x_spec, v_spec), axis_names=set(self.used), check_vma=False)


@dataclass(frozen=True)
class AttentionSplit:
    """How causal attention on (B, T, heads, head_dim) is split: the axes splitting B (`batch`)
    and the heads (`heads`). Every (sequence, head) is independent: no collectives."""

    batch: tuple[str, ...]
    heads: tuple[str, ...]

    @classmethod
    def of(cls, batch: int, heads: int, axes: Mapping[str, int]) -> "AttentionSplit":
        return cls(split_axes(batch, BATCH_AXES, axes), split_axes(heads, (TENSOR,), axes))

    def map(self, fn: Callable, ins: Sequence[str], outs: Sequence[str]) -> Callable:
        """fn over shards; `ins` and `outs` name each argument's and output's layout: 'bthd'
        (B, T, heads, head_dim), 'bt3hd' (B, T, 3, heads, head_dim: q, k, v packed) or 'bht'
        (B, heads, T: the log-sum-exp)."""
        b, h = _entry(self.batch), _entry(self.heads)
        spec = {"bthd": P(b, None, h, None), "bt3hd": P(b, None, None, h, None), "bht": P(b, h, None)}
        return jax.shard_map(fn, in_specs=tuple(spec[i] for i in ins),
                             out_specs=tuple(spec[o] for o in outs),
                             axis_names=set(self.batch + self.heads), check_vma=False)
