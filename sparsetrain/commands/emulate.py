"""`sparsetrain emulate`: time a recipe's step on an emulated RDU against a GPU baseline.

    sparsetrain emulate RECIPE [--chip sn40l] [--sockets N] [--vs a100] [--gpus N]
                               [--mode train|prefill|decode] [--gpu-attention fused|unfused]
                               [--parallel auto|pipeline|tensor|data] [--micro-batches M]
                               [--schedule 1f1b|gpipe] [--unfused]
                               [--orchestration software|hardware] [--no-kernel-looping]
                               [--out DIR] [--json] [--from-run RUN] [--set key=value ...]

The estimate itself is `sparsetrain.rdu.estimate` (abstract shapes, concrete block indices, the
training headline against a Megatron-style GPU plan); this module parses the options and prints
the per-kernel table, the ratios and every assumption.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sparsetrain.commands.paths import new_directory, run_directory
from sparsetrain.commands.recipe_args import positive_int
from sparsetrain.config import load_recipe
from sparsetrain.rdu import headline as compare
from sparsetrain.rdu.estimate import EmulateOptions, estimate
from sparsetrain.rdu.programs import MODES


def register(subparsers) -> None:
    p = subparsers.add_parser("emulate", help="a recipe's step time on an emulated RDU vs a GPU "
                              "baseline (abstract shapes)")
    p.add_argument("recipe", help="YAML recipe file (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set data.batch_size=8 (repeatable)")
    p.add_argument("--chip", default="sn40l", help="RDU: sn40l, sn30, sn10 (default sn40l)")
    p.add_argument("--sockets", type=positive_int, default=None, help="RDU sockets (default: one "
                   "8-socket node for a training step, else 1)")
    p.add_argument("--vs", default="a100", help="GPU baseline: a100, a100-40gb, h100 (default "
                   "a100 = 80 GB)")
    p.add_argument("--gpus", type=positive_int, default=None, help="GPUs of the training baseline "
                   "(default: the smallest count from one 8-GPU node up that a plan fits; "
                   "inference: as many as sockets)")
    p.add_argument("--gpu-attention", default="fused", choices=("fused", "unfused"),
                   help="GPU training baseline attention: fused (FlashAttention-style, default) "
                   "or unfused (scores through HBM)")
    p.add_argument("--mode", default="train", choices=MODES,
                   help="train step, prefill (forward over the sequence, filling a KV cache) or "
                   "decode (one new token per sequence over a KV cache of data.seq_len positions)")
    p.add_argument("--parallel", default="auto", choices=("auto", "pipeline", "tensor", "data"),
                   help="how sockets split the step: auto (default: the fastest tensor x "
                   "pipeline x data plan that fits memory), or one split only")
    p.add_argument("--micro-batches", type=positive_int, default=None, help="micro-batches per data-"
                   "parallel replica (default: chosen; decode at batch 1 is never cut)")
    p.add_argument("--schedule", default="1f1b", choices=("1f1b", "gpipe"),
                   help="pipeline schedule (default 1f1b: at most P micro-batches in flight)")
    p.add_argument("--unfused", action="store_true", help="one kernel per operator")
    p.add_argument("--orchestration", default="software", choices=("software", "hardware"),
                   help="kernel launches sequenced by the host or by the chip")
    p.add_argument("--no-kernel-looping", action="store_true",
                   help="pay launch, fill and drain every layer")
    p.add_argument("--out", default=None, help="write report.json, kernels.md, timeline.png and "
                   "roofline.png to this directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--from-run", default=None, metavar="RUN", help="price the sparse kernels "
                   "with the block indices of this run directory's newest checkpoint (default: "
                   "the recipe's initial layout from its pattern and seed)")
    p.set_defaults(run=run)


def _options(args: argparse.Namespace) -> EmulateOptions:
    return EmulateOptions(
        chip=args.chip, sockets=args.sockets, vs=args.vs, gpus=args.gpus,
        gpu_attention=args.gpu_attention, mode=args.mode, parallel=args.parallel,
        micro_batches=args.micro_batches, schedule=args.schedule, unfused=args.unfused,
        orchestration=args.orchestration, kernel_looping=not args.no_kernel_looping,
        from_run=args.from_run)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.from_run is not None:
        run_directory(args.from_run, "emulate --from-run")
    if args.out is not None and not Path(args.out).is_dir():  # an existing folder: files replaced
        new_directory(args.out, "--out")
    cfg = load_recipe(args.recipe, args.overrides, check_data=False)
    dense_cfg = load_recipe(args.recipe, args.overrides + ["sparsity.pattern=dense", "sparsity.flow=static"],
                            check_data=False)
    if args.sockets is None:  # a training step: one node; inference: one socket
        args.sockets = 8 if args.mode == "train" else 1
    r = estimate(cfg, dense_cfg, _options(args))  # a ValueError names the option (exit 2)
    rdu, report = r["rdu"], r["report"]
    dense, sparse, headline = r["gpu_dense"], r["gpu_sparse"], r["headline"]
    n = args.sockets
    gpus = headline.gpus if headline else n
    summary = {
        "recipe": args.recipe, "mode": args.mode, "chip": rdu.chip.name, "sockets": n,
        "gpu": dense.gpu.name, "gpus": gpus,
        "rdu_step_s": rdu.step_s, "gpu_dense_step_s": dense.step_s,
        "gpu_sparse_step_s": sparse.step_s,
        "speedup_vs_gpu_dense": dense.step_s / rdu.step_s,
        "speedup_vs_gpu_sparse": sparse.step_s / rdu.step_s,
        "gpu_sparse_bound": sparse.bound,
        "mechanisms": r["mechanisms"], "assumptions": r["assumptions"],
    }
    if headline:
        summary["gpu_plan"] = headline.gpu.plan.describe()
        summary["gpu_memory_bytes"] = headline.gpu.memory_bytes
        summary["headline"] = headline.numbers()
    else:
        summary["gpu_dense_bound"] = dense.bound
    data = report.to_json(rdu, summary=summary)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(data, out / "report.json")
        (out / "kernels.md").write_text(report.markdown_table(rdu) + "\n")
        report.plot_timeline(rdu, out / "timeline.png")
        report.plot_roofline(rdu, out / "roofline.png")
    if args.json:
        print(json.dumps(data, indent=2, default=float))
        return 0
    _print_text(args, cfg, r, summary)
    print(f"(estimated from abstract shapes in {time.perf_counter() - t0:.1f} s)")
    return 0


def _print_text(args: argparse.Namespace, cfg, r: dict, summary: dict) -> None:
    """The text report: header, kernel table, notes, mechanisms, step times, ratios, assumptions."""
    rdu, report = r["rdu"], r["report"]
    dense, sparse, headline = r["gpu_dense"], r["gpu_sparse"], r["headline"]
    n, gpus = summary["sockets"], summary["gpus"]
    tokens = (f"1 new token (KV cache of {cfg.data.seq_len} positions)" if args.mode == "decode"
              else f"{cfg.data.seq_len} tokens")
    print(f"{args.recipe}: {args.mode} step of {cfg.model.preset}, batch {cfg.data.batch_size} x "
          f"{tokens}, {len(rdu.kernels)} kernels, {rdu.flops / 1e12:.4g} TFLOP")
    print()
    print(report.markdown_table(rdu))
    print()
    for note in rdu.notes:
        print(f"note: {note}")
    for line in report.mechanism_lines(r["mechanisms"]):
        print(line)
    print(f"{rdu.chip.name} x{n}: {rdu.step_s:.4g} s per step (one socket: "
          f"{rdu.single_socket_s:.4g} s), bound: {rdu.bound}")
    if headline:
        print(f"{dense.gpu.name} x{gpus}, dense recipe, {headline.gpu.plan.describe()}: "
              f"{dense.step_s:.4g} s")
    else:
        print(f"{dense.gpu.name} x{n}, dense recipe, kernel by kernel: {dense.step_s:.4g} s "
              f"({dense.launches:.4g} launches, bound: {dense.bound})")
    print(f"{sparse.gpu.name} x{n}, this recipe, kernel by kernel: {sparse.step_s:.4g} s "
          f"(bound: {sparse.bound})")
    print(f"speedup of {rdu.chip.name} x{n} over dense {dense.gpu.name} x{gpus}: "
          f"{summary['speedup_vs_gpu_dense']:.3g}x (over this recipe on {n} GPUs kernel by "
          f"kernel: {summary['speedup_vs_gpu_sparse']:.3g}x)")
    if headline:
        for line in compare.lines(headline):
            print(line)
    print("assumptions:")
    for line in r["assumptions"]:
        print(f"  - {line}")
    if args.out:
        print(f"wrote {args.out}/report.json, kernels.md, timeline.png, roofline.png")
