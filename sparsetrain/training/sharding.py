"""Placing the train state and batches on a device mesh with JAX's own sharding machinery.

The mesh has three named axes, `data` (replicas), `fsdp` (parameters and optimizer state split
across devices, gathered per layer by XLA) and `tensor` (attention heads and MLP width split
across devices). Rules map each parameter, by name and shape, to a `PartitionSpec`:

    embeddings wte (V, d), wpe (C, d)        -> (fsdp, None)
    column-parallel kernels qkv, mlp_up      -> (layer, fsdp, tensor)       (L, in, out)
    row-parallel kernels attn_out, mlp_down  -> (layer, tensor, fsdp)
    sparse values (L, n_col_blocks, k, bk, bn) and row_indices (L, n_col_blocks, k)
                                             -> output block-columns over (tensor, fsdp)
    biases of column-parallel linears (L, out) -> (layer, tensor); everything else replicated

An axis whose size does not divide a dimension is dropped from that dimension's spec (the
dimension is replicated over it; `kernels.mesh.split_axes`), so every preset shards on every
mesh. Optimizer moments follow their parameter (same tree paths). Batches split their leading
axis over data x fsdp. Many hosts: the same code after `jax.distributed.initialize()`.

The sparse specs are the ones the compiled kernels take under the mesh (`kernels.mesh`, in force
with `jax.set_mesh(mesh)` while a step is traced): block-columns tensor-major, so all-gathering a
weight over fsdp gives each device its tensor shard's columns. Every sparse linear, row-parallel
ones included, is split by output block-columns over tensor: a split of its input rows would give
each device a data-dependent number of stored blocks. Their input is gathered over tensor instead
of their output summed over it (the dense row-parallel kernels keep the psum).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from sparsetrain.kernels.mesh import AXES, split_axes

COLUMN_PARALLEL = ("qkv", "mlp_up")
ROW_PARALLEL = ("attn_out", "mlp_down")


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    need = data * fsdp * tensor
    if need != len(devices):
        raise ValueError(f"mesh: data*fsdp*tensor = {data}*{fsdp}*{tensor} = {need} is not allowed; "
                         f"it must equal the number of devices, {len(devices)}")
    # Auto axes: XLA's sharding propagation places the intermediates (GSPMD).
    return jax.make_mesh((data, fsdp, tensor), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def spec_for(path_names: list[str], shape: tuple[int, ...], mesh: Mesh) -> P:
    """PartitionSpec of one parameter (or optimizer moment) from its tree path and shape."""
    leaf = path_names[-1] if path_names else ""
    kind = next((n for n in path_names if n in COLUMN_PARALLEL + ROW_PARALLEL), None)
    wanted: tuple = ()
    if leaf in ("wte", "wpe"):
        wanted = ("fsdp", None)
    elif leaf == "kernel" and len(shape) == 3:
        wanted = (None, "fsdp", "tensor") if kind in COLUMN_PARALLEL else (None, "tensor", "fsdp")
    elif leaf in ("values", "row_indices"):
        wanted = (None, ("tensor", "fsdp"))
    elif leaf == "bias" and kind in COLUMN_PARALLEL and len(shape) == 2:
        wanted = (None, "tensor")
    return _fit(wanted, shape, mesh)


def _fit(wanted: tuple, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drop mesh axes that do not divide their dimension; pad the spec to the rank."""
    out = []
    for dim, axes in zip(shape, wanted + (None,) * (len(shape) - len(wanted))):
        names = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
        kept = split_axes(dim, names, mesh.shape)
        out.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return P(*out)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedSharding for every array leaf of a params / optimizer-state / train-state pytree."""
    def one(path, x):
        shape = tuple(getattr(x, "shape", ()))
        return NamedSharding(mesh, spec_for(_path_names(path), shape, mesh))
    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches (B, T): the batch axis split over data x fsdp, tokens replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), None))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    replicas = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % replicas:
        raise ValueError(f"data.batch_size: {batch_size} is not allowed; it must be divisible by "
                         f"mesh data*fsdp = {replicas}")


def per_device_bytes(tree: Any, shardings: Any) -> int:
    """Largest per-device bytes of `tree` (arrays or ShapeDtypeStructs) under `shardings`."""
    totals: dict[int, int] = {}
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shard = s.shard_shape(tuple(x.shape))
        nbytes = int(np.prod(shard)) * np.dtype(x.dtype).itemsize
        for d in s.mesh.devices.flat:
            totals[d.id] = totals.get(d.id, 0) + nbytes
    return max(totals.values()) if totals else 0
