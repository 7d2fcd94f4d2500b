"""`sparsetrain compare RUN [RUN ...] [--baseline NAME] [--out DIR] [--batches N]`: a table and a
plot of runs against a dense baseline (sparsetrain/evaluation/compare.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsetrain.errors import InputError
from sparsetrain.evaluation.compare import compare_runs, log_to_wandb, markdown_table, write_outputs


def _run_cli(args: argparse.Namespace) -> int:
    try:
        result = compare_runs(args.runs, args.baseline, args.batches)
    except FileNotFoundError as e:  # a run directory without checkpoints; others: see cli.report
        raise InputError(str(e)) from e
    out = Path(args.out or Path(args.runs[0]).parent / "compare")
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
    p.add_argument("--out", default=None, help="output directory (default: <parent of first run>/compare)")
    p.add_argument("--batches", type=int, default=None, help="at most this many val batches per run")
    p.set_defaults(run=_run_cli)
