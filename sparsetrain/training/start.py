"""Where a run starts: a fresh model, its own newest checkpoint, or another run converted.

`initial_state` is the one place the three starts are told apart:

- fresh: the initialised state; metrics rows of an attempt killed before its first checkpoint
  are dropped;
- resume (`--resume` with a checkpoint in the run directory): the newest checkpoint that
  restores (a damaged one is named on stderr, kept and skipped; `--resume-step` picks one),
  after checking that the recipe's model and sparsity sections and the data fingerprint are
  those it was trained with; rows logged after it are dropped. A run already at its last step
  is reported finished by `finished_summary` and left as it is;
- `sparsity.init_from`: another run's checkpoint converted to this model (one-shot magnitude
  pruning of a dense model, or densifying a sparse one); the run continues its step count, data
  position and metrics.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from sparsetrain.config import Config, ConfigError, from_dict
from sparsetrain.data.pipeline import Datasets
from sparsetrain.errors import DamagedFileError
from sparsetrain.run_files import write_atomic
from sparsetrain.sparsity.convert import convert_state
from sparsetrain.sparsity.schedule import sparse_kinds
from sparsetrain.training.checkpoint import Checkpointer
from sparsetrain.training.multiprocess import is_primary
from sparsetrain.training.step import Setup, build_setup
from sparsetrain.training.tracking import read_jsonl, rewrite_jsonl


@dataclass
class Start:
    """The initial train state and the counters a run continues from."""

    state: dict
    step: int = 0
    data_state: dict | None = None     # BatchIterator position; None = from the beginning
    wall_before: float = 0.0           # seconds of earlier attempts
    best_val: float = math.inf
    flops_before: float = 0.0          # training FLOPs not counted by (step - start) * flops/step


def check_fingerprint(meta: dict, data: Datasets, where: str) -> None:
    """Refuse a checkpoint whose tokenizer or validation data differ from `data`'s.

    Args:
      meta: the checkpoint's meta (holds "fingerprint", "step", "vocab_size").
      data: the datasets the recipe builds now.
      where: the recipe field or path named in the error.
    """
    if meta.get("fingerprint") != data.fingerprint:
        raise ConfigError(
            f"{where}: the tokenizer or validation data differ from the checkpoint's (step "
            f"{meta.get('step')}: vocab {meta.get('vocab_size')}, now {data.vocab_size}; fingerprint "
            f"{str(meta.get('fingerprint'))[:12]} vs {data.fingerprint[:12]}); use the run's own "
            "tokenizer.json and data section (nothing was changed)")


def check_resumable(cfg: Config, meta: dict) -> None:
    """Refuse to resume a checkpoint of a different model or sparsity layout."""
    saved = meta.get("recipe", {})
    try:  # fields added since the checkpoint was written take their defaults
        saved = from_dict(Config, saved).to_dict()
    except ConfigError:
        pass  # a recipe this version cannot read: compared as stored, so it is refused below
    for section in ("model", "sparsity"):
        if saved.get(section) != cfg.to_dict()[section]:
            raise ConfigError(
                f"{section}: the recipe's {section} section differs from the checkpoint's "
                f"({saved.get(section)} vs {cfg.to_dict()[section]}); resume with the same "
                f"{section} settings or choose another run.name")


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows logged after `last_step` (a crash after the checkpoint logged them once already);
    the file is rewritten only when a row (or a torn last line) is dropped. Only process 0 of a
    multi-process run touches the file."""
    if path.is_file() and is_primary():
        rows = read_jsonl(path)
        kept = [r for r in rows if r["step"] <= last_step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        if len(kept) < len(rows) or path.read_text() != text:
            rewrite_jsonl(path, kept)


def restore_run(run_dir: Path, step: int | None = None,
                using: str = "using") -> tuple[Config, Setup, dict, dict]:
    """(recipe, abstract setup, state, meta) of a run's newest checkpoint that restores (or of
    `step`); damaged ones are skipped with one line each on stderr (see Checkpointer.restore_newest,
    which also lists the errors)."""
    ckpt = Checkpointer(Path(run_dir) / "checkpoints", keep_last=1_000_000)
    built: dict = {}

    def prepare(meta: dict):
        built["cfg"] = cfg = from_dict(Config, meta["recipe"])
        built["setup"] = build_setup(cfg, int(meta["vocab_size"]), abstract=True)
        return built["setup"].state

    try:
        if not ckpt.all_steps():
            raise FileNotFoundError(f"{run_dir}: no checkpoint in {ckpt.directory}")
        state, meta = ckpt.restore_newest(prepare, step, using)
    finally:
        ckpt.close()
    return built["cfg"], built["setup"], state, meta


def _from_other_run(cfg: Config, setup: Setup, data: Datasets, out: Path) -> Start:
    """`sparsity.init_from`: the source run's checkpoint converted to this model."""
    src_dir = Path(cfg.sparsity.init_from)
    _, src_setup, src_state, meta = restore_run(src_dir, cfg.sparsity.init_step)
    check_fingerprint(meta, data, "sparsity.init_from")
    state = convert_state(src_state, sparse_kinds(src_setup.spec), setup.state,
                          sparse_kinds(setup.spec), magnitude=cfg.sparsity.pattern == "magnitude")
    rows = [r for r in read_jsonl(src_dir / "metrics.jsonl") if r["step"] <= int(meta["step"])] \
        if (src_dir / "metrics.jsonl").is_file() else []
    if is_primary():
        write_atomic(out / "metrics.jsonl", "".join(json.dumps({**r, "init_from": True}) + "\n" for r in rows))
    return Start(state, int(meta["step"]), meta["data_state"], float(meta.get("wall_time_s", 0.0)),
                 flops_before=float(rows[-1].get("train_flops", 0.0)) if rows else 0.0)


def _from_checkpoint(cfg: Config, setup: Setup, data: Datasets, ckpt: Checkpointer, out: Path,
                     flops_per_step: float, step: int | None) -> Start:
    """`--resume`: the run's own newest checkpoint that restores (or `--resume-step`'s)."""
    def prepare(meta: dict):
        check_resumable(cfg, meta)
        check_fingerprint(meta, data, "data")
        return setup.state

    state, meta = ckpt.restore_newest(prepare, step, using="resuming from")
    step = int(meta["step"])
    truncate_jsonl(out / "metrics.jsonl", step)
    return Start(state, step, meta["data_state"], float(meta.get("wall_time_s", 0.0)),
                 float(meta.get("best_val_loss", math.inf)),
                 float(meta.get("train_flops", step * flops_per_step)))


def finished_summary(cfg: Config, step: int, end: int) -> dict:
    """A resumed run whose checkpoint is already at `end`: one line on stderr, and its summary.json
    as it is (nothing is written; {} when the run stopped before writing one).

    Raises:
        DamagedFileError: summary.json does not parse.
    """
    path = cfg.out_dir / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise DamagedFileError(f"{path}: damaged ({type(e).__name__}: {str(e)[:120]}); the run is finished at "
                               f"step {step} and its checkpoints are kept; delete summary.json and run "
                               "`sparsetrain eval` on the run for its final numbers") from e
    what = (f"is finished (step {step} of run.steps={cfg.run.steps})" if end == cfg.run.steps
            else f"is already at step {step} (--stop-after {end})")
    where = f"its summary: {path}" if summary else f"it has no {path.name} (stopped after its last checkpoint)"
    print(f"sparsetrain: {cfg.run.name} {what}; {where}; nothing was changed", file=sys.stderr)
    return summary


def initial_state(cfg: Config, setup: Setup, data: Datasets, ckpt: Checkpointer, resume: bool,
                  flops_per_step: float, resume_step: int | None = None) -> Start:
    """The state and counters a run starts from (see the module docstring).

    Args:
      flops_per_step: effective training FLOPs of one step (for checkpoints that predate the
        "train_flops" field).
      resume_step: resume from this checkpoint instead of the newest that restores.
    """
    out = cfg.out_dir
    has_checkpoint = ckpt.latest_step() is not None
    if resume and has_checkpoint:
        return _from_checkpoint(cfg, setup, data, ckpt, out, flops_per_step, resume_step)
    if cfg.sparsity.init_from:
        return _from_other_run(cfg, setup, data, out)
    truncate_jsonl(out / "metrics.jsonl", 0)
    return Start(setup.state)
