"""`sparsetrain emulate`: time a recipe's step on an emulated RDU against a GPU baseline.

    sparsetrain emulate RECIPE [--chip sn40l] [--sockets N] [--vs a100] [--gpus N]
                               [--mode train|prefill|decode] [--gpu-attention fused|unfused]
                               [--parallel auto|pipeline|tensor|data] [--micro-batches M]
                               [--schedule 1f1b|gpipe] [--unfused]
                               [--orchestration software|hardware] [--no-kernel-looping]
                               [--out DIR] [--json] [--from-run RUN] [--set key=value ...]

The model is built from abstract shapes (`abstract_model`: no weights allocated) with CONCRETE
block indices: the recipe's own layout (pattern and seed, `sparsetrain.rdu.layouts`) or those of
a run's newest checkpoint (`--from-run`), so sparse kernels are priced from their real gathers
and balance. The step is traced and lowered by `rdu_xla_backend` (block-sparse calls costed by
the rules of `sparsetrain.rdu.rules`) and timed on the chip. A training step is compared with the
recipe made dense and trained Megatron-style on the smallest GPU count (from one 8-GPU node up)
that a plan fits (`emulate_compare`: both plans, memory vs capacity, ratios per system and per
chip, and the decomposition of the speedup); inference with the same recipe made dense, run
kernel by kernel on as many GPUs as sockets. Prints the per-kernel table, the ratios and every
assumption.
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
    p.add_argument("--sockets", type=int, default=None, help="RDU sockets (default: one "
                   "8-socket node for a training step, else 1)")
    p.add_argument("--vs", default="a100", help="GPU baseline: a100, a100-40gb, h100 (default "
                   "a100 = 80 GB)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs of the training baseline "
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
    p.add_argument("--from-run", default=None, metavar="RUN", help="price the sparse kernels "
                   "with the block indices of this run directory's newest checkpoint (default: "
                   "the recipe's initial layout from its pattern and seed)")
    p.set_defaults(run=run)


def program(cfg, mode: str, indices: dict | None = None):
    """(function, args) of one step of the recipe's model (GPT or Llama) in ``mode``.

    Nothing is allocated but the block indices: every other argument is a ShapeDtypeStruct; the
    sparse linears' ``row_indices`` are concrete, ``indices`` (kind -> int (L, nc, k), e.g. a
    run's, ``layouts.run_indices``) or else the recipe's initial layout
    (``layouts.recipe_indices``). With B = data.batch_size and T = data.seq_len:

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

    from sparsetrain.rdu import rules  # noqa: F401  (block-sparse calls lowered by their rules)
    from sparsetrain.rdu.layouts import recipe_indices, with_indices

    spec = model_spec(cfg)
    model = abstract_model(spec)
    sparse = any(lin.sparse for _, lin in spec.linears)
    by_kind = (indices if indices is not None else recipe_indices(spec)) if sparse else {}
    B, T = cfg.data.batch_size, cfg.data.seq_len
    if mode == "train":
        from sparsetrain.optim import make_optimizer
        from sparsetrain.train import ModelFunctions, init_state, make_train_step

        fns = ModelFunctions(model)
        tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
        tx, schedule = make_optimizer(cfg.optimizer, cfg.run.steps)
        state = jax.eval_shape(lambda: init_state(fns, tx, 0))
        state["indices"] = with_indices(state["indices"], by_kind)
        return make_train_step(fns, tx, schedule), (state, {"tokens": tokens, "targets": tokens})
    if mode not in MODES:
        raise ValueError(f"--mode: {mode!r} is not allowed; allowed: {', '.join(MODES)}")
    dec = CachedDecoder(model)
    params, idx = dec.initial()
    idx = with_indices(idx, by_kind)
    dtype = jnp.dtype(cfg.model.dtype)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype), params)
    if mode == "prefill":
        def prefill(params, indices, tokens):
            return dec.prefill(params, indices, tokens, max_len=T, last_logits_only=True)

        return prefill, (params, idx, jax.ShapeDtypeStruct((B, T), jnp.int32))
    return dec.decode, (params, idx, abstract_cache(model, B, T),
                        jax.ShapeDtypeStruct((B,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32))


def program_roles(mode: str):
    """What each argument of ``program(cfg, mode)``'s function is to the program, as
    ``rdu_xla_backend.lower(..., roles=...)`` takes it (the backend places tensors by role)."""
    if mode == "train":  # (state, batch): params are weights, opt_state the optimizer's
        def role(path: str, leaf) -> str | None:
            if path.startswith("[0]['opt_state']"):
                return "optimizer_state"
            return "weights" if path.startswith("[0]['params']") else "activations"
        return role
    if mode == "prefill":  # (params, indices, tokens)
        return ("weights", "activations", "activations")
    return ("weights", "activations", "kv_cache", "activations", "activations")  # decode


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
    from rdu_xla_backend.cost import gpu_training
    from rdu_xla_backend.mapping import banks, block_sparse, gathers
    from rdu_xla_backend.workload.lowering import lower
    from sparsetrain import emulate_compare as compare
    from sparsetrain.rdu.layouts import run_indices

    chip, gpu = get_chip(args.chip), get_chip(args.vs)
    if not isinstance(chip, hardware.ChipSpec):
        raise ValueError(f"--chip: {args.chip!r} is not an RDU; allowed: sn40l, sn30, sn10")
    if not isinstance(gpu, hardware.GpuSpec):
        raise ValueError(f"--vs: {args.vs!r} is not a GPU; allowed: a100, a100-40gb, h100")
    planned = None
    if args.mode == "train":  # the dense recipe trained Megatron-style on GPUs that fit it
        planned = compare.gpu_plan(cfg, gpu, args.gpus, args.gpu_attention)
    indices, source = None, (f"the recipe's initial layout (pattern {cfg.sparsity.pattern}, "
                             f"seed {cfg.sparsity.seed})")
    if getattr(args, "from_run", None):
        _, indices = run_indices(args.from_run)
        source = f"the newest checkpoint of run {args.from_run}"
    fn, abstract = program(cfg, args.mode, indices)
    roles = program_roles(args.mode)
    graph = lower(fn, *abstract, mode="unfused" if args.unfused else "fused", name=args.mode,
                  roles=roles)
    rdu = compare.rdu_plan(graph, chip, args.sockets, args.parallel, args.micro_batches,
                           schedule=args.schedule, batch=cfg.data.batch_size,
                           heads=cfg.shape().n_heads,
                           orchestration=args.orchestration,
                           kernel_looping=not args.no_kernel_looping)
    gpu_sparse = gpu_model.gpu_perf(graph, gpu, gpus=args.sockets)
    headline = None
    if planned:
        headline = compare.headline(cfg, graph, rdu, planned)
        gpu_dense = headline.gpu
    else:
        dfn, dabstract = program(dense_cfg, args.mode)
        gpu_dense = gpu_model.gpu_perf(lower(dfn, *dabstract, name=args.mode, roles=roles), gpu,
                                       gpus=args.sockets)
    assumptions = (hardware.assumptions(chip) + perf.assumptions(chip, rdu.options)
                   + hardware.assumptions(gpu) + gpu_model.assumptions(gpu, args.sockets)
                   + (gpu_training.assumptions(headline.gpu) if headline else [])
                   + [f"model: block indices (concrete) from {source}; weights are abstract"]
                   + [f"mapping: {line}" for line in block_sparse.summary(graph, chip)]
                   + [f"mapping: {line}" for line in gathers.assumed_gathers(
                       graph, banks.PmuConfig.from_chip(chip).period)]
                   + mode_assumptions(cfg, args.mode))
    return {"rdu": rdu, "graph": graph, "gpu_dense": gpu_dense, "gpu_sparse": gpu_sparse,
            "assumptions": assumptions, "report": report, "headline": headline,
            "mechanisms": report.mechanisms(
                graph, chip, rdu.options, rdu.plan.plan if rdu.plan is not None else None)}


def run(args: argparse.Namespace) -> int:
    from sparsetrain import emulate_compare as compare
    from sparsetrain.config import load_recipe

    t0 = time.perf_counter()
    try:
        cfg = load_recipe(args.recipe, args.overrides, check_data=False)
        dense_cfg = load_recipe(args.recipe, args.overrides + ["sparsity.pattern=dense",
                                                               "sparsity.flow=static"],
                                check_data=False)
        if args.sockets is None:  # a training step: one node; inference: one socket
            args.sockets = 8 if args.mode == "train" else 1
        if args.sockets < 1:
            raise ValueError(f"--sockets: {args.sockets} is not allowed; expected >= 1")
        if args.gpus is not None and args.gpus < 1:
            raise ValueError(f"--gpus: {args.gpus} is not allowed; expected >= 1")
        r = estimate(cfg, dense_cfg, args)
    except ValueError as e:
        print(f"sparsetrain emulate: {e}", file=sys.stderr)
        return 2
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
    print(f"(estimated from abstract shapes in {time.perf_counter() - t0:.1f} s)")
    return 0
