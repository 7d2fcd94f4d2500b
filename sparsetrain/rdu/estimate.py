"""The estimate behind `sparsetrain emulate`: a recipe's step on an emulated RDU vs a GPU baseline.

The model is built from abstract shapes (`abstract_model`: no weights allocated) with CONCRETE
block indices: the recipe's own layout (pattern and seed, `sparsetrain.rdu.layouts`) or those of
a run's newest checkpoint (`from_run`), so sparse kernels are priced from their real gathers and
balance. The step is traced and lowered by `rdu_xla_backend` (block-sparse calls costed by the
rules of `sparsetrain.rdu.rules`, `programs.lower_program`) and timed on the chip. A training step
is compared with the recipe made dense and trained Megatron-style on the smallest GPU count (from
one 8-GPU node up) that a plan fits (`headline`: both plans, memory vs capacity, ratios per system
and per chip, and the decomposition of the speedup); inference with the same recipe made dense,
run kernel by kernel on as many GPUs as sockets.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdu_xla_backend import get_chip, hardware, report
from rdu_xla_backend.cost import gpu as gpu_model
from rdu_xla_backend.cost import gpu_training
from rdu_xla_backend.cost import rdu as perf
from rdu_xla_backend.mapping import banks, block_sparse, gathers
from sparsetrain.rdu import headline as compare
from sparsetrain.rdu.layouts import run_indices
from sparsetrain.rdu.programs import lower_program, mode_assumptions, program, program_roles


@dataclass(frozen=True)
class EmulateOptions:
    """What to estimate and on what (the options of `sparsetrain emulate`).

    chip: RDU name (sn40l, sn30, sn10); sockets: RDU sockets (>= 1); vs: GPU name (a100,
    a100-40gb, h100); gpus: GPUs of the training baseline (None: the smallest count a plan fits);
    gpu_attention: 'fused' or 'unfused' attention of the GPU training baseline; mode: 'train',
    'prefill' or 'decode'; parallel: 'auto', 'pipeline', 'tensor' or 'data'; micro_batches: per
    data-parallel replica (None: chosen); schedule: '1f1b' or 'gpipe'; unfused: one kernel per
    operator; orchestration: 'software' or 'hardware'; kernel_looping: loop kernels over layers;
    from_run: a run directory whose newest checkpoint gives the block indices (None: the recipe's).
    """

    chip: str = "sn40l"
    sockets: int = 1
    vs: str = "a100"
    gpus: int | None = None
    gpu_attention: str = "fused"
    mode: str = "train"
    parallel: str = "auto"
    micro_batches: int | None = None
    schedule: str = "1f1b"
    unfused: bool = False
    orchestration: str = "software"
    kernel_looping: bool = True
    from_run: str | None = None


def _chips(opts: EmulateOptions):
    chip, gpu = get_chip(opts.chip), get_chip(opts.vs)
    if not isinstance(chip, hardware.ChipSpec):
        raise ValueError(f"--chip: {opts.chip!r} is not an RDU; allowed: sn40l, sn30, sn10")
    if not isinstance(gpu, hardware.GpuSpec):
        raise ValueError(f"--vs: {opts.vs!r} is not a GPU; allowed: a100, a100-40gb, h100")
    return chip, gpu


def estimate(cfg, dense_cfg, opts: EmulateOptions) -> dict:
    """Lower and time the recipe on the RDU and its dense twin (`dense_cfg`) on the GPU.

    Returns a dict: rdu (ProgramPerf of the recipe's step on `opts.sockets` sockets, seconds),
    graph (the lowered program), gpu_dense and gpu_sparse (GPU step estimates, seconds),
    headline (training: the plan-vs-plan comparison, else None), assumptions (lines), report
    (the backend's report module) and mechanisms.
    """
    chip, gpu = _chips(opts)
    planned = None
    if opts.mode == "train":  # the dense recipe trained Megatron-style on GPUs that fit it
        planned = compare.gpu_plan(cfg, gpu, opts.gpus, opts.gpu_attention)
    indices, source = None, (f"the recipe's initial layout (pattern {cfg.sparsity.pattern}, "
                             f"seed {cfg.sparsity.seed})")
    if opts.from_run:
        _, indices = run_indices(opts.from_run)
        source = f"the newest checkpoint of run {opts.from_run}"
    fn, abstract = program(cfg, opts.mode, indices)
    roles = program_roles(opts.mode)
    graph = lower_program(fn, *abstract, mode="unfused" if opts.unfused else "fused",
                          name=opts.mode, roles=roles)
    rdu = compare.rdu_plan(graph, chip, opts.sockets, opts.parallel, opts.micro_batches,
                           schedule=opts.schedule, batch=cfg.data.batch_size,
                           heads=cfg.shape().n_heads, orchestration=opts.orchestration,
                           kernel_looping=opts.kernel_looping)
    gpu_sparse = gpu_model.gpu_perf(graph, gpu, gpus=opts.sockets)
    headline = None
    if planned:
        headline = compare.headline(cfg, graph, rdu, planned)
        gpu_dense = headline.gpu
    else:
        dfn, dabstract = program(dense_cfg, opts.mode)
        gpu_dense = gpu_model.gpu_perf(lower_program(dfn, *dabstract, name=opts.mode, roles=roles),
                                       gpu, gpus=opts.sockets)
    assumptions = (hardware.assumptions(chip) + perf.assumptions(chip, rdu.options)
                   + hardware.assumptions(gpu) + gpu_model.assumptions(gpu, opts.sockets)
                   + (gpu_training.assumptions(headline.gpu) if headline else [])
                   + [f"model: block indices (concrete) from {source}; weights are abstract"]
                   + [f"mapping: {line}" for line in block_sparse.summary(graph, chip)]
                   + [f"mapping: {line}" for line in gathers.assumed_gathers(
                       graph, banks.PmuConfig.from_chip(chip).period)]
                   + mode_assumptions(cfg, opts.mode))
    return {"rdu": rdu, "graph": graph, "gpu_dense": gpu_dense, "gpu_sparse": gpu_sparse,
            "assumptions": assumptions, "report": report, "headline": headline,
            "mechanisms": report.mechanisms(
                graph, chip, rdu.options, rdu.plan.plan if rdu.plan is not None else None)}
