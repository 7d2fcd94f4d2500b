"""Concrete block indices for an estimate: the recipe's own layout, or a run's checkpoint.

The RDU backend prices a block-sparse matmul from its real indices (bank conflicts of its
gathers, the balance of its transposed layout), so `sparsetrain emulate` lowers the step with
concrete `row_indices`, never a stand-in:

- `recipe_indices(spec)`: the layout a run of the recipe starts from, drawn by sparsetrain's
  own pattern code with the recipe's pattern and seed (the keys `gpt.make_layouts` uses; about
  1.5 MB of indices at 13B);
- `run_indices(run_dir)`: the indices a run's newest checkpoint holds (after prune/regrow);
- `with_indices(tree, by_kind)`: an (abstract) indices pytree with those arrays in place.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from sparsetrain.models.family import ModelSpec
from sparsetrain.sparsity import make_layout
from sparsetrain.training.start import restore_run

KEYED_PATTERNS = ("random_balanced",)  # drawn per layer from a key; the others are one layout


def _layer_keys(spec: ModelSpec, i: int):
    """The per-layer keys of linear kind number ``i`` (as `gpt.make_layouts` draws them)."""
    return jax.random.split(jax.random.key(spec.pattern_seed * 7919 + i), spec.shape.n_layers)


def recipe_indices(spec: ModelSpec) -> dict[str, np.ndarray]:
    """kind -> int32 (n_layers, n_col_blocks, k): the recipe's initial layout of every sparse
    linear (the layouts `gpt.make_layouts` draws, layer by layer with the same keys).

    Raises:
        ValueError: a pattern that needs the trained weights ('magnitude'): use a run's
            checkpoint (`run_indices`).
    """
    pattern = str(spec.pattern).replace("-", "_")
    if pattern == "magnitude" and any(lin.sparse for _, lin in spec.linears):
        raise ValueError("sparsity.pattern 'magnitude' needs trained weights to choose its blocks; "
                         "estimate from a run's checkpoint (--from-run RUN)")

    def draw(i: int, lin) -> np.ndarray:
        shape, block = (lin.n_in, lin.n_out), (lin.block, lin.block)
        if pattern not in KEYED_PATTERNS:  # deterministic: the same layout in every layer
            one = np.asarray(make_layout(pattern, shape, block, lin.density).row_indices)
            return np.broadcast_to(one, (spec.shape.n_layers, *one.shape))
        return np.stack([np.asarray(make_layout(pattern, shape, block, lin.density, key=k)
                                    .row_indices) for k in _layer_keys(spec, i)])

    return {kind: np.ascontiguousarray(draw(i, lin), np.int32)
            for i, (kind, lin) in enumerate(spec.linears) if lin.sparse}


def run_indices(run_dir: str | Path) -> tuple[object, dict[str, np.ndarray]]:
    """(recipe, kind -> int32 (n_layers, n_col_blocks, k)) from a run's newest checkpoint."""
    cfg, _, state, _ = restore_run(Path(run_dir))
    return cfg, {kind: np.asarray(v["row_indices"], np.int32)
                 for kind, v in state["indices"].get("layers", {}).items() if "row_indices" in v}


def with_indices(tree, by_kind: dict[str, np.ndarray]):
    """``tree`` (an indices pytree, abstract or not) with every ``[...][kind]['row_indices']``
    leaf replaced by ``by_kind[kind]``.

    Raises:
        ValueError: a row_indices leaf without an array of its shape in ``by_kind``.
    """
    def put(path, leaf):
        keys = [getattr(p, "key", None) for p in path]
        if not keys or keys[-1] != "row_indices":
            return leaf
        kind = keys[-2]
        got = by_kind.get(kind)
        if got is None or tuple(got.shape) != tuple(leaf.shape):
            raise ValueError(f"block indices of {kind!r}: expected shape {tuple(leaf.shape)}, "
                             f"got {None if got is None else tuple(got.shape)}")
        return np.asarray(got, leaf.dtype)

    return jax.tree_util.tree_map_with_path(put, tree)
