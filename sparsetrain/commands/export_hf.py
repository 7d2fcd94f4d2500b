"""`sparsetrain export-hf RUN --out DIR`: a run's checkpoint as a Hugging Face GPT-2 directory.

DIR holds config.json, model.safetensors (block-sparse linears densified: zeros where no block is
stored), tokenizer.json and tokenizer_config.json; `transformers` loads it with
`GPT2LMHeadModel.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)`.
"""

from __future__ import annotations

import argparse
import sys

from sparsetrain.errors import CheckpointMismatchError
from sparsetrain.evaluation.hf_gpt2 import export_run


def run(args: argparse.Namespace) -> int:
    try:
        out = export_run(args.run_dir, args.out, args.step)
    except (FileNotFoundError, ValueError, CheckpointMismatchError) as e:
        print(f"sparsetrain export-hf: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (GPT2LMHeadModel, safetensors)")
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain export-hf`."""
    p = subparsers.add_parser("export-hf", help="write a run's checkpoint as a Hugging Face GPT-2 directory")
    p.add_argument("run_dir", metavar="RUN", help="run directory (checkpoints/, tokenizer.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="new output directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.set_defaults(run=run)
