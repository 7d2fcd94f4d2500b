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

import datasets

from sparsetrain.evaluation.hf_gpt2 import import_run


def run(args: argparse.Namespace) -> int:
    datasets.disable_progress_bars()  # local files: "downloading" bars are noise
    try:
        summary = import_run(args.source, args.out, args.overrides)
    except ValueError as e:  # HFFormatError, ConfigError, data errors: one line, nothing written
        print(f"sparsetrain import-hf: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("run", "imported_from", "params_stored", "vocab_size",
                                              "fingerprint")}, indent=2))
    print(f"(written to {args.out})", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain import-hf`."""
    p = subparsers.add_parser("import-hf", help="import a Hugging Face GPT-2 checkpoint as a run directory")
    p.add_argument("source", metavar="SOURCE", help="local HF directory or hub name (online only)")
    p.add_argument("--out", required=True, metavar="RUN", help="new run directory, e.g. runs/gpt2")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="data.* or run.* field of the run's recipe, e.g. --set data.dataset=corpus/ "
                   "(repeatable)")
    p.set_defaults(run=run)
