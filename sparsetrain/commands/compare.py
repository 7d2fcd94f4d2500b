"""`sparsetrain compare RUN [RUN ...] [--baseline NAME] [--out DIR] [--force] [--batches N]`: a
table and a plot of runs against a dense baseline (sparsetrain/evaluation/compare.py).

The output directory (default: `compare/` next to the first run) is refused when it already
holds files, unless --force: an earlier comparison is never replaced silently.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsetrain.commands.paths import new_directory, run_directory
from sparsetrain.commands.recipe_args import positive_int
from sparsetrain.errors import InputError
from sparsetrain.evaluation.compare import compare_runs, log_to_wandb, markdown_table, write_outputs


def _run_cli(args: argparse.Namespace) -> int:
    for run in args.runs:  # before anything is evaluated or written
        run_directory(run, "compare")
    out = Path(args.out or Path(args.runs[0]).parent / "compare")
    if not args.force:
        new_directory(out, "--out" if args.out else f"--out (default {out})")
    try:
        result = compare_runs(args.runs, args.baseline, args.batches)
    except FileNotFoundError as e:  # a run directory without checkpoints; others: see cli.report
        raise InputError(str(e)) from e
    paths = write_outputs(result, out)
    wandb_dir = log_to_wandb(result, paths, out)
    print(markdown_table(result))
    print(f"\nwritten: {', '.join(str(p) for p in paths.values())}" + (f"; W&B run {wandb_dir}" if wandb_dir else ""))
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain compare`."""
    p = subparsers.add_parser("compare", help="table and plot of runs against a dense baseline")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (same data and tokenizer)")
    p.add_argument("--baseline", default=None, help="run name or dir of the baseline (default: first dense run)")
    p.add_argument("--out", default=None, help="output directory (default: <parent of first run>/compare); "
                   "refused when it holds files, unless --force")
    p.add_argument("--force", action="store_true", help="replace the files of an earlier comparison in --out")
    p.add_argument("--batches", type=positive_int, default=None,
                   help="at most this many val batches per run (default: the whole validation split)")
    p.set_defaults(run=_run_cli)
