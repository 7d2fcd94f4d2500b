"""The `sparsetrain` command: one subcommand per module of sparsetrain/commands/.

    sparsetrain train   RECIPE [--set a.b=value ...] [--resume] [--stop-after N] [--backend xla|rdu]
    sparsetrain info    RECIPE [--set a.b=value ...] [--json] [--mesh DxFxT]
    sparsetrain fields                        # every recipe field with its default and meaning
    sparsetrain emulate RECIPE [--chip sn40l] [--vs a100] [--mode train|prefill|decode] ...
    sparsetrain eval    RUN [--step N] [--samples 3] ...
    sparsetrain compare RUN [RUN ...] [--baseline NAME]
    sparsetrain import-hf SOURCE --out RUN    # a Hugging Face GPT-2 as a run directory
    sparsetrain export-hf RUN --out DIR       # a run's checkpoint as a Hugging Face GPT-2
    sparsetrain generate RUN --prompt TEXT    # continue a prompt with the KV cache

Recipe errors are printed as one line naming the field, the value and what is allowed, with
exit status 2, before anything is compiled. A run stopped by a NaN/inf loss exits with 3, a
checkpoint that cannot be saved (full disk) with 4; both keep the earlier checkpoints.
"""

from __future__ import annotations

import argparse
import sys

from sparsetrain.commands import (compare, emulate, evaluate, export_hf, fields, generate, import_hf,
                                  info, train)
from sparsetrain.errors import CheckpointMismatchError, CheckpointSaveError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsetrain", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _commands():
        register(sub)
    return parser


def _commands():
    """`register(subparsers)` of every command module (sparsetrain/commands/). Each adds a
    subparser with `set_defaults(run=fn)`, where `fn(args) -> int` is the exit status."""
    return [train.register, info.register, fields.register, emulate.register, evaluate.register,
            compare.register, import_hf.register, export_hf.register, generate.register]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except CheckpointMismatchError as e:
        print(f"sparsetrain: checkpoint error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # ConfigError and the data loader's field errors
        print(f"sparsetrain: recipe error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a NaN/inf loss (run.nonfinite)
        print(f"sparsetrain: training stopped: {e}", file=sys.stderr)
        return 3
    except CheckpointSaveError as e:  # a full disk: earlier checkpoints kept
        print(f"sparsetrain: checkpoint error: {e}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
