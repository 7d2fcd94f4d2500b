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
    sparsetrain launch --processes N [--devices-per-process D] -- train RECIPE ...

Every expected error is printed as one line, `sparsetrain: KIND: MESSAGE`, with the exit status
of its class in sparsetrain/errors.py (2 bad input, 3 training stopped by a NaN/inf loss, 4 a
failed write such as a full disk, 5 damaged run files, 6 a lost process), before anything is
written when it is bad input. An unexpected error prints one line and exits with 1;
`sparsetrain --debug ...` (or SPARSETRAIN_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sparsetrain.errors import SparsetrainError

DESCRIPTION = ("Train dense and block-sparse GPTs, evaluate and compare them, and estimate their\n"
               "step on an emulated SambaNova RDU.")
EPILOG = """errors are one line, `sparsetrain: KIND: MESSAGE`; exit status 0 success, 1 unexpected (a bug:
rerun with --debug), 2 bad input, 3 training stopped (non-finite loss), 4 a write failed (full
disk), 5 damaged run files, 6 a lost process, 130 interrupted. `sparsetrain COMMAND --help`
describes a command."""

# Command name -> its module under sparsetrain/commands/, in the order --help lists them. A
# command's module imports the libraries it runs (datasets, Orbax, ...): only the module of the
# command given is imported, so `sparsetrain emulate` does not pay for the data pipeline.
COMMANDS = {"train": "train", "info": "info", "fields": "fields", "emulate": "emulate",
            "eval": "evaluate", "compare": "compare", "import-hf": "import_hf",
            "export-hf": "export_hf", "generate": "generate", "launch": "launch"}


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with ``command``'s alone when it is a known one."""
    parser = argparse.ArgumentParser(
        prog="sparsetrain", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=24,
                                                                           width=100))
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also SPARSETRAIN_DEBUG=1)")
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
    command = next((a for a in argv if not a.startswith("-")), None)
    debug = "--debug" in argv[:argv.index(command) if command in argv else len(argv)] or \
        os.environ.get("SPARSETRAIN_DEBUG", "") not in ("", "0")
    if debug:  # libraries that hold back noise (a failed checkpoint save's) show it too
        os.environ["SPARSETRAIN_DEBUG"] = "1"
    try:
        parser = _parser(command)  # imports the command's module (a bad $SPARSETRAIN_KERNEL stops here)
    except Exception as e:
        if debug:
            raise
        return report(e)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except Exception as e:
        if debug:
            raise
        return report(e)
    except KeyboardInterrupt:
        if debug:
            raise
        print("sparsetrain: interrupted", file=sys.stderr)
        return 130


def report(e: BaseException) -> int:
    """Print `e` as one line on stderr; return its exit status (1 when it is unexpected)."""
    if isinstance(e, SparsetrainError):
        print(f"sparsetrain: {e.kind}: {e}", file=sys.stderr)
        return e.exit_code
    if isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError)):
        # field errors of the data loader, argument checks, a path that is not there
        print(f"sparsetrain: input error: {e}", file=sys.stderr)
        return 2
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    print(f"sparsetrain: unexpected error: {type(e).__name__}: {first[:300]} "
          "(rerun with --debug for the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
