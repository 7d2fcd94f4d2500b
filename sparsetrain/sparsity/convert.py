"""Move a trained GPT between dense and block-sparse storage: one-shot pruning and densifying.

`convert_state(src, src_kinds, dst, dst_kinds, magnitude)` maps a train state onto another
model of the same shape whose linears differ in storage:

- sparse -> dense: `values_to_dense` (zeros at unstored blocks, the same function);
- dense -> sparse: each column keeps the k blocks of largest norm (`magnitude=True`, one-shot
  magnitude pruning) or the destination's own layout, and `dense_to_values` takes them;
- sparse -> sparse: densify, then as dense -> sparse.

The optimizer state is carried the same way for any Optax state: a leaf whose trailing dict keys
are `layers/<kind>/kernel|values` is converted like the parameter (weights the source did not
store get the layer's mean of that leaf, see `_fill_unstored`); any other leaf is copied when the
source has it at the same path with the same shape, else keeps its fresh initial value.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparsetrain.sparsity.layout import dense_to_values, layout_to_mask
from sparsetrain.sparsity.patterns import magnitude as magnitude_layout
from sparsetrain.sparsity.resolve import KindSparsity
from sparsetrain.sparsity.schedule import LAYERS, _dict_suffix, densify_stacked

_STORAGE = ("kernel", "values")


def _dense_weights(params: dict, indices: dict, kinds: dict[str, KindSparsity], kind: str, leaf=None):
    """The (L, n_in, n_out) dense weight of `kind` (or of an optimizer leaf shaped like it)."""
    p = params[LAYERS][kind]
    x = leaf if leaf is not None else p.get("values", p.get("kernel"))
    if kind in kinds:
        return densify_stacked(x, indices[LAYERS][kind]["row_indices"], kinds[kind])
    return x


def _to_storage(w, rows, info: KindSparsity | None):
    """Dense (L, n_in, n_out) -> the destination's storage of it (kernel or stacked values)."""
    if info is None:
        return w
    return jax.vmap(lambda wl, r: dense_to_values(wl, info.layout(r)))(w, rows)


def magnitude_rows(w, info: KindSparsity) -> jax.Array:
    """Per layer, the k_stored blocks of largest norm in each column: int32 (L, nc, k)."""
    density = info.k_stored / info.n_row_blocks
    return jnp.stack([magnitude_layout(wl, (info.block, info.block), density).row_indices for wl in w])


def convert_state(src: dict, src_kinds: dict[str, KindSparsity], dst: dict, dst_kinds: dict[str, KindSparsity],
                  magnitude: bool) -> dict:
    """`dst` (a freshly initialised state of the destination model) filled from `src`.

    Runs as one jitted program (eagerly, every small op would compile on its own).

    Args:
      src: the source train state {"params", "indices", "opt_state", "step", "rng", ...}.
      src_kinds, dst_kinds: the sparse linear kinds of each model (dense kinds are absent).
      dst: a fresh state of the destination model (its layout is used unless `magnitude`).
      magnitude: choose the destination's stored blocks by magnitude of the source weights.

    Returns:
      The destination state: converted params and optimizer state, the source's step and rng,
      the destination's other entries (e.g. a fresh flow state).
    """
    return jax.jit(lambda s, d: _convert(s, src_kinds, d, dst_kinds, magnitude))(src, dst)


def _convert(src, src_kinds, dst, dst_kinds, magnitude):
    params, indices = dict(dst["params"]), dict(dst["indices"])
    layers, idx_layers = dict(params[LAYERS]), dict(indices.get(LAYERS, {}))
    rows = {}
    for kind in src["params"][LAYERS]:
        if not isinstance(src["params"][LAYERS][kind], dict):
            continue
        w = _dense_weights(src["params"], src["indices"], src_kinds, kind)
        info = dst_kinds.get(kind)
        if info is not None:
            rows[kind] = magnitude_rows(w, info) if magnitude else dst["indices"][LAYERS][kind]["row_indices"]
            idx_layers[kind] = {"row_indices": rows[kind]}
        storage = "values" if info is not None else "kernel"
        layers[kind] = {storage: _to_storage(w, rows.get(kind), info), "bias": src["params"][LAYERS][kind]["bias"]}
    for name, leaf in src["params"][LAYERS].items():
        if not isinstance(leaf, dict):
            layers[name] = leaf
    params.update({k: v for k, v in src["params"].items() if k != LAYERS})
    params[LAYERS] = layers
    if idx_layers:
        indices[LAYERS] = idx_layers
    _check_same_shapes(params, dst["params"])

    src_leaves = {jax.tree_util.keystr(p): l
                  for p, l in jax.tree_util.tree_leaves_with_path(src["opt_state"])}

    def carry(path, template):
        suffix = _dict_suffix(path)
        key = jax.tree_util.keystr(path)
        if len(suffix) >= 3 and suffix[-3] == LAYERS and suffix[-1] in _STORAGE:
            kind = suffix[-2]
            src_storage = "values" if kind in src_kinds else "kernel"
            src_key = key[: key.rfind("[")] + f"['{src_storage}']"
            if src_key in src_leaves:
                leaf = src_leaves[src_key]
                w = _dense_weights(src["params"], src["indices"], src_kinds, kind, leaf)
                if kind in src_kinds:
                    w = _fill_unstored(w, leaf, src["indices"][LAYERS][kind]["row_indices"], src_kinds[kind])
                return _to_storage(w, rows.get(kind), dst_kinds.get(kind)).astype(template.dtype)
            return template
        old = src_leaves.get(key)
        if old is not None and getattr(old, "shape", None) == getattr(template, "shape", None):
            return old
        return template

    opt_state = jax.tree_util.tree_map_with_path(carry, dst["opt_state"])
    return {**dst, "params": params, "indices": indices, "opt_state": opt_state,
            "step": src["step"], "rng": src["rng"]}


def _fill_unstored(dense, leaf, rows, info: KindSparsity):
    """Optimizer state of weights the source did not store: the layer's mean over stored blocks.

    Zero moments with the optimizer's step count far from 0 make Adam-like updates of the new
    weights large and all of one sign (a loss spike after densifying); the layer mean gives
    them the scale the stored weights' statistics have (for signed moments it is about 0).
    """
    mean = leaf.mean(axis=tuple(range(1, leaf.ndim)))                       # (L,)
    mask = jax.vmap(lambda r: layout_to_mask(info.layout(r)))(rows)        # (L, nr, nc) blocks
    b = info.block
    stored = jnp.repeat(jnp.repeat(mask, b, axis=1), b, axis=2)            # (L, n_in, n_out)
    return jnp.where(stored, dense, mean[:, None, None].astype(dense.dtype))


def _check_same_shapes(new: Any, template: Any) -> None:
    bad = [jax.tree_util.keystr(p) for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(new),
                                                         jax.tree.leaves(template)) if a.shape != b.shape]
    if bad or jax.tree.structure(new) != jax.tree.structure(template):
        raise ValueError(f"sparsity.init_from: the source model's shapes differ from this recipe's at "
                         f"{bad or 'the tree structure'}; only the storage of the linears may differ")
