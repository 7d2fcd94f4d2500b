"""The `sparsetrain` command: train, info, fields.

    sparsetrain train RECIPE [--set a.b=value ...] [--resume] [--stop-after N] [--backend xla|rdu]
    sparsetrain info  RECIPE [--set a.b=value ...] [--json]
    sparsetrain fields                      # every recipe field with its default and meaning

Recipe errors are printed as one line naming the field, the value and what is allowed, with
exit status 2, before anything is compiled. A run stopped by a NaN/inf loss exits with 3, a
checkpoint that cannot be saved (full disk) with 4; both keep the earlier checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from sparsetrain.errors import CheckpointMismatchError, CheckpointSaveError
from sparsetrain.config import ConfigError, describe_fields, load_recipe


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe file (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set sparsity.density=0.125 (repeatable)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsetrain", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a dense or block-sparse GPT from a recipe")
    _add_recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="stop with a checkpoint after STEP (the schedule still spans run.steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--backend", default=None, choices=("xla", "rdu"),
                   help="run.backend: xla (default) or rdu (each step runs through the RDU emulator, "
                   "which logs the emulated step time)")
    p = sub.add_parser("info", help="parameters, bytes and FLOPs of a recipe's model (no weights allocated)")
    _add_recipe_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--mesh", default=None, metavar="DxFxT",
                   help="also plan per-device memory on a data x fsdp x tensor mesh, e.g. 1x8x1")
    p.add_argument("--device", default="h100-80gb", help="device of the memory plan (h100-80gb, "
                   "a100-80gb, a100-40gb, h200)")
    sub.add_parser("fields", help="list every recipe field with its default and meaning")
    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """`register(subparsers)` functions of commands that live in their own modules. Each adds a
    subparser with `set_defaults(run=fn)`, where `fn(args) -> int` is the exit status."""
    from sparsetrain.compare import register as compare
    from sparsetrain.emulate import register as emulate
    from sparsetrain.evaluate import register as evaluate
    from sparsetrain.commands.import_hf import register as import_hf
    from sparsetrain.commands.export_hf import register as export_hf
    from sparsetrain.commands.generate import register as generate

    return [emulate, evaluate, compare, import_hf, export_hf, generate]


def _memory_plan(cfg, mesh_text: str, device: str) -> dict:
    """Plan on virtual CPU devices: set before JAX starts its backend (nothing has asked it yet)."""
    import jax

    from sparsetrain.memory_plan import memory_plan, parse_mesh

    mesh = parse_mesh(mesh_text)
    n = mesh[0] * mesh[1] * mesh[2]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={n}")
    jax.config.update("jax_platforms", "cpu")
    if jax.device_count() < n:
        raise ValueError(f"--mesh: {mesh_text!r} needs {n} devices; JAX already started with "
                         f"{jax.device_count()} (run `sparsetrain info` in a fresh process)")
    return memory_plan(cfg, mesh, device)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if hasattr(args, "run"):
            return args.run(args)
        if args.command == "fields":
            print("\n".join(describe_fields()))
            return 0
        if args.command == "info":
            from sparsetrain.info import format_info, model_info

            cfg = load_recipe(args.recipe, args.overrides, check_data=False)
            t0 = time.perf_counter()
            info = model_info(cfg)
            if args.mesh:
                info["memory_plan"] = _memory_plan(cfg, args.mesh, args.device)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                print(format_info(info))
                if args.mesh:
                    from sparsetrain.memory_plan import format_plan

                    print(format_plan(info["memory_plan"]))
                print(f"(from abstract shapes in {time.perf_counter() - t0:.1f} s)")
            return 0
        if args.command == "train":
            import datasets

            from sparsetrain.train import train

            datasets.disable_progress_bars()  # local files: "downloading" bars are noise
            if os.environ.get("JAX_COORDINATOR_ADDRESS"):  # many hosts: JAX's own rendezvous
                import jax

                jax.distributed.initialize()

            backend = [f"run.backend={args.backend}"] if args.backend else []
            cfg = load_recipe(args.recipe, [*args.overrides, *backend])
            summary = train(cfg, resume=args.resume, stop_after=args.stop_after,
                            progress=False if args.no_progress else None)
            print(json.dumps(summary, indent=2))
            return 0
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
    return 1


if __name__ == "__main__":
    sys.exit(main())
