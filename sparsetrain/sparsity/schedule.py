"""Sparse training flows: how the block masks of the sparse linears change while training.

A flow is a few pure functions over the train state (the pytree of `training/step.py`), in the style of an
Optax transformation:

    state = flow.init(state)                     # add the flow's own leaves, if it has any
    updates = flow.mask(updates, state)          # in the train step: pruned blocks get no update
    if flow.is_update_step(step):                # host side, plain ints
        state, metrics = flow.update(state, batch)   # jitted; every shape stays the same

Flows (`sparsity.flow`):

- static: the layout drawn at initialisation never changes.
- gradual: magnitude pruning on the cubic schedule of Zhu & Gupta (2017), from
  `initial_density` to the kind's final density between `start_fraction` and `end_fraction` of
  the steps. Shapes cannot change, so each sparse linear stores the blocks of the *initial*
  density all along and `state["flow"]["keep"][kind]` (float 0/1, (L, n_col_blocks, k0)) says
  which are alive. Pruned blocks are zeroed with their optimizer moments and masked out of every
  later update, so they stay exactly zero. The honest price: the matmul still multiplies the
  k0 stored blocks (zeros included), so training FLOPs are those of the initial density.
- prune_regrow: every `update_every` steps until `end_fraction`, in each block-column drop the
  stored blocks of smallest magnitude and grow as many unstored ones (the count per column is
  drop fraction x k, stochastically rounded, so small columns are replaced too), chosen at random (SET,
  Mocanu et al. 2018) or by the block norm of the dense gradient (RigL, Evci et al. 2020). The
  fraction replaced decays with a cosine from `drop_fraction` to 0. The indices change, their
  shape does not: no recompilation. New blocks start at zero with zeroed optimizer moments.

Optimizer moments are found by walking any Optax state: a leaf whose trailing dict keys are the
path of a block-value parameter (`layers/<kind>/values`) and whose shape matches it is treated
as per-block state (Adam's mu and nu, momentum traces, ...). No optimizer is named here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp

from sparsetrain.sparsity.layout import values_to_dense
from sparsetrain.sparsity.resolve import KindSparsity

# The GPT's params pytree is {"layers": {kind: {"values" | "kernel", "bias"}, ...}, "wte", ...}
# and its indices {"layers": {kind: {"row_indices"}}} (see models/gpt.py).
LAYERS = "layers"


# ---------------------------------------------------------------------------------------------
# Schedules (pure, jittable in the step)
# ---------------------------------------------------------------------------------------------
def cubic_density(step, initial: float, final: float, start: int, end: int):
    """Zhu & Gupta's cubic schedule, in density: initial until `start`, final from `end`."""
    frac = jnp.clip((step - start) / max(end - start, 1), 0.0, 1.0)
    return final + (initial - final) * (1.0 - frac) ** 3


def cosine_drop_fraction(step, drop_fraction: float, start: int, end: int):
    """RigL's drop fraction: `drop_fraction` at `start`, decayed by a cosine to 0 at `end`."""
    frac = jnp.clip((step - start) / max(end - start, 1), 0.0, 1.0)
    return 0.5 * drop_fraction * (1.0 + jnp.cos(jnp.pi * frac))


# ---------------------------------------------------------------------------------------------
# Per-block optimizer state, found in any Optax state
# ---------------------------------------------------------------------------------------------
def _dict_suffix(path) -> tuple[str, ...]:
    """The trailing dictionary keys of a pytree path, e.g. ('layers', 'qkv', 'values')."""
    keys = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        keys.append(str(entry.key))
    return tuple(reversed(keys))


def map_block_leaves(tree: Any, kind: str, shape: tuple[int, ...], fn: Callable) -> Any:
    """Apply `fn` to every leaf of `tree` that holds per-block state of `kind`'s values.

    Such a leaf ends its path with the dict keys ('layers', kind, 'values') and has the values'
    `shape`; everything else (step counts, other parameters, factored statistics of another
    shape) is returned unchanged.
    """
    target = (LAYERS, kind, "values")

    def visit(path, leaf):
        if _dict_suffix(path)[-3:] == target and getattr(leaf, "shape", None) == tuple(shape):
            return fn(leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(visit, tree)


def _slot_mask(mask, leaf):
    """(L, nc, k) mask broadcast over the block dims of a (L, nc, k, bk, bn) leaf."""
    return mask.reshape(mask.shape + (1,) * (leaf.ndim - mask.ndim))


# ---------------------------------------------------------------------------------------------
# Flows
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flow:
    """A sparse training flow: pure functions over the train state (see the module docstring)."""

    name: str
    init: Callable[[dict], dict]
    mask: Callable[[Any, dict], Any]
    update: Callable[[dict, dict], tuple[dict, dict]] | None
    is_update_step: Callable[[int], bool]
    update_cost_dense_steps: float = 0.0  # training FLOPs of one update, in dense train steps


def _identity_mask(updates, state):
    return updates


def static_flow() -> Flow:
    """The layout never changes."""
    return Flow("static", init=lambda state: state, mask=_identity_mask, update=None,
                is_update_step=lambda step: False)


def _block_norms(values):
    """(L, nc, k, bk, bn) -> squared Frobenius norm per block (L, nc, k), float32."""
    v = values.astype(jnp.float32)
    return jnp.sum(v * v, axis=(-2, -1))


def _ranks(scores, descending: bool):
    """Rank of each entry along the last axis (0 = first in the order); ties by position."""
    order = jnp.argsort(-scores if descending else scores, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def _window(frac_start: float, frac_end: float, total_steps: int) -> tuple[int, int]:
    start = int(round(frac_start * total_steps))
    return start, max(start + 1, int(round(frac_end * total_steps)))


def gradual_flow(kinds: dict[str, KindSparsity], total_steps: int, start_fraction: float,
                 end_fraction: float, update_every: int) -> Flow:
    """Gradual magnitude pruning of stored blocks, cubic schedule, per-block keep mask in state."""
    start, end = _window(start_fraction, end_fraction, total_steps)

    def init(state):
        keep = {kind: jnp.ones(state["params"][LAYERS][kind]["values"].shape[:3], jnp.float32)
                for kind in kinds}
        return {**state, "flow": {"keep": keep}}

    def mask(updates, state):
        for kind in kinds:
            keep = state["flow"]["keep"][kind]
            updates = map_block_leaves(
                updates, kind, state["params"][LAYERS][kind]["values"].shape,
                lambda u: u * _slot_mask(keep, u).astype(u.dtype))
        return updates

    def update(state, batch):
        del batch
        step = state["step"]
        params, opt_state, keep_all = state["params"], state["opt_state"], dict(state["flow"]["keep"])
        alive, total = 0.0, 0.0
        for kind, info in kinds.items():
            values = params[LAYERS][kind]["values"]
            density = cubic_density(step, info.k_stored / info.n_row_blocks,
                                    info.k_final / info.n_row_blocks, start, end)
            k_t = jnp.clip(jnp.floor(density * info.n_row_blocks + 0.5), info.k_final, info.k_stored)
            keep = keep_all[kind]
            scores = jnp.where(keep > 0, _block_norms(values), -1.0)
            new_keep = (keep > 0) & (_ranks(scores, descending=True) < k_t)
            zero = lambda leaf: leaf * _slot_mask(new_keep, leaf).astype(leaf.dtype)
            params = map_block_leaves(params, kind, values.shape, zero)
            opt_state = map_block_leaves(opt_state, kind, values.shape, zero)
            keep_all[kind] = new_keep.astype(jnp.float32)
            block_size = values.shape[-1] * values.shape[-2]
            alive += new_keep.sum() * block_size
            total += values.shape[0] * values.shape[1] * info.n_row_blocks * block_size
        metrics = {"flow/density": alive / total}
        return {**state, "params": params, "opt_state": opt_state, "flow": {"keep": keep_all}}, metrics

    def is_update_step(step: int) -> bool:
        return start <= step <= end and ((step - start) % update_every == 0 or step == end)

    return Flow("gradual", init=init, mask=mask, update=update, is_update_step=is_update_step)


def densify_stacked(values: jax.Array, rows: jax.Array, info: KindSparsity) -> jax.Array:
    """Stacked block values (L, nc, k, bk, bn) and rows (L, nc, k) -> dense (L, n_in, n_out)."""
    return jax.vmap(lambda v, r: values_to_dense(v, info.layout(r)))(values, rows)


def dense_block_grad_norms(dense_loss: Callable, params: dict, indices: dict, batch: dict,
                           kinds: dict[str, KindSparsity]) -> dict[str, jax.Array]:
    """RigL's grow scores: squared block norms of the dense gradient of every sparse linear.

    The sparse weights are densified (zeros at unstored blocks: the same function) and the loss
    of the dense twin model is differentiated once: one dense forward and backward, paid only at
    mask updates.

    Args:
      dense_loss: (dense_params, batch) -> scalar loss of the same GPT with dense linears.
      params, indices: the sparse model's pytrees.
      kinds: the sparse kinds.

    Returns:
      kind -> (L, n_col_blocks, n_row_blocks) float32.
    """
    layers = dict(params[LAYERS])
    for kind, info in kinds.items():
        p = params[LAYERS][kind]
        layers[kind] = {"kernel": densify_stacked(p["values"], indices[LAYERS][kind]["row_indices"], info),
                        "bias": p["bias"]}
    grads = jax.grad(dense_loss)({**params, LAYERS: layers}, batch)
    out = {}
    for kind, info in kinds.items():
        g = grads[LAYERS][kind]["kernel"].astype(jnp.float32)  # (L, n_in, n_out)
        b = info.block
        g = g.reshape(g.shape[0], info.n_in // b, b, info.n_out // b, b)
        out[kind] = jnp.sum(g * g, axis=(2, 4)).transpose(0, 2, 1)
    return out


def regrow_columns(rows, values_norm, grow_scores, n_drop, max_drop: int):
    """Drop the `n_drop` weakest stored blocks of each column and grow the best unstored ones.

    Args:
      rows: int32 (..., k) sorted stored block-rows of each column.
      values_norm: (..., k) magnitude of each stored block.
      grow_scores: (..., n_row_blocks) score of every block-row (higher grows first).
      n_drop: traced int (broadcast against rows, e.g. (..., 1)), blocks to replace per column,
        <= max_drop.
      max_drop: static bound, <= min(k, n_row_blocks - k).

    Returns:
      (new_rows sorted, perm, replaced): `perm` (..., k) orders the old slots like the new rows
      (take_along_axis with it moves the values); `replaced` (..., k) marks, in the new order,
      the slots holding a newly grown block.
    """
    n_rows = grow_scores.shape[-1]
    drop_rank = _ranks(values_norm, descending=False)            # 0 = weakest
    dropped = drop_rank < n_drop
    stored = jnp.any(rows[..., :, None] == jnp.arange(n_rows), axis=-2)
    scores = jnp.where(stored, -jnp.inf, grow_scores.astype(jnp.float32))
    _, best = jax.lax.top_k(scores, max_drop)                    # (..., max_drop) unstored rows
    grown = jnp.take_along_axis(best, jnp.minimum(drop_rank, max_drop - 1), axis=-1)
    new_rows = jnp.where(dropped, grown.astype(rows.dtype), rows)
    perm = jnp.argsort(new_rows, axis=-1, stable=True)
    return (jnp.take_along_axis(new_rows, perm, axis=-1), perm,
            jnp.take_along_axis(dropped, perm, axis=-1))


def prune_regrow_flow(kinds: dict[str, KindSparsity], total_steps: int, start_fraction: float,
                      end_fraction: float, update_every: int, drop_fraction: float, regrow: str,
                      dense_loss: Callable | None = None) -> Flow:
    """SET (regrow='random') or RigL (regrow='gradient', needs `dense_loss`) at block granularity."""
    if regrow not in ("random", "gradient"):
        raise ValueError(f"regrow: {regrow!r} is not allowed; expected 'random' or 'gradient'")
    if regrow == "gradient" and dense_loss is None:
        raise ValueError("dense_loss: None is not allowed for regrow='gradient' (RigL needs the dense gradient)")
    start, end = _window(start_fraction, end_fraction, total_steps)
    max_drop = {kind: min(info.k_stored, info.n_row_blocks - info.k_stored) for kind, info in kinds.items()}

    def update(state, batch):
        step, params, indices, opt_state = state["step"], state["params"], state["indices"], state["opt_state"]
        alpha = cosine_drop_fraction(step, drop_fraction, start, end)
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
        if regrow == "gradient":
            grow = dense_block_grad_norms(dense_loss, params, indices, batch, kinds)
        layers_idx, replaced_total, stored_total = dict(indices[LAYERS]), 0.0, 0.0
        for i, (kind, info) in enumerate(kinds.items()):
            if max_drop[kind] == 0:
                continue
            values = params[LAYERS][kind]["values"]
            rows = indices[LAYERS][kind]["row_indices"]
            grow_key, round_key = jax.random.split(jax.random.fold_in(key, i))
            scores = grow[kind] if regrow == "gradient" else jax.random.uniform(
                grow_key, rows.shape[:2] + (info.n_row_blocks,))
            # Stochastic rounding per column: E[n_drop] = alpha * k even when k is small.
            n_drop = jnp.floor(alpha * info.k_stored + jax.random.uniform(round_key, rows.shape[:2]))
            n_drop = jnp.minimum(n_drop, max_drop[kind]).astype(jnp.int32)[..., None]
            new_rows, perm, replaced = regrow_columns(rows, _block_norms(values), scores, n_drop, max_drop[kind])

            def move(leaf, perm=perm, replaced=replaced):
                leaf = jnp.take_along_axis(leaf, _slot_mask(perm, leaf), axis=2)
                return jnp.where(_slot_mask(replaced, leaf), jnp.zeros((), leaf.dtype), leaf)

            params = map_block_leaves(params, kind, values.shape, move)
            opt_state = map_block_leaves(opt_state, kind, values.shape, move)
            layers_idx[kind] = {**indices[LAYERS][kind], "row_indices": new_rows}
            replaced_total += replaced.sum()
            stored_total += replaced.size
        metrics = {"flow/replaced_fraction": replaced_total / max(stored_total, 1.0), "flow/drop_fraction": alpha}
        new = {**state, "params": params, "indices": {**indices, LAYERS: layers_idx}, "opt_state": opt_state}
        return new, metrics

    def is_update_step(step: int) -> bool:
        return start < step < end and (step - start) % update_every == 0

    return Flow(f"prune_regrow/{regrow}", init=lambda state: state, mask=_identity_mask,
                update=update, is_update_step=is_update_step,
                update_cost_dense_steps=1.0 if regrow == "gradient" else 0.0)


# ---------------------------------------------------------------------------------------------
# From a recipe
# ---------------------------------------------------------------------------------------------
def sparse_kinds(spec) -> dict[str, KindSparsity]:
    """The sparse linears of a model spec (its `linears` are resolved by `resolve_sparsity`)."""
    return {kind: lin for kind, lin in spec.linears if lin.sparse}


def make_flow(sparsity, spec, total_steps: int, dense_loss: Callable | None = None) -> Flow:
    """The flow a recipe's sparsity section asks for.

    Args:
      sparsity: the recipe's SparsityConfig.
      spec: the GPTSpec being trained (`GPTSpec.from_config(..., stored=True)`).
      total_steps: run.steps, over which the fractions are taken.
      dense_loss: (dense_params, batch) -> loss of the dense twin (RigL's gradient).
    """
    kinds = sparse_kinds(spec)
    if sparsity.flow == "static" or not kinds:
        return static_flow()
    window = (sparsity.start_fraction, sparsity.end_fraction, sparsity.update_every)
    if sparsity.flow == "gradual":
        return gradual_flow(kinds, total_steps, *window)
    if sparsity.flow == "prune_regrow":
        return prune_regrow_flow(kinds, total_steps, *window, sparsity.drop_fraction, sparsity.regrow,
                                 dense_loss)
    raise ValueError(f"sparsity.flow: {sparsity.flow!r} is not allowed; expected static, gradual, prune_regrow")


def pruned_params(state: dict) -> int:
    """Weights stored but pruned (zero, frozen) by a gradual flow; 0 for other flows."""
    pruned = 0
    for kind, keep in state.get("flow", {}).get("keep", {}).items():
        bk, bn = state["params"][LAYERS][kind]["values"].shape[-2:]
        pruned += int(jnp.sum(1.0 - keep)) * bk * bn
    return pruned
