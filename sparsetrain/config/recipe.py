"""Recipes: typed dataclasses for every section, YAML loading, `--set` overrides.

A recipe is one YAML file with the sections `model`, `sparsity`, `data`, `optimizer`, `run`.
Every field below carries a one-line `doc`. `from_dict` checks unknown keys and types;
`validation.validate` checks ranges, divisibility and consistency between sections;
`loading.load_recipe` does both; model shapes and presets live in `presets.py`. All raise
`ConfigError` (a `ValueError`) naming the field, the value and what is allowed, before anything
is compiled.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparsetrain.config.presets import PRESETS, ModelShape
from sparsetrain.errors import ConfigError
from sparsetrain.run_files import write_atomic


def _f(default: Any, doc: str):
    """A dataclass field with a one-line description (shown in errors and `--help-recipe`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


LINEAR_KINDS = ("qkv", "attn_out", "mlp_up", "mlp_down")
PATTERNS = ("dense", "random_balanced", "butterfly", "magnitude")  # magnitude: only with init_from
FLOWS = ("static", "gradual", "prune_regrow")
REGROW = ("random", "gradient")
DISTRIBUTIONS = ("uniform", "erk")
DTYPES = ("float32", "bfloat16")
WANDB_MODES = ("disabled", "offline", "online")
STEP_BACKENDS = ("xla", "rdu")
NONFINITE_POLICIES = ("stop", "skip")
RDU_CHIPS = ("sn40l", "sn30", "sn10")


@dataclass
class ModelConfig:
    preset: str = _f("tiny", f"model shape preset, one of {sorted(PRESETS)}")
    n_layers: int | None = _f(None, "override the preset's number of decoder layers")
    d_model: int | None = _f(None, "override the preset's width (embedding size)")
    n_heads: int | None = _f(None, "override the preset's number of attention heads")
    context: int | None = _f(None, "override the preset's context length (tokens)")
    n_kv_heads: int | None = _f(None, "override a llama preset's key/value heads (grouped-query "
                                "attention; must divide n_heads); null for GPT presets")
    dtype: str = _f("float32", f"compute dtype of activations and matmuls, one of {DTYPES}; params "
                    "and AdamW moments stay float32, so bfloat16 is mixed precision (bfloat16 "
                    "compute, float32 master weights and optimizer state)")
    remat: bool = _f(False, "rematerialise each decoder layer in the backward pass (saves memory)")
    unroll_layers: bool = _f(True, "unroll the scan over decoder layers when compiling (the body is "
                             "still traced once): faster steps on XLA:CPU, no stacked per-layer "
                             "residual copies; false keeps a rolled loop (compile time independent "
                             "of depth)")
    embd_dropout: float = _f(0.0, "dropout rate on token + position embeddings while training, [0, 1) "
                             "(GPT-2 fine-tuning: 0.1); evaluation and generation never drop")
    attn_dropout: float = _f(0.0, "dropout rate on the attention probabilities while training, [0, 1) "
                             "(> 0 runs attention as plain XLA ops, not the fused kernel)")
    resid_dropout: float = _f(0.0, "dropout rate on each attention and MLP output before the residual "
                              "add while training, [0, 1)")


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
    backend: str = _f("xla", f"where steps run, one of {STEP_BACKENDS} (rdu: every step runs through the "
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


def save_recipe(cfg: Config, path: Path) -> None:
    """Write the fully resolved recipe (all defaults filled in) as YAML."""
    write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # a failure leaves the old file


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
