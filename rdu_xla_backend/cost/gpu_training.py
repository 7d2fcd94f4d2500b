"""Time of one GPT training step on GPUs under a ``gpu_plan.GpuPlan`` (Megatron-style 3-D
parallelism), built from the per-layer kernels of the transformer (``gpu_kernels`` costs).

Per GPU and micro-batch, one decoder layer (tokens T = b s, width h, heads a, MLP width f,
tensor parallel t; E = T h x 2 bytes, one activation pass):

- forward GEMMs: QKV (T x 3h/t x h), projection (T x h x h/t), MLP (T x f/t x h), (T x h x f/t);
  backward: for each, the data gradient and the weight gradient (same FLOPs each);
- attention, unfused: scores and context as batched GEMMs (b a / t of s x s x h/a), the fused
  scale-mask-softmax and the dropout over the s x s scores through HBM (S = b a s^2 / t x 2
  bytes); fused (FlashAttention-2 style): one kernel, 4 b a s^2 (h/a) / t FLOPs forward and
  2.5 x that backward (it recomputes the scores), only Q, K, V, O (and gradients) in HBM;
- element-wise kernels (two layer norms, bias-GeLU, two bias-dropout-adds): 11 E + 2 F forward
  and 13 E + 3 F backward bytes (F = T f / t x 2), 4.5 S and 5.5 S more when unfused;
- gradient accumulation 'separate' (``GpuPlan.grad_accumulation``): 6 bytes per weight of the
  layer more backward (the FP16 gradient read, the main gradient read and written);
- tensor parallel: 2 all-reduces of E forward, 2 backward (NVLink), none when t = 1;
- recomputation: the forward once more in the backward pass (its all-reduces included).

A stage runs ``layers / pp`` layers; the first adds the embedding, the last the head (logits
GEMM T x V/t x h, FP32 vocab-parallel cross entropy: 12 and 8 bytes per logit forward and
backward). Interleaved: each of the v chunks sends and receives its activation (forward) and
gradient (backward) per micro-batch, T h / t x 2 bytes per tensor rank (scatter/gather over each
rank's NIC) [MEG] Sec. 4.1. Pipeline: (m + (p - 1) / v) x the slowest stage's time per
micro-batch (1F1B, bubble (p - 1) / (v m + p - 1)). Then, not overlapped: the data-parallel
gradient all-reduce (FP16, 2 bytes per parameter), the tied-embedding all-reduce between first
and last stage, and the Adam update (30 bytes of HBM traffic per parameter: gradients, FP32
master and moments read and written, FP16 weights written, the norm for clipping). Kernel
launches overlap execution (asynchronous; none of these kernels is shorter than a launch),
collectives pay ``launch_sync_seconds`` each.

Units: seconds, FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rdu_xla_backend.cost import gpu_kernels as gk
from rdu_xla_backend.hardware import GpuSpec
from rdu_xla_backend.mapping import gpu_plan as gp
from rdu_xla_backend.mapping.gpu_plan import GpuPlan, Transformer


@dataclass
class GpuStep:
    """One training step on ``plan.gpus`` GPUs: time, its parts, FLOPs executed per GPU."""

    model: Transformer
    plan: GpuPlan
    gpu: GpuSpec
    step_s: float
    parts: dict[str, float]  # seconds per step: compute, tp_comm, pp_comm, bubble, dp, update
    flops_per_gpu: float  # executed (recomputation included)
    memory: dict[str, float] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> float:
        return sum(self.memory.values())

    @property
    def achieved_flops_per_gpu(self) -> float:
        return self.flops_per_gpu / self.step_s


def _gemm(m, n, k, gpu, batch=1) -> tuple[float, float]:
    """(seconds, FLOPs) of a GEMM."""
    return gk.gemm_seconds(m, n, k, gpu, batch), 2.0 * batch * m * n * k


def _train_gemm(m, n, k, gpu, batch=1) -> tuple[float, float, float, float]:
    """(forward s, backward s, forward FLOPs, backward FLOPs): y = x W, dx = dy W^T, dW = x^T dy."""
    f, ff = _gemm(m, n, k, gpu, batch)
    dx, fx = _gemm(m, k, n, gpu, batch)
    dw, fw = _gemm(k, n, m, gpu, batch)
    return f, dx + dw, ff, fx + fw


def layer_times(model: Transformer, plan: GpuPlan, gpu: GpuSpec) -> dict[str, float]:
    """Seconds and FLOPs of one layer for one micro-batch on one GPU (see module docstring):
    keys fwd, bwd (compute), fwd_flops, bwd_flops, tp_comm (forward + backward all-reduces)."""
    b, s, h, a, t = plan.micro_batch, model.seq, model.hidden, model.heads, plan.tp
    T, f, d = b * s, model.mlp, h // a
    E, F, S = T * h * 2.0, T * f / t * 2.0, b * a / t * s * s * 2.0
    fwd = bwd = fwd_fl = bwd_fl = 0.0
    for m_, n_, k_ in ((T, 3 * h // t, h), (T, h, h // t), (T, f // t, h), (T, h, f // t)):
        g = _train_gemm(m_, n_, k_, gpu)
        fwd, bwd, fwd_fl, bwd_fl = fwd + g[0], bwd + g[1], fwd_fl + g[2], bwd_fl + g[3]
    heads = b * a // t
    ew_f, ew_b = 11 * E + 2 * F, 13 * E + 3 * F
    if plan.attention == "unfused":
        for m_, n_, k_ in ((s, s, d), (s, d, s)):  # scores Q K^T, context P V
            g = _train_gemm(m_, n_, k_, gpu, heads)
            fwd, bwd, fwd_fl, bwd_fl = fwd + g[0], bwd + g[1], fwd_fl + g[2], bwd_fl + g[3]
        ew_f, ew_b = ew_f + 4.5 * S, ew_b + 5.5 * S
    else:
        att = 4.0 * heads * s * s * d
        fwd += gk.flash_attention_seconds(att, 4 * E / t, gpu)
        bwd += gk.flash_attention_seconds(2.5 * att, 8 * E / t, gpu)
        fwd_fl, bwd_fl = fwd_fl + att, bwd_fl + 2.5 * att
    if plan.grad_accumulation == "separate":  # main_grad += grad, FP16, every micro-batch
        ew_b += 6.0 * model.layer_params / t
    fwd += gk.elementwise_seconds(ew_f, gpu)
    bwd += gk.elementwise_seconds(ew_b, gpu)
    tp = 2 * gk.all_reduce_seconds(E, t, gpu)
    return {"fwd": fwd, "bwd": bwd, "fwd_flops": fwd_fl, "bwd_flops": bwd_fl,
            "tp_fwd": tp, "tp_bwd": tp}


def head_times(model: Transformer, plan: GpuPlan, gpu: GpuSpec) -> tuple[float, float]:
    """(seconds, FLOPs) of the logits head and loss for one micro-batch (last stage)."""
    T, t = plan.micro_batch * model.seq, plan.tp
    f, b, ff, fb = _train_gemm(T, model.vocab // t, model.hidden, gpu)
    logits = T * model.vocab / t
    ce = gk.elementwise_seconds(20 * logits, gpu) + 2 * gk.all_reduce_seconds(4 * T, t, gpu)
    norm = gk.elementwise_seconds(5 * T * model.hidden * 2.0, gpu)
    return f + b + ce + norm, ff + fb


def embedding_seconds(model: Transformer, plan: GpuPlan, gpu: GpuSpec) -> float:
    """Embedding lookup, position add and their backward for one micro-batch (first stage)."""
    E = plan.micro_batch * model.seq * model.hidden * 2.0
    return gk.elementwise_seconds(6 * E, gpu) + 2 * gk.all_reduce_seconds(E, plan.tp, gpu)


def step_time(model: Transformer, plan: GpuPlan, gpu: GpuSpec) -> GpuStep:
    """Time of one training step (see the module docstring). The plan must split the model
    (``gpu_plan.check_shapes``); memory is reported, not checked (``gpu_plan.require_fit``)."""
    gp.check_shapes(model, plan, gpu)
    lt = layer_times(model, plan, gpu)
    per_layer = lt["fwd"] + lt["bwd"] + (lt["fwd"] if plan.recompute else 0.0)
    per_layer_tp = lt["tp_fwd"] + lt["tp_bwd"] + (lt["tp_fwd"] if plan.recompute else 0.0)
    layers = model.layers // plan.pp
    head_s, head_fl = head_times(model, plan, gpu)
    embed_s = embedding_seconds(model, plan, gpu)
    across = plan.tp * plan.dp >= gpu.gpus_per_node
    act = plan.micro_batch * model.seq * model.hidden * 2.0 / plan.tp
    p2p = (2 * plan.chunks * (gk.p2p_seconds(act, gpu, across) + gpu.launch_sync_seconds)
           if plan.pp > 1 else 0.0)
    core = layers * (per_layer + per_layer_tp) + p2p
    first = core + embed_s + (head_s if plan.pp == 1 else 0.0)
    last = core + head_s
    slowest = max(first, last)
    m, p, v = plan.micro_batches, plan.pp, plan.chunks
    pipe = (m + (p - 1) / v) * slowest
    params = (layers * model.layer_params + (model.vocab + model.seq) * model.hidden) / plan.tp
    dp = gk.all_reduce_seconds(2.0 * params, plan.dp, gpu,
                               per_node=max(1, gpu.gpus_per_node // plan.tp))
    tied = (gk.all_reduce_seconds(2.0 * model.vocab * model.hidden / plan.tp, 2, gpu,
                                  per_node=1) if p > 1 else 0.0)
    update = gk.elementwise_seconds(30.0 * params, gpu)
    compute = m * layers * per_layer
    parts = {"layers": compute, "tp_comm": m * layers * per_layer_tp, "pp_comm": m * p2p,
             "embedding+head": m * (slowest - core), "bubble": (p - 1) / v * slowest,
             "dp_comm": dp + tied, "update": update}
    fl_layer = lt["fwd_flops"] * (2 if plan.recompute else 1) + lt["bwd_flops"]
    flops = m * (layers * fl_layer + head_fl / p)  # the head's FLOPs averaged over stages
    return GpuStep(model, plan, gpu, pipe + dp + tied + update, parts, flops,
                   gp.memory(model, plan, gpu))


def megatron_flops(model: Transformer, global_batch: int) -> float:
    """Model FLOPs of one step as [MEG] Eq. 3 counts them (activation recomputation included):
    96 B s l h^2 (1 + s / (6 h) + V / (16 l h))."""
    B, s, l, h, V = global_batch, model.seq, model.layers, model.hidden, model.vocab
    return 96.0 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))


def choose_plan(model: Transformer, gpus: int, global_batch: int, gpu: GpuSpec,
                attention: str = "fused") -> tuple[GpuStep, list[str]]:
    """The fastest plan of ``gpus`` GPUs that fits their memory, and notes saying what was
    refused. Raises ``gpu_plan.PlanDoesNotFit`` when none fits."""
    best, refused = None, 0
    for plan in gp.candidate_plans(model, gpus, global_batch, gpu, attention):
        if not gp.fits(model, plan, gpu)[0]:
            refused += 1
            continue
        st = step_time(model, plan, gpu)
        if best is None or st.step_s < best.step_s:
            best = st
    if best is None:
        raise gp.PlanDoesNotFit(f"{model.name or 'model'}: none of the plans of {gpus} "
                                f"{gpu.name} fits {gpu.hbm_bytes / 1e9:.0f} GB per GPU")
    return best, [f"{gpu.name} plan: {refused} candidate plans of {gpus} GPUs refused (memory); "
                  f"fastest that fits: {best.plan.describe()}"]


def assumptions(step: GpuStep) -> list[str]:
    """What the GPU training estimate assumes, for printing with it."""
    g, p = step.gpu, step.gpu.params
    return [
        f"{g.name} training: {step.plan.describe()}; Megatron-style kernels per layer "
        f"(GEMMs by tile/wave quantisation on {g.sms} SMs up to "
        f"{p.achievable_compute_fraction:.3g} of peak, element-wise at "
        f"{p.achievable_bandwidth_fraction:.3g} of HBM"
        + (f", fused attention at {p.flash_attention_fraction:.3g} of peak"
           if step.plan.attention == "fused" else ", unfused attention") + ")",
        f"{g.name} training: collectives at {p.collective_bandwidth_fraction:.3g} of NVLink "
        f"({g.nvlink_bytes_per_s / 2e9:.0f} GB/s per direction) in a node of "
        f"{g.gpus_per_node}, of one {g.nic_bytes_per_s * 8e-9:.0f} Gb/s NIC per GPU across nodes; "
        "data-parallel all-reduce and Adam update after the pipeline, not overlapped",
        f"{g.name} training: memory per GPU {step.memory_bytes / 1e9:.1f} GB of "
        f"{g.hbm_bytes / 1e9:.0f} GB (16 B per parameter for mixed-precision Adam, activations "
        f"per [ACT], {p.reserved_bytes / 1e9:.3g} GB reserved)",
    ]
