"""The training loop: recipe -> data -> GPT -> AdamW steps -> eval -> checkpoints -> metrics.

`train(cfg)` reads top to bottom: build the data, the model and the optimizer, restore the newest
checkpoint when resuming, then run jitted steps, evaluating and checkpointing on the recipe's
cadence. The train state is a plain pytree (dicts of arrays and the Optax state):

    {"params": ..., "indices": ..., "opt_state": ..., "step": int32 (), "rng": uint32 key data}

`indices` holds the block-row indices of the sparse linears: not trained, checkpointed, and the
same shapes whatever blocks are stored, so changing them never recompiles the step. A sparse
training flow (`sparsity/schedule.py`: static, gradual pruning, prune-and-regrow) may add a
"flow" entry and updates the masks between steps with its own jitted function. With
`sparsity.init_from` a run starts from another run's checkpoint converted to this model (one-shot
magnitude pruning of a dense model, or densifying a sparse one) and continues its step count,
data position and metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from sparsetrain.checkpoint import Checkpointer
from sparsetrain.config import Config, ConfigError, check_trainable, from_dict, save_recipe
from sparsetrain.data import TOKENIZER_FILENAME, BatchIterator, build_datasets, eval_batches
from sparsetrain.errors import CheckpointSaveError
from sparsetrain.models.accounting import model_counts
from sparsetrain.models.gpt import GPT, BlockIndices, GPTSpec, abstract_model, build_model
from sparsetrain.optim import make_optimizer
from sparsetrain.sharding import batch_sharding, make_mesh, tree_shardings
from sparsetrain.sparsity.convert import convert_state
from sparsetrain.sparsity.schedule import Flow, kind_infos, make_flow, pruned_params, training_spec
from sparsetrain.tracking import Tracker, read_jsonl

# ---------------------------------------------------------------------------------------------
# Pure pieces: model application, loss, step
# ---------------------------------------------------------------------------------------------
class ModelFunctions:
    """A GPT split into its static graph and its (params, indices) pytrees of plain arrays."""

    def __init__(self, model: GPT):
        self.spec: GPTSpec = model.spec
        self.graphdef, self._params, self._indices = nnx.split(model, nnx.Param, BlockIndices)

    def initial(self) -> tuple[dict, dict]:
        """(params, indices) as nested dicts of arrays."""
        return self._params.to_pure_dict(), self._indices.to_pure_dict()

    def logits(self, params: dict, indices: dict, tokens: jax.Array, dropout_key=None) -> jax.Array:
        """tokens int32 (B, T) -> logits float32 (B, T, vocab); `dropout_key` only while training."""
        p = jax.tree.map(lambda x: x, self._params)
        p.replace_by_pure_dict(params)
        i = jax.tree.map(lambda x: x, self._indices)
        i.replace_by_pure_dict(indices)
        return nnx.merge(self.graphdef, p, i)(tokens, dropout_key)

    def loss(self, params: dict, indices: dict, batch: dict, dropout_key=None) -> jax.Array:
        """Mean next-token cross-entropy (nats) of a batch {tokens, targets: int32 (B, T)}."""
        logits = self.logits(params, indices, batch["tokens"], dropout_key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()


def init_state(fns: ModelFunctions, tx: optax.GradientTransformation, seed: int) -> dict:
    params, indices = fns.initial()
    return {"params": params, "indices": indices, "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed))}


def dense_twin(spec: GPTSpec) -> ModelFunctions:
    """The same GPT with every linear dense, abstract (no weights): RigL's dense gradient."""
    linears = tuple((kind, dataclasses.replace(lin, density=1.0)) for kind, lin in spec.linears)
    return ModelFunctions(abstract_model(dataclasses.replace(spec, linears=linears, pattern="dense")))


@dataclasses.dataclass
class Setup:
    """Everything a run's state is made of: model functions, optimizer, flow, initial state."""

    spec: GPTSpec
    model: GPT
    fns: ModelFunctions
    tx: optax.GradientTransformation
    schedule: Any
    flow: Flow
    state: dict   # real arrays, or ShapeDtypeStructs when built abstract


def build_setup(cfg: Config, vocab_size: int, abstract: bool = False) -> Setup:
    """Model, optimizer, flow and initial train state of a recipe.

    `abstract=True` allocates nothing (ShapeDtypeStruct leaves): the restore target of a
    checkpoint, for evaluation or for converting one run into another.
    """
    spec = training_spec(cfg.sparsity, GPTSpec.from_config(cfg, vocab_size))
    if spec.pattern == "magnitude":  # the blocks come from the init_from checkpoint
        spec = dataclasses.replace(spec, pattern="butterfly")
    model = abstract_model(spec) if abstract else build_model(spec, cfg.run.seed)
    fns = ModelFunctions(model)
    tx, schedule = make_optimizer(cfg.optimizer, cfg.run.steps)
    if cfg.run.nonfinite == "skip":  # a step with NaN/inf gradients leaves params and moments as they were
        tx = optax.apply_if_finite(tx, max_consecutive_errors=cfg.run.max_skipped_steps)
    dense_loss = None
    if cfg.sparsity.flow == "prune_regrow" and cfg.sparsity.regrow == "gradient":
        twin = dense_twin(spec)
        dense_loss = lambda params, batch: twin.loss(params, {}, batch)
    flow = make_flow(cfg.sparsity, spec, cfg.run.steps, dense_loss)
    make = lambda: flow.init(init_state(fns, tx, cfg.run.seed))
    state = jax.eval_shape(make) if abstract else make()
    return Setup(spec, model, fns, tx, schedule, flow, state)


def train_step_fn(fns: ModelFunctions, tx: optax.GradientTransformation, schedule, flow: Flow | None = None):
    """The pure `step(state, batch) -> (state, metrics)` (jitted by `make_train_step`, lowered to the
    RDU emulator by backend rdu).

    A flow's `mask` removes pruned blocks from the gradients and the updates (they stay zero).
    """
    mask = flow.mask if flow is not None else (lambda tree, state: tree)

    def step(state: dict, batch: dict):
        # The dropout key comes from the checkpointed rng: a resumed run drops the same units.
        next_key, dropout_key = jax.random.split(jax.random.wrap_key_data(state["rng"]))
        dropout_key = dropout_key if fns.spec.has_dropout else None
        loss, grads = jax.value_and_grad(fns.loss)(state["params"], state["indices"], batch, dropout_key)
        grads = mask(grads, state)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        updates = mask(updates, state)
        params = optax.apply_updates(state["params"], updates)
        rng = jax.random.key_data(next_key)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state["step"])}
        new = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": rng}
        return new, metrics

    return step


def make_train_step(fns: ModelFunctions, tx: optax.GradientTransformation, schedule, flow: Flow | None = None,
                    out_shardings=None):
    """A jitted `step(state, batch) -> (state, metrics)`; the state's buffers are donated.

    `out_shardings` (state shardings, metrics) keeps a sharded state's layout fixed across steps.
    """
    return jax.jit(train_step_fn(fns, tx, schedule, flow), donate_argnums=0, out_shardings=out_shardings)


def make_eval_step(fns: ModelFunctions):
    return jax.jit(fns.loss)


def evaluate(eval_step, state: dict, windows: np.ndarray, batch_size: int, max_batches: int) -> float:
    """Mean validation loss (nats/token) over the first `max_batches` fixed val batches."""
    losses = [float(eval_step(state["params"], state["indices"], b))
              for b in eval_batches(windows, batch_size, max_batches)]
    return float(np.mean(losses))


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def _check_resumable(cfg: Config, meta: dict) -> None:
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


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows logged after `last_step` (a crash after the checkpoint logged them once already)."""
    if path.is_file():
        rows = [r for r in read_jsonl(path) if r["step"] <= last_step]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def restore_run(run_dir: Path, step: int | None = None) -> tuple[Config, Setup, dict, dict]:
    """(recipe, abstract setup, state, meta) of a run's checkpoint (newest if `step` is None)."""
    ckpt = Checkpointer(Path(run_dir) / "checkpoints", keep_last=1_000_000)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"{run_dir}: no checkpoint in {ckpt.directory}")
        if step is not None and step not in steps:
            raise ValueError(f"step: {step} is not allowed; {run_dir} has checkpoints at steps {sorted(steps)}")
        meta = ckpt.read_meta(step)
        cfg = from_dict(Config, meta["recipe"])
        setup = build_setup(cfg, int(meta["vocab_size"]), abstract=True)
        state, meta = ckpt.restore(step, setup.state)
    finally:
        ckpt.close()
    return cfg, setup, state, meta


def _start_from_run(cfg: Config, setup: Setup, out: Path) -> tuple[dict, dict, list[dict]]:
    """The initial state converted from `sparsity.init_from`, its meta and its metrics rows."""
    src_dir = Path(cfg.sparsity.init_from)
    src_cfg, src_setup, src_state, meta = restore_run(src_dir, cfg.sparsity.init_step)
    state = convert_state(src_state, kind_infos(src_cfg.sparsity, src_setup.spec), setup.state,
                          kind_infos(cfg.sparsity, setup.spec), magnitude=cfg.sparsity.pattern == "magnitude")
    rows = [r for r in read_jsonl(src_dir / "metrics.jsonl") if r["step"] <= int(meta["step"])] \
        if (src_dir / "metrics.jsonl").is_file() else []
    return state, meta, rows


def _mesh_of(cfg: Config):
    """The recipe's (data, fsdp, tensor) mesh over the first devices, or None for one device."""
    r = cfg.run
    n = r.mesh_data * r.mesh_fsdp * r.mesh_tensor
    if n == 1:
        return None
    if n > jax.device_count():
        raise ConfigError(f"run.mesh_data*mesh_fsdp*mesh_tensor: {n} is not allowed; this process has "
                          f"{jax.device_count()} devices (on CPU, set XLA_FLAGS="
                          f"--xla_force_host_platform_device_count={n} before starting)")
    return make_mesh(r.mesh_data, r.mesh_fsdp, r.mesh_tensor, devices=jax.devices()[:n])


def train(cfg: Config, resume: bool = False, stop_after: int | None = None,
          progress: bool | None = None) -> dict:
    """Train a GPT from a validated recipe. Returns the run summary (also in OUT/summary.json).

    Args:
      cfg: the recipe (already validated by `load_recipe`).
      resume: continue from the newest complete checkpoint in the run directory.
      stop_after: stop (with a checkpoint) after this step, as if interrupted; the learning-rate
        schedule still spans `run.steps`.
      progress: show a progress bar (default: the recipe's `run.progress`).
    """
    check_trainable(cfg)  # a Llama preset is refused here, before any data or compile
    out = cfg.out_dir
    ckpt = Checkpointer(out / "checkpoints", cfg.run.keep_checkpoints)
    if ckpt.latest_step() is not None and not resume:
        raise ConfigError(f"run.name: {cfg.run.name!r} already has checkpoints in {out}; pass "
                          "--resume to continue it, or choose another run.name (nothing was changed)")
    out.mkdir(parents=True, exist_ok=True)
    init_from = cfg.sparsity.init_from and not (resume and ckpt.latest_step() is not None)
    if init_from and not (out / TOKENIZER_FILENAME).is_file():  # the embeddings need its tokens
        shutil.copy(Path(cfg.sparsity.init_from) / TOKENIZER_FILENAME, out / TOKENIZER_FILENAME)

    data = build_datasets(cfg.data, out)
    setup = build_setup(cfg, data.vocab_size)
    fns, tx, schedule, flow, state = setup.fns, setup.tx, setup.schedule, setup.flow, setup.state
    counts = model_counts(setup.model, cfg.data.seq_len)
    batches = BatchIterator(data.train, cfg.data.batch_size, cfg.data.seed)
    # flops_before: training FLOPs not counted by (step - start) * flops_per_step (earlier runs, RigL passes)
    start, wall_before, best_val, flops_before = 0, 0.0, math.inf, 0.0

    if init_from:
        state, meta, rows = _start_from_run(cfg, setup, out)
        if meta["fingerprint"] != data.fingerprint:
            raise ConfigError(f"sparsity.init_from: {cfg.sparsity.init_from!r} was trained on other data or "
                              "another tokenizer (fingerprints differ); use the same data section")
        batches.set_state(meta["data_state"])
        start, wall_before = int(meta["step"]), float(meta.get("wall_time_s", 0.0))
        flops_before = float(rows[-1].get("train_flops", 0.0)) if rows else 0.0
        (out / "metrics.jsonl").write_text("".join(json.dumps({**r, "init_from": True}) + "\n" for r in rows))
    elif resume and ckpt.latest_step() is not None:
        meta = ckpt.read_meta()
        _check_resumable(cfg, meta)
        if meta.get("fingerprint") != data.fingerprint:
            raise ConfigError(
                f"data: the tokenizer or validation data differ from the checkpoint's (step "
                f"{meta['step']} in {ckpt.directory}: vocab {meta.get('vocab_size')}, now "
                f"{data.vocab_size}); resume with the run's own tokenizer.json and data section "
                "(nothing was changed)")
        state, meta = ckpt.restore(None, state)
        batches.set_state(meta["data_state"])
        start, wall_before = int(meta["step"]), float(meta.get("wall_time_s", 0.0))
        best_val = float(meta.get("best_val_loss", math.inf))
        flops_before = float(meta.get("train_flops", start * counts.train_flops_per_token_effective
                                      * cfg.data.batch_size * cfg.data.seq_len))
        _truncate_jsonl(out / "metrics.jsonl", start)
    else:  # a fresh start: rows of an attempt killed before its first checkpoint do not count
        _truncate_jsonl(out / "metrics.jsonl", 0)

    save_recipe(cfg, out / "recipe.yaml")  # only once the recipe is known to fit the run's checkpoints
    tracker = Tracker(out, cfg.run.wandb, cfg.run.wandb_project, cfg.run.name, cfg.to_dict(),
                      resume=resume)
    mesh, out_shardings = _mesh_of(cfg), None
    if mesh is not None:  # place the state on the mesh; XLA (GSPMD) partitions the step
        shardings = tree_shardings(state, mesh)
        state = jax.device_put(state, shardings)
        out_shardings = (shardings, None)
    if cfg.run.backend == "rdu":
        from sparsetrain.rdu_step import EmulatedTrainStep
        train_step = EmulatedTrainStep(train_step_fn(fns, tx, schedule, flow), cfg.run.rdu_chip)
    else:
        train_step = make_train_step(fns, tx, schedule, flow, out_shardings=out_shardings)
    eval_step = make_eval_step(fns)
    flow_step = jax.jit(flow.update, donate_argnums=0) if flow.update is not None else None
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops_per_step = counts.train_flops_per_token_effective * tokens_per_step
    end = cfg.run.steps if stop_after is None else min(stop_after, cfg.run.steps)
    show = cfg.run.progress if progress is None else progress

    step_times: list[float] = []
    val_loss, skipped_in_a_row, skipped = math.nan, 0, 0
    t_run = time.perf_counter()
    bar = tqdm(range(start, end), initial=start, total=end, desc=cfg.run.name, disable=not show,
               dynamic_ncols=True)
    for step in bar:
        batch = batches.next()
        if mesh is not None:
            batch = jax.device_put(batch, batch_sharding(mesh))
        t0 = time.perf_counter()
        state, metrics = train_step(state, batch)
        done = step + 1
        if flow_step is not None and flow.is_update_step(done):
            state, flow_metrics = flow_step(state, batch)
            metrics = {**metrics, **flow_metrics}
            flops_before += flow.update_cost_dense_steps * counts.train_flops_per_token_dense * tokens_per_step
            if cfg.run.backend == "rdu":  # new block indices, new gather costs
                train_step.reprice(state, batch)
        metrics = jax.device_get(metrics)
        step_times.append(time.perf_counter() - t0)
        row = {k: float(v) for k, v in metrics.items()}
        row.update(tokens=done * tokens_per_step, train_flops=flops_before + (done - start) * flops_per_step)
        if cfg.run.backend == "rdu":
            from sparsetrain.rdu_step import emulated_metrics
            row.update(emulated_metrics(train_step, tokens_per_step))
        finite = math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
        skipped_in_a_row = 0 if finite else skipped_in_a_row + 1
        skipped += not finite
        if not finite and (cfg.run.nonfinite == "stop" or skipped_in_a_row > cfg.run.max_skipped_steps):
            tracker.log(row, done)
            tracker.finish()
            why = (f"{skipped_in_a_row} non-finite steps in a row (run.max_skipped_steps="
                   f"{cfg.run.max_skipped_steps})" if cfg.run.nonfinite == "skip" else "run.nonfinite=stop")
            raise FloatingPointError(
                f"loss {row['loss']}, gradient norm {row['grad_norm']} at step {done}; stopping ({why}). "
                f"The last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}")
        if not finite:
            row["skipped"] = 1.0
            print(f"{cfg.run.name}: non-finite loss/gradient at step {done}: update skipped "
                  f"({skipped_in_a_row} in a row, at most {cfg.run.max_skipped_steps})", file=sys.stderr)
        if done % cfg.run.log_every == 0 or done == end:
            recent = step_times[1:][-cfg.run.log_every:] or step_times[-1:]
            tps = tokens_per_step / statistics.median(recent)
            row.update(tokens_per_s=tps, tflops_dense=tps * counts.train_flops_per_token_dense / 1e12,
                       tflops_effective=tps * counts.train_flops_per_token_effective / 1e12)
        if done % cfg.run.eval_every == 0 or done % cfg.run.checkpoint_every == 0 or done == end:
            val_loss = evaluate(eval_step, state, data.val, cfg.data.batch_size, cfg.run.eval_batches)
            best_val = min(best_val, val_loss)
            row.update(val_loss=val_loss, val_ppl=math.exp(min(val_loss, 50.0)))
        tracker.log(row, done)
        bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{val_loss:.3f}")
        if done % cfg.run.checkpoint_every == 0 or done == end:
            meta = {"step": done, "data_state": batches.state(), "recipe": cfg.to_dict(),
                    "vocab_size": data.vocab_size, "fingerprint": data.fingerprint,
                    "val_loss": val_loss, "best_val_loss": best_val,
                    "train_flops": flops_before + (done - start) * flops_per_step,
                    "wall_time_s": wall_before + time.perf_counter() - t_run}
            try:
                ckpt.save(done, state, meta, val_loss)
            except CheckpointSaveError:  # reported with the step that is kept; W&B closed cleanly
                tracker.finish()
                raise
    bar.close()

    steady = step_times[2:] or step_times
    step_time = statistics.median(steady) if steady else math.nan
    summary = {
        "run": cfg.run.name, "steps": end, "final_loss": row["loss"] if step_times else math.nan,
        "final_val_loss": val_loss, "best_val_loss": best_val,
        "step_time_s": step_time, "tokens_per_s": tokens_per_step / step_time,
        "tokens": end * tokens_per_step,
        "params_dense": counts.params_dense, "params_stored": counts.params_stored,
        "params_alive": counts.params_stored - pruned_params(state),
        "train_flops_effective": flops_before + flops_per_step * (end - start),
        "train_flops_dense": counts.train_flops_per_token_dense * end * tokens_per_step,
        "flow": flow.name, "train_step_compiles": train_step._cache_size(), "skipped_steps": skipped,
        "wall_time_s": wall_before + time.perf_counter() - t_run,
        "vocab_size": data.vocab_size, "fingerprint": data.fingerprint,
        "train_bytes": data.train_bytes, "val_bytes": data.val_bytes, "backend": cfg.run.backend,
    }
    if cfg.run.backend == "rdu":
        summary.update(rdu_chip=cfg.run.rdu_chip, rdu_step_time_s=train_step.emulated_step_s,
                       rdu_bound=train_step.bound)
    tracker.summary(summary)
    tracker.finish()
    ckpt.close()
    return summary
