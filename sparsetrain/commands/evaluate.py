"""`sparsetrain eval RUN [--step N] ...`: val loss, perplexity, bits per byte and samples of a
checkpoint (sparsetrain/evaluation/evaluate.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sparsetrain.commands.paths import run_directory
from sparsetrain.commands.recipe_args import add_sampling_args, non_negative_int, positive_int
from sparsetrain.errors import InputError
from sparsetrain.evaluation.evaluate import DEFAULT_PROMPT, evaluate_run, format_eval
from sparsetrain.run_files import write_atomic


def _run_cli(args: argparse.Namespace) -> int:
    run_directory(args.run_dir, "eval")  # before anything is opened (or created) there
    try:
        result = evaluate_run(args.run_dir, args.step, args.batches, args.prompt, args.samples, args.tokens,
                              args.temperature, args.top_k, args.seed)
    except FileNotFoundError as e:  # no run directory or no checkpoint; other errors: see cli.report
        raise InputError(str(e)) from e
    out = Path(args.run_dir) / f"eval-{result['step']}.json"
    write_atomic(out, json.dumps(result, indent=2))
    print(json.dumps(result, indent=2) if args.json else format_eval(result))
    print(f"(written to {out})", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain eval`."""
    p = subparsers.add_parser("eval", help="val loss, perplexity, bits per byte and samples of a checkpoint")
    p.add_argument("run_dir", metavar="RUN", help="run directory (holds checkpoints/, tokenizer.json, metrics.jsonl)")
    p.add_argument("--step", type=positive_int, default=None,
                   help="checkpoint step (default: the newest that restores; damaged ones are skipped)")
    p.add_argument("--batches", type=positive_int, default=None, help="at most this many val batches (default: all)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="text the samples continue")
    p.add_argument("--samples", type=non_negative_int, default=3, help="number of sampled continuations")
    p.add_argument("--tokens", type=non_negative_int, default=64, help="tokens per sample")
    add_sampling_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_run_cli)
