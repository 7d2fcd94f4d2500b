"""`sparsetrain export-hf RUN --out DIR`: a run's checkpoint as a Hugging Face GPT-2 directory.

DIR holds config.json, model.safetensors (block-sparse linears densified: zeros where no block is
stored), tokenizer.json and tokenizer_config.json; `transformers` loads it with
`GPT2LMHeadModel.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)`.
"""

from __future__ import annotations

import argparse

from sparsetrain.commands.paths import new_directory, run_directory
from sparsetrain.commands.recipe_args import positive_int
from sparsetrain.evaluation.hf_gpt2 import export_run


def run(args: argparse.Namespace) -> int:
    run_directory(args.run_dir, "export-hf")  # before anything is opened (or created)
    new_directory(args.out, "--out")
    out = export_run(args.run_dir, args.out, args.step)
    print(f"wrote {out} (GPT2LMHeadModel, safetensors)")
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain export-hf`."""
    p = subparsers.add_parser("export-hf", help="a run's checkpoint as a Hugging Face GPT-2 directory")
    p.add_argument("run_dir", metavar="RUN", help="run directory (checkpoints/, tokenizer.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="new output directory")
    p.add_argument("--step", type=positive_int, default=None, help="checkpoint step (default: newest)")
    p.set_defaults(run=run)
