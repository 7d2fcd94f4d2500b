"""Recipe validation: ranges, choices, divisibility and consistency between sections.

`validate(cfg)` raises `ConfigError` naming the field, the value and what is allowed, before
anything is built or compiled; `check_trainable` refuses presets that only `info` and `emulate`
support. Both are re-exported by sparsetrain.config.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from sparsetrain.config import (
    BACKENDS, DATA_SUFFIXES, DISTRIBUTIONS, DTYPES, FLOWS, LINEAR_KINDS, NONFINITE_POLICIES,
    PATTERNS, RDU_CHIPS, REGROW, WANDB_MODES, Config, ConfigError, SparsityConfig,
)
from sparsetrain.presets import PRESETS, TRAINABLE_FAMILIES, ModelShape, linear_shapes
from sparsetrain.sparsity.layout import blocks_per_column


def _require(ok: bool, where: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {value!r} is not allowed; allowed: {allowed}")


def looks_like_path(dataset: str) -> bool:
    return (os.sep in dataset or dataset.startswith(".") or any(c in dataset for c in "*?[")
            or dataset.endswith(DATA_SUFFIXES))


def validate(cfg: Config, check_data: bool = True) -> None:
    """Raise ConfigError for the first field whose value is not allowed."""
    m = cfg.model
    _require(m.preset in PRESETS, "model.preset", m.preset, ", ".join(PRESETS))
    _require(m.dtype in DTYPES, "model.dtype", m.dtype, ", ".join(DTYPES))
    for name in ("n_layers", "d_model", "n_heads", "context", "n_kv_heads"):
        v = getattr(m, name)
        _require(v is None or v >= 1, f"model.{name}", v, "an integer >= 1 or null")
    for name in ("embd_dropout", "attn_dropout", "resid_dropout"):
        v = getattr(m, name)
        _require(0.0 <= v < 1.0, f"model.{name}", v, "a rate in [0, 1)")
    shape = cfg.shape()
    _require(shape.d_model % shape.n_heads == 0, "model.n_heads", shape.n_heads,
             f"a divisor of model.d_model={shape.d_model}")
    _validate_family(cfg, shape)

    s = cfg.sparsity
    _require(s.pattern in PATTERNS, "sparsity.pattern", s.pattern, ", ".join(PATTERNS))
    _require(0.0 < s.density <= 1.0, "sparsity.density", s.density, "a fraction in (0, 1]")
    _require(16 <= s.block <= 256, "sparsity.block", s.block, "an integer block size in 16..256")
    for kind, (n_in, n_out) in linear_shapes(shape).items():
        ks = getattr(s, kind)
        if ks.density is not None:
            _require(0.0 < ks.density <= 1.0, f"sparsity.{kind}.density", ks.density, "a fraction in (0, 1]")
        if ks.block is not None:
            _require(16 <= ks.block <= 256, f"sparsity.{kind}.block", ks.block, "an integer block size in 16..256")
        density, block = s.of(kind)
        if density >= 1.0:
            continue
        where = f"sparsity.{kind}.block" if ks.block is not None else "sparsity.block"
        _require(n_in % block == 0 and n_out % block == 0, where, block,
                 f"a block size dividing the {kind} weight shape ({n_in}, {n_out})")
        rows = n_in // block
        where = f"sparsity.{kind}.density" if ks.density is not None else "sparsity.density"
        if s.flow == "gradual":
            density = max(density, s.initial_density)
        try:
            blocks_per_column(rows, density)
        except ValueError:
            _require(False, where, density,
                     f">= {1 / rows:.4g} (one of the {rows} blocks per column of {kind})")

    _validate_flow(s)

    d = cfg.data
    _require(d.vocab_size >= 257, "data.vocab_size", d.vocab_size,
             "an integer >= 257 (a byte-level BPE has 256 byte tokens + end-of-text)")
    _require(d.seq_len >= 2, "data.seq_len", d.seq_len, "an integer >= 2")
    _require(d.seq_len <= shape.context, "data.seq_len", d.seq_len,
             f"<= model context {shape.context} (model.preset={m.preset!r})")
    _require(d.batch_size >= 1, "data.batch_size", d.batch_size, "an integer >= 1")
    _require(0.0 < d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "a fraction in (0, 1)")
    if d.tokenizer != "bpe":
        _require(not check_data or Path(d.tokenizer).is_file(), "data.tokenizer", d.tokenizer,
                 "'bpe' or the path of an existing tokenizer.json")
    if check_data:
        _validate_init_from(s)
    if check_data and d.dataset != "shakespeare" and looks_like_path(d.dataset):
        _require(bool(glob.glob(os.path.expanduser(d.dataset))), "data.dataset", d.dataset,
                 "'shakespeare', an existing file/dir/glob of "
                 f"{'/'.join(DATA_SUFFIXES)} files, or a hub dataset name")

    o = cfg.optimizer
    _require(o.lr > 0, "optimizer.lr", o.lr, "a positive float")
    _require(0 <= o.min_lr_ratio <= 1, "optimizer.min_lr_ratio", o.min_lr_ratio, "a fraction in [0, 1]")
    _require(o.warmup_steps >= 0, "optimizer.warmup_steps", o.warmup_steps, "an integer >= 0")
    for name in ("beta1", "beta2"):
        v = getattr(o, name)
        _require(0 <= v < 1, f"optimizer.{name}", v, "a float in [0, 1)")
    _require(o.eps > 0, "optimizer.eps", o.eps, "a positive float")
    _require(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, "a float >= 0")
    _require(o.grad_clip >= 0, "optimizer.grad_clip", o.grad_clip, "a float >= 0 (0 = off)")

    r = cfg.run
    _require(r.steps >= 1, "run.steps", r.steps, "an integer >= 1")
    for name in ("eval_every", "eval_batches", "log_every", "checkpoint_every", "keep_checkpoints"):
        v = getattr(r, name)
        _require(v >= 1, f"run.{name}", v, "an integer >= 1")
    _require(r.wandb in WANDB_MODES, "run.wandb", r.wandb, ", ".join(WANDB_MODES))
    for name in ("mesh_data", "mesh_fsdp", "mesh_tensor"):
        _require(getattr(r, name) >= 1, f"run.{name}", getattr(r, name), "an integer >= 1")
    replicas = r.mesh_data * r.mesh_fsdp
    _require(d.batch_size % replicas == 0, "data.batch_size", d.batch_size,
             f"a multiple of run.mesh_data * run.mesh_fsdp = {replicas}")
    _require(r.backend in BACKENDS, "run.backend", r.backend, ", ".join(BACKENDS))
    _require(r.rdu_chip in RDU_CHIPS, "run.rdu_chip", r.rdu_chip, ", ".join(RDU_CHIPS))
    _require(r.backend != "rdu" or replicas * r.mesh_tensor == 1, "run.backend", r.backend,
             "xla when the mesh has more than one device (the rdu emulator runs on one device)")
    _require(r.nonfinite in NONFINITE_POLICIES, "run.nonfinite", r.nonfinite, ", ".join(NONFINITE_POLICIES))
    _require(r.max_skipped_steps >= 1, "run.max_skipped_steps", r.max_skipped_steps, "an integer >= 1")
    _require(bool(r.name) and "/" not in r.name, "run.name", r.name, "a non-empty name without '/'")


def _validate_family(cfg: Config, shape: ModelShape) -> None:
    """Fields whose allowed values depend on the preset's family (GPT or llama)."""
    m, d = cfg.model, cfg.data
    if shape.family != "llama":
        _require(m.n_kv_heads is None, "model.n_kv_heads", m.n_kv_heads,
                 f"null for the GPT preset {m.preset!r} (every head has its own keys and values)")
        return
    _require(shape.n_heads % shape.kv_heads == 0, "model.n_kv_heads", shape.kv_heads,
             f"a divisor of model.n_heads={shape.n_heads}")
    _require(shape.head_dim % 2 == 0, "model.n_heads", shape.n_heads,
             f"a head count giving an even head width (rotary positions rotate pairs; "
             f"model.d_model={shape.d_model})")
    if shape.vocab is not None:
        _require(d.vocab_size == shape.vocab, "data.vocab_size", d.vocab_size,
                 f"{shape.vocab} (the tokenizer vocabulary of model.preset={m.preset!r})")


def check_trainable(cfg: Config) -> None:
    """Refuse, before anything is built, to train a preset whose family training does not support."""
    family = cfg.shape().family
    trainable = [name for name, s in PRESETS.items() if s.family in TRAINABLE_FAMILIES]
    _require(family in TRAINABLE_FAMILIES, "model.preset", cfg.model.preset,
             f"a GPT preset for training ({', '.join(trainable)}); {family} presets are for "
             "`sparsetrain info` and `sparsetrain emulate`")


def _validate_flow(s: SparsityConfig) -> None:
    """Flow, distribution and init_from fields of the sparsity section."""
    _require(s.distribution in DISTRIBUTIONS, "sparsity.distribution", s.distribution, ", ".join(DISTRIBUTIONS))
    if s.distribution == "erk":
        for kind in LINEAR_KINDS:
            v = getattr(s, kind).density
            _require(v is None, f"sparsity.{kind}.density", v,
                     "null with sparsity.distribution=erk (ERK sets each kind's density)")
    _require(s.flow in FLOWS, "sparsity.flow", s.flow, ", ".join(FLOWS))
    _require(s.regrow in REGROW, "sparsity.regrow", s.regrow, ", ".join(REGROW))
    _require(0.0 < s.initial_density <= 1.0, "sparsity.initial_density", s.initial_density, "a fraction in (0, 1]")
    _require(0.0 <= s.start_fraction < 1.0, "sparsity.start_fraction", s.start_fraction, "a fraction in [0, 1)")
    _require(s.start_fraction < s.end_fraction <= 1.0, "sparsity.end_fraction", s.end_fraction,
             f"a fraction in (start_fraction={s.start_fraction}, 1]")
    _require(s.update_every >= 1, "sparsity.update_every", s.update_every, "an integer >= 1")
    _require(0.0 <= s.drop_fraction < 1.0, "sparsity.drop_fraction", s.drop_fraction, "a fraction in [0, 1)")
    if s.flow != "static":
        _require(s.pattern != "dense", "sparsity.flow", s.flow,
                 "'static' with sparsity.pattern=dense (other flows need a sparse pattern)")
    if s.flow == "gradual":
        _require(s.initial_density > s.density, "sparsity.initial_density", s.initial_density,
                 f"a fraction above sparsity.density={s.density} (gradual pruning starts denser)")
    if s.pattern == "magnitude":
        _require(s.init_from is not None, "sparsity.pattern", s.pattern,
                 "'magnitude' only with sparsity.init_from (it ranks the blocks of a trained checkpoint)")
        _require(s.flow == "static", "sparsity.flow", s.flow, "'static' with sparsity.pattern=magnitude")
    if s.init_from is not None:
        _require(s.flow == "static", "sparsity.flow", s.flow, "'static' with sparsity.init_from")
    _require(s.init_step is None or s.init_step >= 1, "sparsity.init_step", s.init_step, "an integer >= 1 or null")


def _validate_init_from(s: SparsityConfig) -> None:
    """init_from must name a run directory with checkpoints (checked when data is checked)."""
    if s.init_from is not None:
        _require((Path(s.init_from) / "checkpoints").is_dir(), "sparsity.init_from", s.init_from,
                 "a run directory with checkpoints/ (train that run first)")


