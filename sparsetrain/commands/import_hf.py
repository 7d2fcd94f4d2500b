"""`sparsetrain import-hf SOURCE --out RUN`: a Hugging Face GPT-2 as a run directory.

SOURCE is a local directory (config.json, model.safetensors, tokenizer files) or a hub name such
as `openai-community/gpt2` when the machine is online. RUN then holds a checkpoint (step 0), its
tokenizer.json and recipe.yaml, so `eval`, `compare`, `generate`, `export-hf`, `emulate
RUN/recipe.yaml` and `train --set sparsity.init_from=RUN` accept it. `--set data.*=...` chooses
the data those commands score on (a run started from it must use the same data section).
A source we cannot import exactly stops with one line naming the problem; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datasets

from sparsetrain.commands.paths import new_directory
from sparsetrain.data.checks import hub_reachable
from sparsetrain.errors import InputError
from sparsetrain.evaluation.hf_gpt2 import import_run


def run(args: argparse.Namespace) -> int:
    datasets.disable_progress_bars()  # local files: "downloading" bars are noise
    source = Path(args.source).expanduser()
    if not source.exists() and (args.source.startswith((".", "/", "~")) or not hub_reachable()):
        raise InputError(f"import-hf: {args.source!r} is not a local directory"
                         + ("" if args.source.startswith((".", "/", "~")) else
                            " and the Hugging Face hub cannot be reached (offline)"))
    new_directory(args.out, "--out")
    summary = import_run(args.source, args.out, args.overrides)  # nothing written on an error
    print(json.dumps({k: summary[k] for k in ("run", "imported_from", "params_stored", "vocab_size",
                                              "fingerprint")}, indent=2))
    print(f"(written to {args.out})", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain import-hf`."""
    p = subparsers.add_parser("import-hf", help="a Hugging Face GPT-2 checkpoint as a run directory")
    p.add_argument("source", metavar="SOURCE", help="local HF directory or hub name (online only)")
    p.add_argument("--out", required=True, metavar="RUN", help="new run directory, e.g. runs/gpt2")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="data.* or run.* field of the run's recipe, e.g. --set data.dataset=corpus/ "
                   "(repeatable)")
    p.set_defaults(run=run)
