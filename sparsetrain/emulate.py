"""`sparsetrain emulate`: time a recipe's step on an emulated RDU against a GPU baseline.

    sparsetrain emulate RECIPE [--chip sn40l] [--sockets N] [--vs a100] [--mode train|prefill|decode]
                               [--parallel auto|pipeline|tensor|data] [--micro-batches M]
                               [--schedule 1f1b|gpipe] [--unfused]
                               [--orchestration software|hardware] [--no-kernel-looping]
                               [--out DIR] [--json] [--set key=value ...]

The model is built from abstract shapes (`abstract_model`: no weights, block indices are
placeholders, so sparse gathers use the expected-cost model), the step is traced and lowered by
`rdu_xla_backend`, timed on the chip, and compared with the same recipe made dense, run kernel by
kernel on the GPU. Prints the per-kernel table, the end-to-end ratio and every assumption.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

MODES = ("train", "prefill", "decode")


def register(subparsers) -> None:
    p = subparsers.add_parser("emulate", help="estimate a recipe's step time on an emulated RDU "
                              "vs a GPU baseline (abstract shapes: no weights allocated)")
    p.add_argument("recipe", help="YAML recipe file (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set data.batch_size=8 (repeatable)")
    p.add_argument("--chip", default="sn40l", help="RDU: sn40l, sn30, sn10 (default sn40l)")
    p.add_argument("--sockets", type=int, default=1, help="RDU sockets (default 1)")
    p.add_argument("--vs", default="a100", help="GPU baseline: a100, a100-40gb, h100 (default "
                   "a100 = 80 GB); as many GPUs as sockets")
    p.add_argument("--mode", default="train", choices=MODES,
                   help="train step, prefill (forward over the sequence, filling a KV cache) or "
                   "decode (one new token per sequence over a KV cache of data.seq_len positions)")
    p.add_argument("--parallel", default="auto", choices=("auto", "pipeline", "tensor", "data"),
                   help="how sockets split the step: auto (default: the fastest tensor x "
                   "pipeline x data plan that fits memory), or one split only")
    p.add_argument("--micro-batches", type=int, default=None, help="micro-batches per data-"
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
    p.set_defaults(run=run)


def program(cfg, mode: str):
    """(function, abstract args) of one step of the recipe's model (GPT or Llama) in ``mode``.

    Nothing is allocated: every argument is a ShapeDtypeStruct. With B = data.batch_size and
    T = data.seq_len:

    - train: ``step(state, {tokens, targets: (B, T)}) -> (state, metrics)``, float32 params.
    - prefill: ``(params, indices, tokens (B, T)) -> (logits (B, vocab), KV cache)``: the prompt's
      forward writing the keys/values of its T positions; logits of the last position only.
    - decode: ``(params, indices, cache, token (B,), position ()) -> (logits (B, vocab), cache)``:
      ONE new token per sequence at position T-1, attending over a KV cache of T positions (T-1
      earlier tokens and its own), then writing its keys/values into the cache.

    Inference weights (and the KV cache) are in the compute dtype ``model.dtype``.
    """
    from sparsetrain.models.family import abstract_model, model_spec
    from sparsetrain.models.kv_cache import CachedDecoder, abstract_cache

    model = abstract_model(model_spec(cfg))
    B, T = cfg.data.batch_size, cfg.data.seq_len
    if mode == "train":
        from sparsetrain.optim import make_optimizer
        from sparsetrain.train import ModelFunctions, init_state, make_train_step

        fns = ModelFunctions(model)
        tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
        tx, schedule = make_optimizer(cfg.optimizer, cfg.run.steps)
        state = jax.eval_shape(lambda: init_state(fns, tx, 0))
        return make_train_step(fns, tx, schedule), (state, {"tokens": tokens, "targets": tokens})
    if mode not in MODES:
        raise ValueError(f"--mode: {mode!r} is not allowed; allowed: {', '.join(MODES)}")
    dec = CachedDecoder(model)
    params, indices = dec.initial()
    dtype = jnp.dtype(cfg.model.dtype)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype), params)
    if mode == "prefill":
        def prefill(params, indices, tokens):
            return dec.prefill(params, indices, tokens, max_len=T, last_logits_only=True)

        return prefill, (params, indices, jax.ShapeDtypeStruct((B, T), jnp.int32))
    return dec.decode, (params, indices, abstract_cache(model, B, T),
                        jax.ShapeDtypeStruct((B,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32))


def mode_assumptions(cfg, mode: str) -> list[str]:
    """What the traced program of ``mode`` does and does not include."""
    T, dtype = cfg.data.seq_len, cfg.model.dtype
    if mode == "prefill":
        return [f"model: prefill = the forward over {T} prompt tokens per sequence, writing their "
                f"keys/values into a KV cache of {T} positions; logits of the last position only; "
                f"weights and cache in {dtype}"]
    if mode == "decode":
        return [f"model: decode = ONE new token per sequence at position {T - 1}; each layer reads "
                f"the KV cache ({T - 1} earlier positions + the new one) once and attends over it; "
                f"the new keys/values are written into the cache after the layer loop; weights and "
                f"cache in {dtype}"]
    return []


def estimate(cfg, dense_cfg, args) -> dict:
    """Lower and time the recipe on the RDU and its dense twin on the GPU."""
    from rdu_xla_backend import get_chip, hardware, report
    from rdu_xla_backend.cost import rdu as perf
    from rdu_xla_backend.cost import gpu as gpu_model
    from rdu_xla_backend.workload.lowering import lower

    chip, gpu = get_chip(args.chip), get_chip(args.vs)
    if not isinstance(chip, hardware.ChipSpec):
        raise ValueError(f"--chip: {args.chip!r} is not an RDU; allowed: sn40l, sn30, sn10")
    if not isinstance(gpu, hardware.GpuSpec):
        raise ValueError(f"--vs: {args.vs!r} is not a GPU; allowed: a100, a100-40gb, h100")
    options = perf.Options(sockets=args.sockets, parallel=args.parallel,
                           micro_batches=args.micro_batches, schedule=args.schedule,
                           batch=cfg.data.batch_size, heads=cfg.shape().n_heads,
                           orchestration=args.orchestration,
                           kernel_looping=not args.no_kernel_looping)
    fn, abstract = program(cfg, args.mode)
    graph = lower(fn, *abstract, mode="unfused" if args.unfused else "fused", name=args.mode)
    rdu = perf.program_perf(graph, chip, options)
    gpu_sparse = gpu_model.gpu_perf(graph, gpu, gpus=args.sockets)
    dfn, dabstract = program(dense_cfg, args.mode)
    gpu_dense = gpu_model.gpu_perf(lower(dfn, *dabstract, name=args.mode), gpu, gpus=args.sockets)
    assumptions = (hardware.assumptions(chip) + perf.assumptions(chip, options)
                   + hardware.assumptions(gpu) + gpu_model.assumptions(gpu, args.sockets)
                   + ["model: block indices are placeholders (abstract shapes): sparse gathers "
                      "use the expected-cost model (seeded random draw of the same shape)"]
                   + mode_assumptions(cfg, args.mode))
    return {"rdu": rdu, "graph": graph, "gpu_dense": gpu_dense, "gpu_sparse": gpu_sparse,
            "assumptions": assumptions, "report": report,
            "mechanisms": report.mechanisms(graph, chip, options)}


def run(args: argparse.Namespace) -> int:
    from sparsetrain.config import load_recipe

    t0 = time.perf_counter()
    try:
        cfg = load_recipe(args.recipe, args.overrides, check_data=False)
        dense_cfg = load_recipe(args.recipe, args.overrides + ["sparsity.pattern=dense"],
                                check_data=False)
        if args.sockets < 1:
            raise ValueError(f"--sockets: {args.sockets} is not allowed; expected >= 1")
        r = estimate(cfg, dense_cfg, args)
    except ValueError as e:
        print(f"sparsetrain emulate: {e}", file=sys.stderr)
        return 2
    rdu, report = r["rdu"], r["report"]
    dense, sparse = r["gpu_dense"], r["gpu_sparse"]
    n = args.sockets
    summary = {
        "recipe": args.recipe, "mode": args.mode, "chip": rdu.chip.name, "sockets": n,
        "gpu": dense.gpu.name, "gpus": n,
        "rdu_step_s": rdu.step_s, "gpu_dense_step_s": dense.step_s,
        "gpu_sparse_step_s": sparse.step_s,
        "speedup_vs_gpu_dense": dense.step_s / rdu.step_s,
        "speedup_vs_gpu_sparse": sparse.step_s / rdu.step_s,
        "gpu_dense_bound": dense.bound, "gpu_sparse_bound": sparse.bound,
        "mechanisms": r["mechanisms"], "assumptions": r["assumptions"],
    }
    data = report.to_json(rdu, summary=summary)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(data, out / "report.json")
        (out / "kernels.md").write_text(report.markdown_table(rdu) + "\n")
        report.plot_timeline(rdu, out / "timeline.png")
        report.plot_roofline(rdu, out / "roofline.png")
    if args.json:
        import json

        print(json.dumps(data, indent=2, default=float))
        return 0
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
    print(f"{dense.gpu.name} x{n}, dense recipe, kernel by kernel: {dense.step_s:.4g} s "
          f"({dense.launches:.4g} launches, bound: {dense.bound})")
    print(f"{sparse.gpu.name} x{n}, this recipe, kernel by kernel: {sparse.step_s:.4g} s "
          f"(bound: {sparse.bound})")
    print(f"speedup of {rdu.chip.name} x{n} over dense {dense.gpu.name} x{n}: "
          f"{summary['speedup_vs_gpu_dense']:.3g}x (over this recipe on the GPU: "
          f"{summary['speedup_vs_gpu_sparse']:.3g}x)")
    print("assumptions:")
    for line in r["assumptions"]:
        print(f"  - {line}")
    if args.out:
        print(f"wrote {args.out}/report.json, kernels.md, timeline.png, roofline.png")
    print(f"(estimated from abstract shapes in {time.perf_counter() - t0:.1f} s)")
    return 0
