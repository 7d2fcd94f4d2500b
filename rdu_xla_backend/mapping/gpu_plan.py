"""A GPT training job mapped onto GPUs: the parallel plan and the memory it needs per GPU.

- ``Transformer``: the workload as shapes (a GPT decoder stack: layers, width, heads, MLP width,
  vocabulary, sequence).
- ``GpuPlan``: Megatron-style 3-D parallelism [MEG]: tensor parallel ``tp`` inside a node,
  pipeline ``pp`` stages of whole layers (``chunks`` > 1: the interleaved schedule, each GPU
  holding that many non-adjacent chunks of layers), data parallel ``dp``; micro-batches of
  ``micro_batch`` sequences, ``global_batch`` sequences per step; full activation recomputation
  or none; fused (FlashAttention-style) or unfused attention. GPU order: tensor ranks
  innermost, then data, then pipeline (so a pipeline neighbour is another node once
  tp x dp >= GPUs per node).
- ``memory``: bytes per GPU on the most loaded stage (the first: it holds the most micro-batches
  in flight; the embedding, as the last stage holds its tied copy):
  * model state: 16 bytes per parameter for mixed-precision Adam (FP16/BF16 weights and
    gradients, FP32 master weights and two moments) [ZERO];
  * activations of one layer for one micro-batch without recomputation [ACT] Eq. 2 (tensor
    parallel, no sequence parallel): s b h (10 + 24 / t + 5 a s / (h t)) bytes; the last term
    (attention scores, softmax and dropout mask, s^2 per head) is not stored by fused attention;
    with full recomputation only the layer input, 2 s b h bytes, plus one layer's full
    activations while it is recomputed [ACT] Sec. 4;
  * micro-batches in flight on the first stage: min(m, p) under 1F1B, times
    1 + (p - 1) / (p v) with v interleaved chunks [ACT] Sec. 4.2.2 / [MEG] Sec. 2.2;
  * the last stage's FP32 logits and their gradient (b s V / t x 8 bytes), added to the first
    stage's needs (an upper bound when they are different GPUs);
  * ``GpuParameters.reserved_bytes`` the model cannot use (context, buffers, fragmentation).

Units: bytes, sequences, tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdu_xla_backend.hardware import GpuSpec

ATTENTION = ("fused", "unfused")
STATE_BYTES_PER_PARAM = 16  # [ZERO] Sec. 3.1: 2 (weights) + 2 (grads) + 12 (FP32 Adam state)


@dataclass(frozen=True)
class Transformer:
    """A GPT decoder stack (learned positions, GELU MLP, tied embeddings), by its shapes."""

    layers: int
    hidden: int
    heads: int
    vocab: int
    seq: int
    ffn: int = 0  # MLP width; 0: 4 x hidden
    name: str = ""

    @property
    def mlp(self) -> int:
        return self.ffn or 4 * self.hidden

    @property
    def layer_params(self) -> float:
        """Weights and biases of one layer: QKV, projection, two MLP matrices, two norms."""
        h, f = self.hidden, self.mlp
        return 4 * h * h + 2 * h * f + 9 * h + f

    @property
    def params(self) -> float:
        """All parameters: layers, word and position embeddings (tied head), final norm."""
        return self.layers * self.layer_params + (self.vocab + self.seq) * self.hidden + \
            2 * self.hidden


@dataclass(frozen=True)
class GpuPlan:
    """How a step is split over ``tp x pp x dp`` GPUs (see the module docstring)."""

    tp: int
    pp: int
    dp: int
    micro_batch: int
    global_batch: int
    recompute: bool = True
    chunks: int = 1  # interleaved-schedule chunks per GPU (1: plain 1F1B)
    attention: str = "fused"
    # How weight gradients of successive micro-batches are summed: 'fused' (the weight-gradient
    # GEMM accumulates into the main gradient, Megatron's gradient-accumulation fusion) or
    # 'separate' (2021 Megatron: the GEMM writes an FP16 gradient, then an element-wise add
    # into the FP16 main-gradient buffer per micro-batch: 6 bytes per parameter read/written).
    grad_accumulation: str = "fused"

    def __post_init__(self) -> None:
        if min(self.tp, self.pp, self.dp, self.micro_batch, self.chunks) < 1:
            raise ValueError(f"plan sizes must be >= 1: {self}")
        if self.global_batch % (self.micro_batch * self.dp):
            raise ValueError(f"global batch {self.global_batch} is not a multiple of micro-batch "
                             f"{self.micro_batch} x dp {self.dp}")
        if self.grad_accumulation not in ("fused", "separate"):
            raise ValueError(f"grad_accumulation {self.grad_accumulation!r}; allowed: fused, "
                             "separate")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention {self.attention!r}; allowed: {', '.join(ATTENTION)}")

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def micro_batches(self) -> int:
        """Micro-batches per pipeline per step: global batch / (micro-batch x dp)."""
        return self.global_batch // (self.micro_batch * self.dp)

    @property
    def bubble_fraction(self) -> float:
        """Idle fraction of the pipeline: (p - 1) / (v m + p - 1) [MEG] Sec. 2.2."""
        p, m, v = self.pp, self.micro_batches, self.chunks
        return (p - 1) / (v * m + p - 1)

    def describe(self) -> str:
        return (f"TP {self.tp} x PP {self.pp} x DP {self.dp} = {self.gpus} GPUs, "
                f"{self.micro_batches} micro-batches of {self.micro_batch}"
                + (f", interleaved x{self.chunks}" if self.chunks > 1 else "")
                + f", recompute {'on' if self.recompute else 'off'}, {self.attention} attention")


def check_shapes(model: Transformer, plan: GpuPlan, gpu: GpuSpec) -> None:
    """Raise ValueError if the plan cannot split the model (whole layers per chunk, whole heads
    per tensor rank, tensor parallel inside one node)."""
    if model.layers % (plan.pp * plan.chunks):
        raise ValueError(f"{model.layers} layers do not split into {plan.pp} stages x "
                         f"{plan.chunks} chunks")
    if model.heads % plan.tp or plan.tp > gpu.gpus_per_node:
        raise ValueError(f"tp {plan.tp}: must divide {model.heads} heads and fit a node of "
                         f"{gpu.gpus_per_node} GPUs")
    if plan.chunks > 1 and plan.micro_batches % plan.pp:
        raise ValueError(f"interleaved schedule needs micro-batches ({plan.micro_batches}) "
                         f"a multiple of pp ({plan.pp})")


def layer_activation_bytes(model: Transformer, plan: GpuPlan) -> float:
    """Activations one layer keeps for one micro-batch, without recomputation [ACT] Eq. 2."""
    s, b, h, a, t = model.seq, plan.micro_batch, model.hidden, model.heads, plan.tp
    scores = 5 * a * s / (h * t) if plan.attention == "unfused" else 0.0
    mlp = 24 / t * model.mlp / (4 * h)  # [ACT] counts a 4h MLP; scale its share
    return s * b * h * (10 + mlp + scores)


def in_flight(plan: GpuPlan) -> float:
    """Micro-batches whose activations the first stage holds at once."""
    p = plan.pp
    f = float(min(plan.micro_batches, p))
    return f * (1 + (p - 1) / (p * plan.chunks)) if plan.chunks > 1 else f


def memory(model: Transformer, plan: GpuPlan, gpu: GpuSpec) -> dict[str, float]:
    """Bytes per GPU on the most loaded stage, by category (see the module docstring)."""
    layers = model.layers / plan.pp
    embed = (model.vocab + model.seq) * model.hidden / plan.tp
    params = layers * model.layer_params / plan.tp + embed
    one = layer_activation_bytes(model, plan)
    if plan.recompute:
        acts = 2 * model.seq * plan.micro_batch * model.hidden * layers * in_flight(plan) + one
    else:
        acts = one * layers * in_flight(plan)
    logits = 8 * plan.micro_batch * model.seq * model.vocab / plan.tp
    return {"weights+grads": 4 * params, "optimizer": 12 * params, "activations": acts,
            "logits": logits, "reserved": gpu.params.reserved_bytes}


def fits(model: Transformer, plan: GpuPlan, gpu: GpuSpec) -> tuple[bool, float]:
    """(whether the plan fits one GPU's HBM, bytes needed per GPU)."""
    need = sum(memory(model, plan, gpu).values())
    return need <= gpu.hbm_bytes, need


class PlanDoesNotFit(ValueError):
    """A plan (or every plan searched) needs more memory than a GPU has."""


def require_fit(model: Transformer, plan: GpuPlan, gpu: GpuSpec) -> None:
    """Raise ``PlanDoesNotFit`` (with the breakdown) unless ``plan`` fits ``gpu``."""
    check_shapes(model, plan, gpu)
    ok, need = fits(model, plan, gpu)
    if not ok:
        parts = ", ".join(f"{k} {v / 1e9:.1f} GB" for k, v in memory(model, plan, gpu).items())
        raise PlanDoesNotFit(f"{model.name or 'model'} on {gpu.name}: {plan.describe()} needs "
                             f"{need / 1e9:.1f} GB per GPU > {gpu.hbm_bytes / 1e9:.0f} GB "
                             f"({parts})")


def candidate_plans(model: Transformer, gpus: int, global_batch: int, gpu: GpuSpec,
                    attention: str = "fused") -> list[GpuPlan]:
    """Every plan of ``gpus`` GPUs that splits the model (tp in a node, whole layers per chunk),
    micro-batches 1..8, recomputation on/off, interleaving 1..4 chunks; memory not checked."""
    out = []
    for tp in (t for t in (1, 2, 4, 8) if t <= gpu.gpus_per_node and gpus % t == 0):
        for pp in (p for p in range(1, gpus // tp + 1) if (gpus // tp) % p == 0):
            dp = gpus // (tp * pp)
            for b in (1, 2, 4, 8):
                if global_batch % (b * dp):
                    continue
                for recompute in (True, False):
                    for v in (1, 2, 3, 4) if pp > 1 else (1,):
                        try:
                            plan = GpuPlan(tp, pp, dp, b, global_batch, recompute, v, attention)
                            check_shapes(model, plan, gpu)
                        except ValueError:
                            continue
                        out.append(plan)
    return out


def smallest_gpus(model: Transformer, global_batch: int, gpu: GpuSpec, start: int,
                  attention: str = "fused", limit: int = 4096) -> int:
    """The smallest GPU count >= ``start`` (whole nodes beyond one node) for which some plan
    fits; raises PlanDoesNotFit past ``limit``."""
    n = start
    while n <= limit:
        if any(fits(model, p, gpu)[0] for p in candidate_plans(model, n, global_batch, gpu,
                                                                 attention)):
            return n
        n = n * 2 if n < gpu.gpus_per_node else n + gpu.gpus_per_node
    raise PlanDoesNotFit(f"{model.name or 'model'}: no plan fits up to {limit} {gpu.name}")
