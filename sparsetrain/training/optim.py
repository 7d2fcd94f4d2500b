"""The optimizer of every run: AdamW, warmup + cosine schedule, clipping, decay on matrices only."""

from __future__ import annotations

from typing import Any

import jax
import optax

from sparsetrain.config import OptimizerConfig

DECAYED = ("kernel", "values", "wte", "wpe")  # matrices; biases and LayerNorm are not decayed


def weight_decay_mask(params: Any) -> Any:
    """True for matrices (kernels, sparse block values, embeddings), False for biases and norms."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: str(getattr(path[-1], "key", path[-1])) in DECAYED, params)


def make_optimizer(opt: OptimizerConfig, total_steps: int):
    """AdamW with linear warmup + cosine decay and global-norm clipping. Returns (tx, schedule)."""
    warmup = min(opt.warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=opt.lr * opt.min_lr_ratio)
    tx = optax.chain(
        optax.clip_by_global_norm(opt.grad_clip) if opt.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, b1=opt.beta1, b2=opt.beta2, eps=opt.eps,
                    weight_decay=opt.weight_decay, mask=weight_decay_mask),
    )
    return tx, schedule
