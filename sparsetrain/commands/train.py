"""`sparsetrain train RECIPE [--set k=v ...] [--resume] [--stop-after N] [--backend xla|rdu]`:
train a dense or block-sparse GPT (sparsetrain/training/loop.py) and print its summary."""

from __future__ import annotations

import argparse
import json

import datasets
import jax
import jax.numpy as jnp

from sparsetrain.commands.recipe_args import add_recipe_args
from sparsetrain.config import STEP_BACKENDS, load_recipe
from sparsetrain.errors import ProcessLostError
from sparsetrain.kernels.dispatch import kernel_backend, kernel_backend_info
from sparsetrain.training.loop import train
from sparsetrain.training.multiprocess import initialize_from_env, is_primary


def run(args: argparse.Namespace) -> int:
    datasets.disable_progress_bars()  # local files: "downloading" bars are noise
    initialize_from_env()  # many processes: `sparsetrain launch`, Slurm or MPI (multiprocess.py)
    backend = [f"run.backend={args.backend}"] if args.backend else []
    cfg = load_recipe(args.recipe, [*args.overrides, *backend])
    try:
        summary = train(cfg, resume=args.resume, stop_after=args.stop_after,
                        progress=False if args.no_progress else None)
    except jax.errors.JaxRuntimeError as e:  # a collective whose partner process is gone
        if jax.process_count() == 1:
            raise
        raise ProcessLostError(f"process {jax.process_index()} of {jax.process_count()}: a collective "
                               f"failed, another process died or stopped answering ({str(e)[:200]}); "
                               "resume with --resume") from e
    if is_primary():  # one summary per run, with the block-sparse kernel of its float32 calls
        kernel = {"kernel": kernel_backend(jnp.float32), "kernel_info": kernel_backend_info()}
        print(json.dumps({**summary, **kernel}, indent=2))
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain train`."""
    p = subparsers.add_parser("train", help="train a dense or block-sparse GPT from a recipe")
    add_recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="stop with a checkpoint after STEP (the schedule still spans run.steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--backend", default=None, choices=STEP_BACKENDS,
                   help="run.backend: xla (default) or rdu (each step runs through the RDU emulator, "
                   "which logs the emulated step time)")
    p.set_defaults(run=run)
