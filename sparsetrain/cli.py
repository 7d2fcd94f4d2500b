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
import importlib
import sys

from sparsetrain.errors import CheckpointMismatchError, CheckpointSaveError

# Command name -> its module under sparsetrain/commands/, in the order --help lists them. A
# command's module imports the libraries it runs (datasets, Orbax, ...): only the module of the
# command given is imported, so `sparsetrain emulate` does not pay for the data pipeline.
COMMANDS = {"train": "train", "info": "info", "fields": "fields", "emulate": "emulate",
            "eval": "evaluate", "compare": "compare", "import-hf": "import_hf",
            "export-hf": "export_hf", "generate": "generate"}


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with ``command``'s alone when it is a known one."""
    parser = argparse.ArgumentParser(prog="sparsetrain", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _commands(command):
        register(sub)
    return parser


def _commands(command: str | None = None):
    """`register(subparsers)` of the command modules (sparsetrain/commands/): ``command``'s, or
    all. Each adds a subparser with `set_defaults(run=fn)`, where `fn(args) -> int` is the exit
    status."""
    names = [COMMANDS[command]] if command in COMMANDS else list(COMMANDS.values())
    return [importlib.import_module(f"sparsetrain.commands.{name}").register for name in names]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv[0] if argv else None).parse_args(argv)
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
