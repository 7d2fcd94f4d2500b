"""`sparsetrain fields`: every recipe field with its default and meaning."""

from __future__ import annotations

import argparse

from sparsetrain.config import describe_fields


def run(args: argparse.Namespace) -> int:
    print("\n".join(describe_fields()))
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain fields`."""
    p = subparsers.add_parser("fields", help="list every recipe field with its default and meaning")
    p.set_defaults(run=run)
