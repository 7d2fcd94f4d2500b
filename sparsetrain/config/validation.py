"""Recipe validation: ranges, choices, divisibility and consistency between sections.

`validate(cfg)` raises `ConfigError` naming the field, the value and what is allowed, before
anything is built or compiled; `check_trainable` refuses presets that only `info` and `emulate`
support. Both are re-exported by sparsetrain.config.
"""

from __future__ import annotations

from pathlib import Path

from sparsetrain.config.recipe import (
    STEP_BACKENDS, DISTRIBUTIONS, DTYPES, FLOWS, LINEAR_KINDS, NONFINITE_POLICIES,
    PATTERNS, RDU_CHIPS, REGROW, WANDB_MODES, Config, SparsityConfig,
)
from sparsetrain.config.presets import PRESETS, TRAINABLE_FAMILIES, ModelShape, linear_shapes
from sparsetrain.data.checks import validate_data_section
from sparsetrain.errors import require
from sparsetrain.sparsity.layout import MAX_BLOCK, MIN_BLOCK, blocks_per_column
from sparsetrain.sparsity.resolve import requested_density


def _validate_model_fields(m) -> None:
    """The model section's own fields (before the shape they describe is built)."""
    require(m.preset in PRESETS, "model.preset", m.preset, ", ".join(PRESETS))
    require(m.dtype in DTYPES, "model.dtype", m.dtype, ", ".join(DTYPES))
    for name in ("n_layers", "d_model", "n_heads", "context", "n_kv_heads"):
        v = getattr(m, name)
        require(v is None or v >= 1, f"model.{name}", v, "an integer >= 1 or null")
    for name in ("embd_dropout", "attn_dropout", "resid_dropout"):
        v = getattr(m, name)
        require(0.0 <= v < 1.0, f"model.{name}", v, "a rate in [0, 1)")


def validate(cfg: Config, check_data: bool = True) -> None:
    """Raise ConfigError for the first field whose value is not allowed."""
    _validate_model_fields(cfg.model)
    shape = cfg.shape()
    require(shape.d_model % shape.n_heads == 0, "model.n_heads", shape.n_heads,
             f"a divisor of model.d_model={shape.d_model}")
    _validate_family(cfg, shape)

    s = cfg.sparsity
    require(s.pattern in PATTERNS, "sparsity.pattern", s.pattern, ", ".join(PATTERNS))
    require(0.0 < s.density <= 1.0, "sparsity.density", s.density, "a fraction in (0, 1]")
    require(MIN_BLOCK <= s.block <= MAX_BLOCK, "sparsity.block", s.block, f"an integer block size in {MIN_BLOCK}..{MAX_BLOCK}")
    shapes = linear_shapes(shape)
    for kind, (n_in, n_out) in shapes.items():
        ks = getattr(s, kind)
        if ks.density is not None:
            require(0.0 < ks.density <= 1.0, f"sparsity.{kind}.density", ks.density, "a fraction in (0, 1]")
        if ks.block is not None:
            require(MIN_BLOCK <= ks.block <= MAX_BLOCK, f"sparsity.{kind}.block", ks.block,
                     f"an integer block size in {MIN_BLOCK}..{MAX_BLOCK}")
        density, block = requested_density(s, kind, shapes)
        if density >= 1.0:
            continue
        where = f"sparsity.{kind}.block" if ks.block is not None else "sparsity.block"
        require(n_in % block == 0 and n_out % block == 0, where, block,
                 f"a block size dividing the {kind} weight shape ({n_in}, {n_out})")
        rows = n_in // block
        where = f"sparsity.{kind}.density" if ks.density is not None else "sparsity.density"
        if s.flow == "gradual":
            density = max(density, s.initial_density)
        try:
            blocks_per_column(rows, density)
        except ValueError:
            require(False, where, density,
                     f">= {1 / rows:.4g} (one of the {rows} blocks per column of {kind})")

    _validate_flow(s)

    d = cfg.data
    validate_data_section(d, check_files=check_data)
    require(d.seq_len <= shape.context, "data.seq_len", d.seq_len,
             f"<= model context {shape.context} (model.preset={cfg.model.preset!r})")
    if check_data:
        _validate_init_from(s)

    o = cfg.optimizer
    require(o.lr > 0, "optimizer.lr", o.lr, "a positive float")
    require(0 <= o.min_lr_ratio <= 1, "optimizer.min_lr_ratio", o.min_lr_ratio, "a fraction in [0, 1]")
    require(o.warmup_steps >= 0, "optimizer.warmup_steps", o.warmup_steps, "an integer >= 0")
    for name in ("beta1", "beta2"):
        v = getattr(o, name)
        require(0 <= v < 1, f"optimizer.{name}", v, "a float in [0, 1)")
    require(o.eps > 0, "optimizer.eps", o.eps, "a positive float")
    require(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, "a float >= 0")
    require(o.grad_clip >= 0, "optimizer.grad_clip", o.grad_clip, "a float >= 0 (0 = off)")

    r = cfg.run
    require(r.steps >= 1, "run.steps", r.steps, "an integer >= 1")
    for name in ("eval_every", "eval_batches", "log_every", "checkpoint_every", "keep_checkpoints"):
        v = getattr(r, name)
        require(v >= 1, f"run.{name}", v, "an integer >= 1")
    require(r.wandb in WANDB_MODES, "run.wandb", r.wandb, ", ".join(WANDB_MODES))
    for name in ("mesh_data", "mesh_fsdp", "mesh_tensor"):
        require(getattr(r, name) >= 1, f"run.{name}", getattr(r, name), "an integer >= 1")
    replicas = r.mesh_data * r.mesh_fsdp
    require(d.batch_size % replicas == 0, "data.batch_size", d.batch_size,
             f"a multiple of run.mesh_data * run.mesh_fsdp = {replicas}")
    require(r.backend in STEP_BACKENDS, "run.backend", r.backend, ", ".join(STEP_BACKENDS))
    require(r.rdu_chip in RDU_CHIPS, "run.rdu_chip", r.rdu_chip, ", ".join(RDU_CHIPS))
    require(r.backend != "rdu" or replicas * r.mesh_tensor == 1, "run.backend", r.backend,
             "xla when the mesh has more than one device (the rdu emulator runs on one device)")
    require(r.nonfinite in NONFINITE_POLICIES, "run.nonfinite", r.nonfinite, ", ".join(NONFINITE_POLICIES))
    require(r.max_skipped_steps >= 1, "run.max_skipped_steps", r.max_skipped_steps, "an integer >= 1")
    require(bool(r.name) and "/" not in r.name, "run.name", r.name, "a non-empty name without '/'")


def _validate_family(cfg: Config, shape: ModelShape) -> None:
    """Fields whose allowed values depend on the preset's family (GPT or llama)."""
    m, d = cfg.model, cfg.data
    if shape.family != "llama":
        require(m.n_kv_heads is None, "model.n_kv_heads", m.n_kv_heads,
                 f"null for the GPT preset {m.preset!r} (every head has its own keys and values)")
        return
    require(shape.n_heads % shape.kv_heads == 0, "model.n_kv_heads", shape.kv_heads,
             f"a divisor of model.n_heads={shape.n_heads}")
    require(shape.head_dim % 2 == 0, "model.n_heads", shape.n_heads,
             f"a head count giving an even head width (rotary positions rotate pairs; "
             f"model.d_model={shape.d_model})")
    if shape.vocab is not None:
        require(d.vocab_size == shape.vocab, "data.vocab_size", d.vocab_size,
                 f"{shape.vocab} (the tokenizer vocabulary of model.preset={m.preset!r})")


def check_trainable(cfg: Config) -> None:
    """Refuse, before anything is built, to train a preset whose family training does not support."""
    family = cfg.shape().family
    trainable = [name for name, s in PRESETS.items() if s.family in TRAINABLE_FAMILIES]
    require(family in TRAINABLE_FAMILIES, "model.preset", cfg.model.preset,
             f"a GPT preset for training ({', '.join(trainable)}); {family} presets are for "
             "`sparsetrain info` and `sparsetrain emulate`")


def _validate_flow(s: SparsityConfig) -> None:
    """Flow, distribution and init_from fields of the sparsity section."""
    require(s.distribution in DISTRIBUTIONS, "sparsity.distribution", s.distribution, ", ".join(DISTRIBUTIONS))
    if s.distribution == "erk":
        for kind in LINEAR_KINDS:
            v = getattr(s, kind).density
            require(v is None, f"sparsity.{kind}.density", v,
                     "null with sparsity.distribution=erk (ERK sets each kind's density)")
    require(s.flow in FLOWS, "sparsity.flow", s.flow, ", ".join(FLOWS))
    require(s.regrow in REGROW, "sparsity.regrow", s.regrow, ", ".join(REGROW))
    require(0.0 < s.initial_density <= 1.0, "sparsity.initial_density", s.initial_density, "a fraction in (0, 1]")
    require(0.0 <= s.start_fraction < 1.0, "sparsity.start_fraction", s.start_fraction, "a fraction in [0, 1)")
    require(s.start_fraction < s.end_fraction <= 1.0, "sparsity.end_fraction", s.end_fraction,
             f"a fraction in (start_fraction={s.start_fraction}, 1]")
    require(s.update_every >= 1, "sparsity.update_every", s.update_every, "an integer >= 1")
    require(0.0 <= s.drop_fraction < 1.0, "sparsity.drop_fraction", s.drop_fraction, "a fraction in [0, 1)")
    if s.flow != "static":
        require(s.pattern != "dense", "sparsity.flow", s.flow,
                 "'static' with sparsity.pattern=dense (other flows need a sparse pattern)")
    if s.flow == "gradual":
        require(s.initial_density > s.density, "sparsity.initial_density", s.initial_density,
                 f"a fraction above sparsity.density={s.density} (gradual pruning starts denser)")
    if s.pattern == "magnitude":
        require(s.init_from is not None, "sparsity.pattern", s.pattern,
                 "'magnitude' only with sparsity.init_from (it ranks the blocks of a trained checkpoint)")
        require(s.flow == "static", "sparsity.flow", s.flow, "'static' with sparsity.pattern=magnitude")
    if s.init_from is not None:
        require(s.flow == "static", "sparsity.flow", s.flow, "'static' with sparsity.init_from")
    require(s.init_step is None or s.init_step >= 1, "sparsity.init_step", s.init_step, "an integer >= 1 or null")


def _validate_init_from(s: SparsityConfig) -> None:
    """init_from must name a run directory with checkpoints (checked when data is checked)."""
    if s.init_from is not None:
        require((Path(s.init_from) / "checkpoints").is_dir(), "sparsity.init_from", s.init_from,
                 "a run directory with checkpoints/ (train that run first)")


