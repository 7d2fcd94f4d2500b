"""Arguments several commands share: a recipe file with `--set` overrides; sampling options."""

from __future__ import annotations

import argparse


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe file (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set sparsity.density=0.125 (repeatable)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """How `eval` and `generate` sample continuations (`evaluation.generate.Generator`)."""
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
