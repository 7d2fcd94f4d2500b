"""The training loop: recipe -> data -> GPT -> AdamW steps -> eval -> checkpoints -> metrics.

`train(cfg)` reads top to bottom: build the data, the model and the optimizer (`step.py`), find
where the run starts (`start.py`: fresh, resumed or converted from another run), choose the train
step once (XLA, or the emulated RDU), then run steps, evaluating and checkpointing on the
recipe's cadence, and write the summary.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from sparsetrain.config import Config, ConfigError, check_trainable, save_recipe
from sparsetrain.data.pipeline import TOKENIZER_FILENAME, BatchIterator, Datasets, build_datasets, \
    load_run_tokenizer
from sparsetrain.errors import TrainingStoppedError
from sparsetrain.kernels.attention import attention_kernel
from sparsetrain.kernels.dispatch import kernel_backend, kernel_backend_info
from sparsetrain.models.accounting import ModelCounts, model_counts
from sparsetrain.rdu.step import EmulatedTrainStep
from sparsetrain.run_files import write_atomic
from sparsetrain.sparsity.schedule import pruned_params
from sparsetrain.training.checkpoint import Checkpointer, steps_on_disk
from sparsetrain.training.multiprocess import batch_share, global_batch, is_primary, primary_first
from sparsetrain.training.sharding import make_mesh, tree_shardings
from sparsetrain.training.start import Start, finished_summary, initial_state
from sparsetrain.training.step import Setup, XlaTrainStep, build_setup, evaluate, make_eval_step, train_step_fn
from sparsetrain.training.tracking import Tracker


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


def _mesh_context(mesh):
    """`jax.set_mesh(mesh)`, or nothing for one device."""
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


def choose_train_step(cfg: Config, setup: Setup, out_shardings=None):
    """The run's train step, chosen once: XLA-compiled, or executed on the emulated RDU."""
    step_fn = train_step_fn(setup.fns, setup.tx, setup.schedule, setup.flow)
    if cfg.run.backend == "rdu":
        return EmulatedTrainStep(step_fn, cfg.run.rdu_chip)
    return XlaTrainStep(step_fn, out_shardings)


@dataclass
class _Progress:
    """What the loop accumulates across steps."""

    start: Start
    step_times: list[float] = field(default_factory=list)
    val_loss: float = math.nan
    skipped_in_a_row: int = 0
    skipped: int = 0
    last_loss: float = math.nan
    t_run: float = field(default_factory=time.perf_counter)


def _check_finite(cfg: Config, row: dict, done: int, prog: _Progress, tracker: Tracker,
                  ckpt: Checkpointer) -> None:
    """Count a non-finite step; stop (TrainingStoppedError) per run.nonfinite, else mark it skipped."""
    finite = math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
    prog.skipped_in_a_row = 0 if finite else prog.skipped_in_a_row + 1
    prog.skipped += not finite
    if finite:
        return
    r = cfg.run
    if r.nonfinite == "stop" or prog.skipped_in_a_row > r.max_skipped_steps:
        tracker.log(row, done)
        tracker.finish()
        why = (f"{prog.skipped_in_a_row} non-finite steps in a row (run.max_skipped_steps="
               f"{r.max_skipped_steps})" if r.nonfinite == "skip" else "run.nonfinite=stop")
        raise TrainingStoppedError(
            f"loss {row['loss']}, gradient norm {row['grad_norm']} at step {done}; stopping ({why}). "
            f"The last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}")
    row["skipped"] = 1.0
    print(f"{r.name}: non-finite loss/gradient at step {done}: update skipped "
          f"({prog.skipped_in_a_row} in a row, at most {r.max_skipped_steps})", file=sys.stderr)


def _summary(cfg: Config, data: Datasets, counts: ModelCounts, setup: Setup, train_step, state: dict,
             prog: _Progress, end: int) -> dict:
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops_per_step = counts.train_flops_per_token_effective * tokens_per_step
    steady = prog.step_times[2:] or prog.step_times
    step_time = statistics.median(steady) if steady else math.nan
    start = prog.start
    return {
        "run": cfg.run.name, "steps": end, "final_loss": prog.last_loss,
        "final_val_loss": prog.val_loss, "best_val_loss": start.best_val,
        "step_time_s": step_time, "tokens_per_s": tokens_per_step / step_time,
        "tokens": end * tokens_per_step,
        "params_dense": counts.params_dense, "params_stored": counts.params_stored,
        "params_alive": counts.params_stored - pruned_params(state),
        "train_flops_effective": start.flops_before + flops_per_step * (end - start.step),
        "train_flops_dense": counts.train_flops_per_token_dense * end * tokens_per_step,
        "flow": setup.flow.name, **train_step.summary(), "skipped_steps": prog.skipped,
        "wall_time_s": start.wall_before + time.perf_counter() - prog.t_run,
        "vocab_size": data.vocab_size, "fingerprint": data.fingerprint,
        "train_bytes": data.train_bytes, "val_bytes": data.val_bytes, "backend": cfg.run.backend,
    }


def _prepare(cfg: Config, mesh, resume: bool, resume_step: int | None, end: int
             ) -> tuple[Datasets, Setup, ModelCounts, Checkpointer, Start]:
    """Data (tokenizer written), model (on `mesh`, or None), checkpointer and start state; then
    recipe.yaml (not for a run already finished at `end`, which is left unchanged)."""
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(out / "checkpoints", cfg.run.keep_checkpoints)
    try:
        resuming = resume and ckpt.latest_step() is not None
        if resuming:
            load_run_tokenizer(out)  # missing or damaged: DamagedFileError, never a new tokenizer
        converting = cfg.sparsity.init_from and not resuming
        if converting and is_primary() and not (out / TOKENIZER_FILENAME).is_file():  # embeddings need its tokens
            write_atomic(out / TOKENIZER_FILENAME,
                         (Path(cfg.sparsity.init_from) / TOKENIZER_FILENAME).read_bytes())
        # Many processes: process 0 trains and saves the tokenizer, the others then load that file
        # (one tokenizer by construction, not by trusting BPE training to be bit-identical everywhere).
        data = primary_first(lambda: build_datasets(cfg.data, out), "tokenizer")
        setup = build_setup(cfg, data.vocab_size)
        if mesh is not None:  # on the mesh before a restore, so a checkpoint loads straight onto it
            setup.state = jax.device_put(setup.state, tree_shardings(setup.state, mesh))
        counts = model_counts(setup.model, cfg.data.seq_len)
        tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        start = initial_state(cfg, setup, data, ckpt, resume,
                              counts.train_flops_per_token_effective * tokens_per_step, resume_step)
        if start.step < end and is_primary():  # only once the recipe is known to fit the checkpoints
            save_recipe(cfg, out / "recipe.yaml")
    except BaseException:
        ckpt.close()
        raise
    return data, setup, counts, ckpt, start


def check_before_writing(cfg: Config, resume: bool) -> None:
    """Every check that needs no data, run before anything is written or compiled.

    Raises:
      ConfigError: a Llama preset (not trainable), a mesh larger than this process's devices, a
        run directory that cannot be created, or checkpoints already there without --resume.
    """
    check_trainable(cfg)
    _mesh_of(cfg)  # the mesh against the device count (batch divisibility: recipe validation)
    out = cfg.out_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run.out_dir: {str(out)!r} is a file; expected a run directory")
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise ConfigError(f"run.out_dir: {str(out)!r} cannot be created ({parent} is not a "
                          "writable directory)")
    if not resume and steps_on_disk(out / "checkpoints"):
        raise ConfigError(f"run.name: {cfg.run.name!r} already has checkpoints in {out}; "
                          "pass --resume to continue it, or choose another run.name "
                          "(nothing was changed)")


def kernels_in_use(cfg: Config) -> dict:
    """The kernels the run's step traces: block-sparse matmul and causal attention (names as in
    sparsetrain.kernels.dispatch), and a line describing the block-sparse one."""
    dtype = jnp.dtype(cfg.model.dtype)
    name, detail = kernel_backend(dtype), kernel_backend_info()
    if not detail.startswith(f"{name}:"):  # the info line names float32 calls' kernel
        detail = f"{name}: pure-JAX kernel (the compiled kernel takes float32; the model computes in {dtype.name})"
    return {"block_sparse": name, "attention": attention_kernel(dtype), "block_sparse_detail": detail}


def train(cfg: Config, resume: bool = False, stop_after: int | None = None,
          progress: bool | None = None, resume_step: int | None = None) -> dict:
    """Train a GPT from a validated recipe. Returns the run summary (also in OUT/summary.json).

    Every check that needs no data runs first (`check_before_writing`); a run directory this call
    creates is removed again if building the data, the model or the start state fails.

    Args:
      cfg: the recipe (already validated by `load_recipe`).
      resume: continue from the newest complete checkpoint in the run directory.
      stop_after: stop (with a checkpoint) after this step, as if interrupted; the learning-rate
        schedule still spans `run.steps`.
      progress: show a progress bar (default: the recipe's `run.progress`).
      resume_step: with `resume`, continue from this checkpoint instead of the newest that
        restores (damaged ones are skipped, named on stderr and left on disk).
    """
    check_before_writing(cfg, resume)
    end = cfg.run.steps if stop_after is None else min(stop_after, cfg.run.steps)
    out, mesh = cfg.out_dir, _mesh_of(cfg)
    with _mesh_context(mesh):  # the kernels a call traced under the run's mesh takes
        kernels = kernels_in_use(cfg)
    if is_primary():
        print(f"{cfg.run.name}: writing {out.absolute()}; kernels: block-sparse "
              f"{kernels['block_sparse_detail']}, attention {kernels['attention']}", file=sys.stderr)
    created = [p for p in (out.absolute(), *out.absolute().parents) if not p.exists()]
    try:
        data, setup, counts, ckpt, start = _prepare(cfg, mesh, resume, resume_step, end)
    except BaseException:
        if created:  # nothing of a run that never started is left behind
            shutil.rmtree(created[-1], ignore_errors=True)
        raise
    if start.step >= end:  # a finished run: report it, change nothing (no recipe, metrics, W&B)
        ckpt.close()
        return finished_summary(cfg, start.step, end)
    tracker = Tracker(out, cfg.run.wandb, cfg.run.wandb_project, cfg.run.name, cfg.to_dict(), resume=resume,
                      primary=is_primary())
    state, out_shardings = start.state, None
    if mesh is not None:  # place the state on the mesh; XLA (GSPMD) partitions the step
        shardings = tree_shardings(state, mesh)
        state = jax.device_put(state, shardings)
        out_shardings = (shardings, None)
    train_step = choose_train_step(cfg, setup, out_shardings)
    prog = _Progress(start)
    # The mesh in force while the steps are traced: the compiled kernels run on each device's shard.
    try:  # whatever stops the run, the W&B run and the checkpointer are closed
        with _mesh_context(mesh):
            state = _run_steps(cfg, setup, data, counts, train_step, state, mesh, prog, tracker, ckpt,
                               end, (cfg.run.progress if progress is None else progress) and is_primary())
            summary = {**_summary(cfg, data, counts, setup, train_step, state, prog, end),
                       "kernels": kernels}
        tracker.summary(summary)
    finally:
        tracker.finish()
        ckpt.close()
    return summary


def _run_steps(cfg: Config, setup: Setup, data: Datasets, counts: ModelCounts, train_step, state: dict,
               mesh, prog: _Progress, tracker: Tracker, ckpt: Checkpointer, end: int, show: bool) -> dict:
    """Steps start+1 .. end: train, update masks, log, evaluate and checkpoint. Returns the state."""
    r, start, flow = cfg.run, prog.start, setup.flow
    p, n = batch_share(mesh, cfg.data.batch_size)  # this process's rows of every global batch
    batches = BatchIterator(data.train, cfg.data.batch_size, cfg.data.seed, process_index=p, process_count=n)
    if start.data_state is not None:
        batches.set_state(start.data_state)
    flow_step = jax.jit(flow.update, donate_argnums=0) if flow.update is not None else None
    eval_step = make_eval_step(setup.fns)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops_per_step = counts.train_flops_per_token_effective * tokens_per_step
    bar = tqdm(range(start.step, end), initial=start.step, total=end, desc=r.name, disable=not show,
               dynamic_ncols=True)
    for step in bar:
        batch = batches.next()
        if mesh is not None:
            batch = global_batch(batch, mesh, cfg.data.batch_size)
        t0 = time.perf_counter()
        state, metrics = train_step(state, batch)
        done = step + 1
        if flow_step is not None and flow.is_update_step(done):
            state, flow_metrics = flow_step(state, batch)
            metrics = {**metrics, **flow_metrics}
            start.flops_before += flow.update_cost_dense_steps * counts.train_flops_per_token_dense * tokens_per_step
            train_step.after_mask_update(state, batch)
        metrics = jax.device_get(metrics)
        prog.step_times.append(time.perf_counter() - t0)
        row = {k: float(v) for k, v in metrics.items()}
        row.update(tokens=done * tokens_per_step, train_flops=start.flops_before + (done - start.step) * flops_per_step,
                   **train_step.step_metrics(tokens_per_step))
        _check_finite(cfg, row, done, prog, tracker, ckpt)
        prog.last_loss = row["loss"]
        if done % r.log_every == 0 or done == end:
            recent = prog.step_times[1:][-r.log_every:] or prog.step_times[-1:]
            tps = tokens_per_step / statistics.median(recent)
            row.update(tokens_per_s=tps, tflops_dense=tps * counts.train_flops_per_token_dense / 1e12,
                       tflops_effective=tps * counts.train_flops_per_token_effective / 1e12)
        checkpoint = done % r.checkpoint_every == 0 or done == end
        if done % r.eval_every == 0 or checkpoint:
            prog.val_loss = evaluate(eval_step, state, data.val, cfg.data.batch_size, r.eval_batches)
            start.best_val = min(start.best_val, prog.val_loss)
            row.update(val_loss=prog.val_loss, val_ppl=math.exp(min(prog.val_loss, 50.0)))
        tracker.log(row, done)
        bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{prog.val_loss:.3f}")
        if checkpoint:
            ckpt.save(done, state, {
                "step": done, "data_state": batches.state(), "recipe": cfg.to_dict(),
                "vocab_size": data.vocab_size, "fingerprint": data.fingerprint,
                "val_loss": prog.val_loss, "best_val_loss": start.best_val,
                "train_flops": start.flops_before + (done - start.step) * flops_per_step,
                "wall_time_s": start.wall_before + time.perf_counter() - prog.t_run}, prog.val_loss)
    bar.close()
    return state
