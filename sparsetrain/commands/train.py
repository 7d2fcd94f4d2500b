"""`sparsetrain train RECIPE [--set k=v ...] [--resume] [--stop-after N] [--backend xla|rdu]`:
train a dense or block-sparse GPT (sparsetrain/training/loop.py) and print its summary."""

from __future__ import annotations

import argparse
import json

import datasets
import jax

from sparsetrain.commands.recipe_args import add_recipe_args, positive_int
from sparsetrain.config import STEP_BACKENDS, load_recipe
from sparsetrain.errors import ProcessLostError
from sparsetrain.training.loop import train
from sparsetrain.training.multiprocess import initialize_from_env, is_primary


def run(args: argparse.Namespace) -> int:
    datasets.disable_progress_bars()  # local files: "downloading" bars are noise
    initialize_from_env()  # many processes: `sparsetrain launch`, Slurm or MPI (multiprocess.py)
    backend = [f"run.backend={args.backend}"] if args.backend else []
    cfg = load_recipe(args.recipe, [*args.overrides, *backend])
    try:
        summary = train(cfg, resume=args.resume or args.resume_step is not None, stop_after=args.stop_after,
                        progress=False if args.no_progress else None, resume_step=args.resume_step)
    except jax.errors.JaxRuntimeError as e:  # a collective whose partner process is gone
        if jax.process_count() == 1:
            raise
        raise ProcessLostError(f"process {jax.process_index()} of {jax.process_count()}: a collective "
                               f"failed, another process died or stopped answering ({str(e)[:200]}); "
                               "resume with --resume") from e
    if is_primary():  # one summary per run (its "kernels" say which kernels ran)
        print(json.dumps(summary, indent=2))
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain train`."""
    p = subparsers.add_parser("train", help="train a dense or block-sparse GPT from a recipe")
    add_recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint that restores")
    p.add_argument("--resume-step", type=positive_int, default=None, metavar="STEP",
                   help="continue from this checkpoint (implies --resume)")
    p.add_argument("--stop-after", type=positive_int, default=None, metavar="STEP",
                   help="stop with a checkpoint after STEP (the schedule still spans run.steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--backend", default=None, choices=STEP_BACKENDS,
                   help="run.backend: xla (default) or rdu (each step runs through the RDU emulator, "
                   "which logs the emulated step time)")
    p.set_defaults(run=run)
