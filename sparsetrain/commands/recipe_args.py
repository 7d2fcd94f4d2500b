"""Arguments several commands share: a recipe file with `--set` overrides; sampling options."""

from __future__ import annotations

import argparse


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe file (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set sparsity.density=0.125 (repeatable)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """How `eval` and `generate` sample continuations (`evaluation.generate.Generator`)."""
    p.add_argument("--temperature", type=non_negative_float, default=0.8,
                   help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=non_negative_int, default=40,
                   help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is argparse's one-line usage error)."""
    return _bounded(text, int, 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    return _bounded(text, int, 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    return _bounded(text, float, 0.0, "a number >= 0")


def _bounded(text: str, kind, low, allowed: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < low or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected {allowed}")
    return value
