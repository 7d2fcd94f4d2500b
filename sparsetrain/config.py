"""Recipes: typed dataclasses for every section, YAML loading, `--set` overrides, validation.

A recipe is one YAML file with the sections `model`, `sparsity`, `data`, `optimizer`, `run`.
Every field below carries a one-line `doc`. Loading checks unknown keys and types; `validate`
checks ranges, divisibility and consistency between sections. Both raise `ConfigError` (a
`ValueError`) naming the field, the value and what is allowed, before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparsetrain.sparsity.layout import blocks_per_column


class ConfigError(ValueError):
    """A recipe field has a value that is not allowed."""


def _f(default: Any, doc: str):
    """A dataclass field with a one-line description (shown in errors and `--help-recipe`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


# ---------------------------------------------------------------------------------------------
# Model presets: shapes of the GPT-2 (Radford et al. 2019) and GPT-3 (Brown et al. 2020, Table
# 2.1) papers. GPT-3 1.3B lists 24 heads of 128 (3072 != 2048 wide); we use 16 heads of 128.
# GPT-3 13B lists width 5140; we use 5120 (divisible by 40 heads and by block sizes).
# Llama-family presets (RMSNorm, rotary positions, SwiGLU, grouped-query attention, untied head):
# Llama 2 (Touvron et al. 2023, Table 1 and the released config), Llama 3.1 (Llama Team 2024,
# "The Llama 3 Herd of Models", Table 3), Mistral 7B v0.1 (Jiang et al. 2023, Table 1; its 4096-token
# sliding attention window is not modelled: identical for sequences up to 4096 tokens).
# ---------------------------------------------------------------------------------------------
MODEL_FAMILIES = ("gpt", "llama")
TRAINABLE_FAMILIES = ("gpt",)  # Llama presets are for `info` and `emulate` (and KV-cache inference)


@dataclass(frozen=True)
class ModelShape:
    """The resolved shape of a model: layers, width, heads, context (tokens), and for the llama
    family its key/value heads, SwiGLU width, fixed vocabulary and RoPE base."""

    n_layers: int
    d_model: int
    n_heads: int
    context: int
    family: str = "gpt"               # one of MODEL_FAMILIES
    n_kv_heads: int | None = None     # llama: key/value heads (grouped-query); None = n_heads
    ffn: int | None = None            # llama: SwiGLU hidden width; None = 4 * d_model (GPT MLP)
    vocab: int | None = None          # vocabulary of the published tokenizer; None = data.vocab_size
    rope_theta: float = 10000.0       # llama: rotary position base

    @property
    def d_ff(self) -> int:
        return self.ffn or 4 * self.d_model

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(4, 256, 4, 256),
    "small-30m": ModelShape(8, 512, 8, 256),
    "gpt2-small": ModelShape(12, 768, 12, 1024),
    "gpt2-medium": ModelShape(24, 1024, 16, 1024),
    "gpt2-large": ModelShape(36, 1280, 20, 1024),
    "gpt2-xl": ModelShape(48, 1600, 25, 1024),
    "gpt3-1.3b": ModelShape(24, 2048, 16, 2048),
    "gpt3-2.7b": ModelShape(32, 2560, 32, 2048),
    "gpt3-6.7b": ModelShape(32, 4096, 32, 2048),
    "gpt3-13b": ModelShape(40, 5120, 40, 2048),
    # name: (layers, width, heads, context, family, kv heads, SwiGLU width, vocab, RoPE base)
    "llama-tiny": ModelShape(2, 64, 4, 64, "llama", 2, 128, None, 10000.0),
    "llama2-7b": ModelShape(32, 4096, 32, 4096, "llama", 32, 11008, 32000, 10000.0),
    "llama3.1-8b": ModelShape(32, 4096, 32, 131072, "llama", 8, 14336, 128256, 500000.0),
    "llama3.1-70b": ModelShape(80, 8192, 64, 131072, "llama", 8, 28672, 128256, 500000.0),
    "llama3.1-405b": ModelShape(126, 16384, 128, 131072, "llama", 8, 53248, 128256, 500000.0),
    "mistral-7b": ModelShape(32, 4096, 32, 8192, "llama", 8, 14336, 32000, 10000.0),
}

LINEAR_KINDS = ("qkv", "attn_out", "mlp_up", "mlp_down")
PATTERNS = ("dense", "random_balanced", "butterfly", "magnitude")  # magnitude: only with init_from
FLOWS = ("static", "gradual", "prune_regrow")
REGROW = ("random", "gradient")
DISTRIBUTIONS = ("uniform", "erk")
DTYPES = ("float32", "bfloat16")
WANDB_MODES = ("disabled", "offline", "online")
BACKENDS = ("xla", "rdu")
NONFINITE_POLICIES = ("stop", "skip")
RDU_CHIPS = ("sn40l", "sn30", "sn10")
DATA_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")


@dataclass
class ModelConfig:
    preset: str = _f("tiny", f"model shape preset, one of {sorted(PRESETS)}")
    n_layers: int | None = _f(None, "override the preset's number of decoder layers")
    d_model: int | None = _f(None, "override the preset's width (embedding size)")
    n_heads: int | None = _f(None, "override the preset's number of attention heads")
    context: int | None = _f(None, "override the preset's context length (tokens)")
    n_kv_heads: int | None = _f(None, "override a llama preset's key/value heads (grouped-query "
                                "attention; must divide n_heads); null for GPT presets")
    dtype: str = _f("float32", f"compute dtype of activations, one of {DTYPES} (params are float32)")
    remat: bool = _f(False, "rematerialise each decoder layer in the backward pass (saves memory)")
    unroll_layers: bool = _f(True, "unroll the scan over decoder layers when compiling (the body is "
                             "still traced once): faster steps on XLA:CPU, no stacked per-layer "
                             "residual copies; false keeps a rolled loop (compile time independent "
                             "of depth)")


@dataclass
class LinearSparsity:
    density: float | None = _f(None, "fraction of blocks stored in (0, 1]; null = sparsity.density")
    block: int | None = _f(None, "square block size (16..256); null = sparsity.block")


@dataclass
class SparsityConfig:
    pattern: str = _f("dense", f"block pattern of the sparse linears, one of {PATTERNS}")
    density: float = _f(1.0, "default fraction of weight blocks stored in each linear, (0, 1]")
    block: int = _f(64, "default square block size of the sparse linears, 16..256")
    qkv: LinearSparsity = _f(None, "density/block of the attention qkv projection")
    attn_out: LinearSparsity = _f(None, "density/block of the attention output projection")
    mlp_up: LinearSparsity = _f(None, "density/block of the MLP up projection (d -> 4d)")
    mlp_down: LinearSparsity = _f(None, "density/block of the MLP down projection (4d -> d)")
    seed: int = _f(0, "seed of the random pattern")
    distribution: str = _f("uniform", f"density across linear kinds, one of {DISTRIBUTIONS}: uniform = "
                           "per-kind values as given; erk = Erdos-Renyi-Kernel, density is the global target")
    flow: str = _f("static", f"how the mask evolves while training, one of {FLOWS}")
    initial_density: float = _f(1.0, "gradual: density the pruning starts from (blocks stored all along)")
    start_fraction: float = _f(0.0, "gradual/prune_regrow: mask updates start at this fraction of run.steps")
    end_fraction: float = _f(0.75, "gradual/prune_regrow: mask updates end at this fraction of run.steps")
    update_every: int = _f(50, "gradual/prune_regrow: steps between mask updates")
    drop_fraction: float = _f(0.3, "prune_regrow: fraction of stored blocks replaced at the first update "
                              "(cosine-decayed to 0 at end_fraction)")
    regrow: str = _f("gradient", f"prune_regrow: how new blocks are chosen, one of {REGROW} "
                     "(random = SET, gradient = RigL)")
    init_from: str | None = _f(None, "start from another run's checkpoint (its dir), converted to this "
                               "model: dense->sparse (one-shot pruning) or sparse->dense (densify)")
    init_step: int | None = _f(None, "which checkpoint step of init_from; null = newest")

    def __post_init__(self):
        for kind in LINEAR_KINDS:
            if getattr(self, kind) is None:
                setattr(self, kind, LinearSparsity())
        self._shapes: dict[str, tuple[int, int]] | None = None  # set by Config (ERK needs shapes)

    def of(self, kind: str) -> tuple[float, int]:
        """(density, block) of one linear kind, defaults filled in (ERK resolved when chosen)."""
        s = getattr(self, kind)
        density = self.density if s.density is None else s.density
        block = self.block if s.block is None else s.block
        if self.pattern == "dense":
            density = 1.0
        elif self.distribution == "erk" and self._shapes is not None:
            from sparsetrain.sparsity.distribution import erk_densities

            density = erk_densities(self._shapes, self.density)[kind]
        return float(density), int(block)


@dataclass
class DataConfig:
    dataset: str = _f("shakespeare", "'shakespeare', a local file/dir/glob of "
                      ".txt/.json/.jsonl/.parquet, or a Hugging Face hub dataset name")
    text_field: str = _f("text", "column holding the text in json/parquet/hub datasets")
    tokenizer: str = _f("bpe", "'bpe' trains a byte-level BPE on the train split; or a tokenizer.json path")
    vocab_size: int = _f(2048, "vocabulary size of the trained BPE tokenizer (and of the model)")
    seq_len: int = _f(128, "tokens per training sequence (<= model context)")
    batch_size: int = _f(16, "sequences per training step")
    val_fraction: float = _f(0.1, "fraction of documents held out for validation, in (0, 1)")
    seed: int = _f(0, "seed of the train/val split and the batch order")
    cache_dir: str = _f("data_cache", "where prepared corpora are cached")


@dataclass
class OptimizerConfig:
    lr: float = _f(1e-3, "peak learning rate (AdamW)")
    min_lr_ratio: float = _f(0.1, "final learning rate of the cosine decay as a fraction of lr")
    warmup_steps: int = _f(100, "linear warmup steps from 0 to lr")
    beta1: float = _f(0.9, "AdamW first-moment decay")
    beta2: float = _f(0.95, "AdamW second-moment decay")
    eps: float = _f(1e-8, "AdamW epsilon")
    weight_decay: float = _f(0.1, "decoupled weight decay, applied to matrices only")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this value (0 = off)")


@dataclass
class RunConfig:
    name: str = _f("run", "name of the run (W&B run name; default output dir runs/NAME)")
    out_dir: str | None = _f(None, "where checkpoints, metrics and the tokenizer go; null = runs/NAME")
    steps: int = _f(1000, "optimizer steps to train")
    seed: int = _f(0, "seed of parameter init and dropout")
    eval_every: int = _f(100, "evaluate val loss every N steps (and at the end)")
    eval_batches: int = _f(8, "validation batches per evaluation")
    log_every: int = _f(10, "log training metrics every N steps")
    checkpoint_every: int = _f(500, "save a checkpoint every N steps (and at the end)")
    keep_checkpoints: int = _f(2, "keep the last N checkpoints (plus the best by val loss)")
    wandb: str = _f("offline", f"Weights & Biases mode, one of {WANDB_MODES} (offline without API key)")
    wandb_project: str = _f("sparsetrain", "W&B project name")
    backend: str = _f("xla", f"where steps run, one of {BACKENDS} (rdu: every step runs through the "
                      "rdu_xla_backend emulator, which also logs the emulated step time)")
    rdu_chip: str = _f("sn40l", "emulated chip of backend rdu: sn40l, sn30 or sn10")
    nonfinite: str = _f("stop", f"a NaN/inf loss or gradient: one of {NONFINITE_POLICIES} (stop: the run "
                        "stops, keeping the last good checkpoint; skip: the step's update is not applied)")
    max_skipped_steps: int = _f(10, "with nonfinite=skip, stop after this many non-finite steps in a row")
    progress: bool = _f(True, "show a progress bar")
    mesh_data: int = _f(1, "devices along the mesh's data (replica) axis")
    mesh_fsdp: int = _f(1, "devices along the fsdp axis (params and optimizer state split)")
    mesh_tensor: int = _f(1, "devices along the tensor axis (heads / MLP width split)")


@dataclass
class Config:
    model: ModelConfig = _f(None, "model shape and numerics")
    sparsity: SparsityConfig = _f(None, "which linears are block-sparse, how dense, which pattern")
    data: DataConfig = _f(None, "corpus, tokenizer, sequence length and batch size")
    optimizer: OptimizerConfig = _f(None, "AdamW with warmup and cosine decay")
    run: RunConfig = _f(None, "steps, evaluation, checkpoints, tracking")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None:
                setattr(self, f.name, _section_types()[f.name]())
        if self.model.preset in PRESETS:  # ERK densities depend on the linear shapes
            self.sparsity._shapes = linear_shapes(self.shape())

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out_dir or os.path.join("runs", self.run.name))

    def shape(self) -> ModelShape:
        return resolve_shape(self.model)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _section_types() -> dict[str, type]:
    return {"model": ModelConfig, "sparsity": SparsityConfig, "data": DataConfig,
            "optimizer": OptimizerConfig, "run": RunConfig}


def resolve_shape(model: ModelConfig) -> ModelShape:
    """The preset's shape with the recipe's explicit overrides applied."""
    base = PRESETS[model.preset]
    return dataclasses.replace(
        base,
        n_layers=model.n_layers or base.n_layers,
        d_model=model.d_model or base.d_model,
        n_heads=model.n_heads or base.n_heads,
        context=model.context or base.context,
        n_kv_heads=model.n_kv_heads or base.n_kv_heads,
    )


# ---------------------------------------------------------------------------------------------
# Loading: YAML -> dict -> overrides -> typed dataclasses (unknown keys and wrong types refused)
# ---------------------------------------------------------------------------------------------
def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} has type {type(value).__name__}; allowed: {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if isinstance(value, dict):
            return from_dict(tp, value, where)
    elif tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: {value!r} is not allowed; allowed: a finite number")
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: {value!r} has type {type(value).__name__}; allowed: {_type_name(tp)}")


def from_dict(cls, raw: dict, prefix: str = ""):
    """Build dataclass `cls` from a dict, refusing unknown keys and wrongly typed values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'recipe'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{where}: unknown field; allowed fields of "
                              f"'{prefix or 'recipe'}': {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], where)
    return cls(**kwargs)


def apply_override(raw: dict, override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (0.5, true, null)."""
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. sparsity.density=0.125")
    key, text = override.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override!r}: '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(text)


def load_recipe(path: str | os.PathLike | None, overrides: list[str] = (), check_data: bool = True) -> Config:
    """Load a YAML recipe (or defaults when `path` is None), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe: file {str(p)!r} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {str(p)!r} is not valid YAML: {e}") from None
    for o in overrides:
        apply_override(raw, o)
    cfg = from_dict(Config, raw)
    validate(cfg, check_data=check_data)
    return cfg


def save_recipe(cfg: Config, path: Path) -> None:
    """Write the fully resolved recipe (all defaults filled in) as YAML."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")  # atomic: a kill mid-write leaves the old file
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Validation: ranges, choices, divisibility, consistency between sections
# ---------------------------------------------------------------------------------------------
def _require(ok: bool, where: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {value!r} is not allowed; allowed: {allowed}")


def linear_shapes(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear kind of a decoder layer.

    llama: qkv holds the query heads and the (fewer) key/value heads; mlp_up holds the SwiGLU
    gate and up projections side by side (2 * ffn outputs).
    """
    d, ff = shape.d_model, shape.d_ff
    if shape.family == "llama":
        qkv = (shape.n_heads + 2 * shape.kv_heads) * shape.head_dim
        return {"qkv": (d, qkv), "attn_out": (d, d), "mlp_up": (d, 2 * ff), "mlp_down": (ff, d)}
    return {"qkv": (d, 3 * d), "attn_out": (d, d), "mlp_up": (d, ff), "mlp_down": (ff, d)}


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


def describe_fields(cls=Config, prefix: str = "") -> list[str]:
    """One line per recipe field: dotted name, default and description."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"{name}: {f.metadata.get('doc', '')}")
            lines.extend(describe_fields(hints[f.name], name + "."))
        else:
            default = None if f.default is dataclasses.MISSING else f.default
            lines.append(f"  {name} = {default!r}  # {f.metadata.get('doc', '')}")
    return lines
