"""The arguments every command that reads a recipe takes: the file and `--set` overrides."""

from __future__ import annotations

import argparse


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe file (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set sparsity.density=0.125 (repeatable)")
