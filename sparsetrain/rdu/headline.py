"""The headline of `sparsetrain emulate` for a training step: one system against another, each
with a plan that fits its memory.

- GPU side: the recipe made dense, trained Megatron-style (``rdu_xla_backend.cost.
  gpu_training``: the model validated on Megatron-LM's measured Table 1), on the smallest GPU
  count >= one node that some plan fits; the fastest fitting plan (TP/PP/DP, micro-batch,
  recomputation, interleaving) is chosen, every refused plan counted.
- RDU side: the recipe's own lowered program on ``sockets`` sockets (``rdu_plan``: the one
  place that chooses how the sockets split the program), with its memory per tier.
- Ratios per system and per chip, and the decomposition
  speedup = FLOP reduction from sparsity x peak ratio x kernel efficiency ratio x mapping ratio,
  where a side's model-FLOP utilisation (model FLOPs / (chips x peak x step time)) is split into
  the efficiency of its kernels (executed FLOPs / (peak x busy time)) and what the mapping
  keeps of it (recomputation, bubbles, communication, imbalance).

Model FLOPs of a step (no recomputation): 3 x the forward, the forward being 2 FLOPs per stored
weight per token (linears at the recipe's density; embeddings are lookups, the tied head is
dense) plus attention (2 x 2 s h per token per layer: scores and context).
"""

from __future__ import annotations

from dataclasses import dataclass

from rdu_xla_backend.cost import gpu_training as gt
from rdu_xla_backend.cost import rdu as perf
from rdu_xla_backend.mapping import gpu_plan as gp
from sparsetrain.config import linear_shapes
from sparsetrain.sparsity.resolve import resolve_sparsity

GPUS_PER_NODE = 8


def transformer_of(cfg) -> gp.Transformer:
    """The recipe's decoder stack as shapes (a SwiGLU MLP of width f counted as a GeLU MLP of
    width 1.5 f: the same weights and FLOPs)."""
    shape = cfg.shape()
    ffn = shape.d_ff if shape.family == "gpt" else 3 * shape.d_ff // 2
    vocab = shape.vocab or cfg.data.vocab_size
    return gp.Transformer(shape.n_layers, shape.d_model, shape.n_heads, vocab, cfg.data.seq_len,
                          ffn, name=cfg.model.preset)


def model_flops(cfg, density: dict[str, float]) -> float:
    """Model FLOPs of one training step (module docstring); ``density``: linear kind -> stored
    fraction of its weights (1 for dense)."""
    shape = cfg.shape()
    tokens = cfg.data.batch_size * cfg.data.seq_len
    linears = sum(n_in * n_out * density.get(kind, 1.0)
                  for kind, (n_in, n_out) in linear_shapes(shape).items())
    vocab = shape.vocab or cfg.data.vocab_size
    forward = 2 * tokens * (shape.n_layers * linears + vocab * shape.d_model) + \
        4 * tokens * cfg.data.seq_len * shape.d_model * shape.n_layers
    return 3.0 * forward


def densities(cfg) -> dict[str, float]:
    """Linear kind -> stored fraction under the recipe's sparsity (1 when dense)."""
    if cfg.sparsity.pattern == "dense":
        return {}
    kinds = resolve_sparsity(cfg.sparsity, linear_shapes(cfg.shape()), stored=False)
    return {kind: k.density for kind, k in kinds.items()}


def rdu_plan(graph, chip, sockets: int, parallel: str = "auto",
             micro_batches: int | None = None, **options) -> perf.ProgramPerf:
    """How ``sockets`` RDU sockets run the program: the one place the RDU's plan is chosen."""
    return perf.program_perf(graph, chip, perf.Options(sockets=sockets, parallel=parallel,
                                                       micro_batches=micro_batches, **options))


def gpu_plan(cfg, gpu, gpus: int | None = None, attention: str = "fused"):
    """(GpuStep of the fastest fitting plan, GPU count, notes) for the dense recipe: ``gpus``
    if given (refused with the reason if nothing fits), else the smallest count >= one node."""
    model = transformer_of(cfg)
    B = cfg.data.batch_size
    notes = []
    if gpus is None:
        gpus = gp.smallest_gpus(model, B, gpu, GPUS_PER_NODE, attention)
        if gpus > GPUS_PER_NODE:
            notes.append(f"{gpu.name}: no plan of one {GPUS_PER_NODE}-GPU node fits; "
                         f"re-planned on {gpus} GPUs")
    step, more = gt.choose_plan(model, gpus, B, gpu, attention)
    return step, gpus, notes + more


@dataclass
class Headline:
    gpu: gt.GpuStep
    gpus: int
    rdu: perf.ProgramPerf
    sockets: int
    flops_dense: float
    flops_sparse: float
    rdu_executed_flops: float
    notes: list[str]

    def numbers(self) -> dict[str, float]:
        g, r = self.gpu, self.rdu
        peak_g, peak_r = g.gpu.peak_bf16_flops, r.chip.peak_bf16_flops
        mfu_g = self.flops_dense / (self.gpus * peak_g * g.step_s)
        mfu_r = self.flops_sparse / (self.sockets * peak_r * r.step_s)
        busy_g = g.parts["layers"] + g.parts["embedding+head"]
        kern_g = g.flops_per_gpu / (peak_g * busy_g)
        kern_r = self.rdu_executed_flops / (peak_r * r.single_socket_s)
        out = {
            "gpu_step_s": g.step_s, "rdu_step_s": r.step_s,
            "speedup_per_system": g.step_s / r.step_s,
            "speedup_per_chip": g.step_s * self.gpus / (r.step_s * self.sockets),
            "sparsity_flop_reduction": self.flops_dense / self.flops_sparse,
            "peak_ratio_per_system": self.sockets * peak_r / (self.gpus * peak_g),
            "kernel_efficiency_gpu": kern_g, "kernel_efficiency_rdu": kern_r,
            "kernel_efficiency_ratio": kern_r / kern_g,
            "mapping_gpu": mfu_g / kern_g, "mapping_rdu": mfu_r / kern_r,
            "mapping_ratio": (mfu_r / kern_r) / (mfu_g / kern_g),
            "mfu_gpu": mfu_g, "mfu_rdu": mfu_r,
        }
        return out


def headline(cfg, graph, rdu: perf.ProgramPerf, planned: tuple) -> Headline:
    """Both systems' plans and the numbers behind the speedup (module docstring).

    Args:
        cfg: the recipe; graph: its lowered step; rdu: the step timed on the RDU sockets.
        planned: ``gpu_plan(cfg, gpu, ...)`` (made before lowering: it fails fast).
    """
    step, n, notes = planned
    notes = list(notes)
    if rdu.memory is not None and rdu.memory.overflow:
        notes.append(f"{rdu.chip.name} x{rdu.options.sockets}: the plan does NOT fit: "
                     f"{len(rdu.memory.overflow)} tensors fit in no tier (charged over the host "
                     "link); compare with more sockets")
    return Headline(step, n, rdu, rdu.options.sockets, model_flops(cfg, {}),
                    model_flops(cfg, densities(cfg)), graph.flops, notes)


def rdu_memory_line(r: perf.ProgramPerf, sockets: int) -> str:
    """Memory per socket: with a parallel plan, its busiest socket's bytes by category against
    HBM + DDR (the plan's own check); else the placement's resident state, activations placed
    over the step (the placement keeps each tier's live set within its capacity), capacity."""
    if r.plan is not None:
        busiest = max(r.plan.memory, key=lambda m: sum(m.values()))
        parts = ", ".join(f"{c} {b / 1e9:.3g}" for c, b in busiest.items() if b)
        return (f"memory of the busiest socket {sum(busiest.values()) / 1e9:.4g} GB ({parts} GB) "
                f"of HBM {r.chip.hbm_bytes / 1e9:.4g} + DDR {r.chip.ddr_bytes / 1e9:.4g} GB "
                f"({'fits' if r.plan.fits else 'does NOT fit'})")
    plan = r.memory
    if plan is None:
        return "memory not planned"
    per = {c: sum(plan.bytes.get(c, {}).values()) / sockets for c in plan.bytes}
    resident = sum(v for c, v in per.items() if c != "activations")
    cap = " + ".join(f"{t.upper()} {c / sockets / 1e9:.4g}" for t, c in plan.capacity.items())
    fit = (f"OVERFLOW: {len(plan.overflow)} tensors fit no tier" if plan.overflow
           else "fits")
    return (f"memory per socket: weights and optimizer state {resident / 1e9:.4g} GB resident, "
            f"activations {per.get('activations', 0.0) / 1e9:.4g} GB placed over the step, "
            f"capacity {cap} GB ({fit})")


def lines(h: Headline) -> list[str]:
    """The printed headline: both plans, memory vs capacity, ratios, decomposition."""
    x, g, r = h.numbers(), h.gpu, h.rdu
    mem = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in g.memory.items())
    opt = r.options
    out = [
        "headline: systems that can each run this step",
        f"  GPU: {h.gpus} x {g.gpu.name}, dense recipe, {g.plan.describe()}; memory per GPU "
        f"{g.memory_bytes / 1e9:.1f} GB of {g.gpu.hbm_bytes / 1e9:.0f} GB ({mem} GB); "
        f"step {g.step_s:.4g} s",
        f"  RDU: {h.sockets} x {r.chip.name}, this recipe"
        + (f", {r.plan.plan.describe(opt.batch)}" if r.plan is not None
           else f", {opt.parallel} parallel" if opt.sockets > 1 else "")
        + f"; {rdu_memory_line(r, h.sockets)}; step {r.step_s:.4g} s",
        f"  speedup per system {x['speedup_per_system']:.3g}x, per chip "
        f"{x['speedup_per_chip']:.3g}x",
        f"  = sparsity (model FLOPs dense / sparse) {x['sparsity_flop_reduction']:.3g}"
        f" x peak ratio {x['peak_ratio_per_system']:.3g}"
        f" x kernel efficiency {x['kernel_efficiency_rdu']:.2f} / {x['kernel_efficiency_gpu']:.2f}"
        f" = {x['kernel_efficiency_ratio']:.3g}"
        f" x mapping {x['mapping_rdu']:.2f} / {x['mapping_gpu']:.2f} = {x['mapping_ratio']:.3g}",
        f"  (model-FLOP utilisation: GPU {100 * x['mfu_gpu']:.1f}%, RDU {100 * x['mfu_rdu']:.1f}%;"
        f" GPU time: " + ", ".join(f"{k} {100 * v / g.step_s:.0f}%" for k, v in g.parts.items())
        + ")",
    ]
    return out + [f"  note: {n}" for n in h.notes]
