"""Across sockets: collectives, parallel plans (tensor x pipeline x data) and their layout.

- Tensor parallel over T sockets: every kernel's work and bytes are split T ways; a layer (a
  trip of a looped kernel) all-reduces its activation twice per pass (Megatron style [MEG]:
  after the attention output and the MLP down projection). One all-reduce of n bytes takes
  ``collective_parts``: ceil(log2 T) hops of ``inter_socket_latency_seconds`` (recursive
  doubling) and 2 (T - 1) / T x n bytes over the inter-socket link; the RDU streams the bytes
  tile by tile inside the kernel ([SN40L]: fused, pipelined collectives), the latency stays on
  each layer's dependency chain (``cost.rdu``). T must divide the attention heads and the model
  width (a head is not split).
- Pipeline parallel over P sockets: WHOLE layers per stage (``assign_layers``), the embedding on
  the first stage and the head on the last, balanced into the stage plan (a stage holding the
  head gets fewer layers); M micro-batches of the batch scheduled by ``pipeline``; optionally v
  virtual stages per socket (interleaved).
- Data parallel over D sockets: each replica takes batch / D sequences; a training step ends
  with an all-reduce of the gradients (each socket's share of the parameters) over the D
  replicas (``collective_seconds``).

Memory per socket (``socket_bytes``): parameters, gradients and optimizer state of its layers
(split T ways), the activations its schedule holds in flight (GPipe: all M micro-batches, 1F1B:
at most P - s; [MEG] Sec. 2.2.1), the KV cache of its layers. A plan whose socket does not fit
HBM + DDR is refused (the caller re-plans).

Units: bytes, seconds.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from rdu_xla_backend.mapping import pipeline as pl

PARAMETER_CATEGORIES = ("weights", "optimizer_state")  # do not scale with the micro-batch


def collective_parts(nbytes: float, sockets: int, chip) -> tuple[float, float]:
    """(latency, bandwidth) seconds of one all-reduce of ``nbytes`` over ``sockets`` RDU
    sockets: ceil(log2 P) hops, and 2 (P - 1) / P x n bytes over the link; (0, 0) for one."""
    if sockets <= 1:
        return 0.0, 0.0
    hops = math.ceil(math.log2(sockets))
    return (hops * chip.params.inter_socket_latency_seconds,
            2 * (sockets - 1) / sockets * nbytes / chip.inter_socket_bytes_per_s)


def collective_seconds(nbytes: float, sockets: int, chip) -> float:
    """One all-reduce of ``nbytes`` over ``sockets`` RDU sockets, not overlapped (0 for one)."""
    return sum(collective_parts(nbytes, sockets, chip))


def gpu_collective_seconds(nbytes: float, gpus: int, gpu) -> float:
    """One all-reduce on ``gpus`` GPUs over NVLink: a kernel launch plus the ring's bytes."""
    if gpus <= 1:
        return 0.0
    return gpu.launch_sync_seconds + 2 * (gpus - 1) / gpus * nbytes / gpu.nvlink_bytes_per_s


@dataclass(frozen=True)
class ParallelPlan:
    """How ``sockets = tensor x pipeline x data`` sockets share one step.

    Attributes:
        tensor, pipeline, data: degrees T, P, D.
        micro_batches: M micro-batches per replica (1: the batch is not cut).
        schedule: 'gpipe' or '1f1b'.
        virtual_stages: v chunks of layers per pipeline socket (interleaved when > 1).
        recompute: activations recomputed in the backward (only layer inputs held; one more
            forward of the layers charged).
        layers: (P x v,) whole layers of each pipeline chunk (model order; chunk j on socket
            j % P).
    """

    tensor: int
    pipeline: int
    data: int
    micro_batches: int
    schedule: str = "1f1b"
    virtual_stages: int = 1
    recompute: bool = False
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if min(self.tensor, self.pipeline, self.data, self.micro_batches,
               self.virtual_stages) < 1:
            raise ValueError(f"parallel degrees and micro-batches must be >= 1: {self}")
        if self.schedule not in pl.SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} unknown; allowed: "
                             f"{', '.join(pl.SCHEDULES)}")

    @property
    def sockets(self) -> int:
        return self.tensor * self.pipeline * self.data

    @property
    def chunks(self) -> int:
        return self.pipeline * self.virtual_stages

    def describe(self, batch: int | None = None) -> str:
        """One line: degrees, micro-batches, schedule, layers per stage."""
        parts = [f"TP {self.tensor} x PP {self.pipeline} x DP {self.data}"]
        if batch:
            per = batch // self.data // self.micro_batches
            parts.append(f"{self.micro_batches} micro-batch{'es' if self.micro_batches > 1 else ''}"
                         f" of {per} sequence{'s' if per != 1 else ''} per replica")
        else:
            parts.append(f"{self.micro_batches} micro-batches")
        if self.pipeline > 1:
            parts.append(self.schedule + (f" interleaved x{self.virtual_stages}"
                                          if self.virtual_stages > 1 else ""))
            parts.append(f"layers per stage {list(self.layers)}")
        if self.recompute:
            parts.append("activation recomputation")
        return ", ".join(parts)


def assign_layers(layers: int, chunks: int, layer_cost: float, first_cost: float = 0.0,
                  last_cost: float = 0.0) -> tuple[int, ...]:
    """Whole layers per pipeline chunk minimising the slowest chunk.

    Chunk 0 also runs the embedding (``first_cost``), the last chunk the head (``last_cost``),
    in the same units as ``layer_cost`` (seconds of one layer). Greedy: each layer goes to the
    chunk that is least loaded after taking it, which is optimal for identical items (the
    min-max load of ``chunks`` bins with fixed offsets).

    Returns:
        (chunks,) ints summing to ``layers``; a chunk may get 0 layers only when its fixed cost
        already exceeds the balanced load (e.g. a head larger than the other stages).
    """
    if chunks < 1 or layers < chunks:
        raise ValueError(f"{layers} layers cannot fill {chunks} pipeline chunks")
    extra = [0.0] * chunks
    extra[0] += first_cost
    extra[-1] += last_cost
    count = [0] * chunks
    heap = [(extra[j] + layer_cost, j) for j in range(chunks)]
    heapq.heapify(heap)
    for _ in range(layers):
        _, j = heapq.heappop(heap)
        count[j] += 1
        heapq.heappush(heap, (extra[j] + (count[j] + 1) * layer_cost, j))
    return tuple(count)


def tensor_degrees(sockets: int, width: int | None, heads: int | None) -> list[int]:
    """Tensor-parallel degrees T dividing ``sockets`` that the layer allows: T divides the
    attention ``heads`` (a head is never split) and the model ``width`` (None: unchecked)."""
    return [t for t in divisors(sockets)
            if (heads is None or heads % t == 0) and (width is None or width % t == 0)]


def divisors(n: int) -> list[int]:
    """Positive divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_plans(sockets: int, layers: int, batch: int, training: bool,
                    tensor_allowed: Sequence[int], kinds: Sequence[str] = ("tensor", "pipeline",
                                                                         "data"),
                    schedule: str = "1f1b", micro_batches: int | None = None,
                    recompute: Sequence[bool] = (False,)) -> list[ParallelPlan]:
    """Every (T, P, D, M, recompute) with T P D = ``sockets`` the model allows.

    P <= ``layers`` (whole layers), D divides ``batch``, M divides batch / D. Inference at one
    sequence per replica is never cut into micro-batches (M = 1). M candidates: ``micro_batches``
    when given, else 1 (no pipeline) or P, 2P, 4P, 8P (a pipeline), capped by batch / D.
    ``kinds`` limits which degrees may exceed 1.
    """
    plans = []
    for t in tensor_allowed:
        if t > 1 and "tensor" not in kinds:
            continue
        for p in divisors(sockets // t):
            d = sockets // t // p
            if (p > 1 and "pipeline" not in kinds) or (d > 1 and "data" not in kinds):
                continue
            if p > layers or batch % d:
                continue
            per_replica = batch // d
            if micro_batches is not None:
                ms = [micro_batches] if per_replica % micro_batches == 0 else []
            elif p == 1:  # gradient accumulation: fewer activations held, weights re-read
                ms = [m for m in (1, 2, 4, 8, 16, 32, 64) if per_replica % m == 0 and (
                    training or m == 1)]
            else:
                ms = [m for m in (p, 2 * p, 4 * p, 8 * p) if per_replica % m == 0] or [
                    max(x for x in divisors(per_replica) if x <= p)]
            for m in ms:
                for r in (recompute if training else (False,)):
                    plans.append(ParallelPlan(t, p, d, m, schedule, 1, r))
    return plans


def in_flight(plan: ParallelPlan, training: bool) -> list[float]:
    """(P,) micro-batch layers each pipeline socket holds at its peak, as a fraction of one
    micro-batch through all of the socket's layers (GPipe: M; 1F1B: min(P - s, M); interleaved
    from its order). 1 per socket for inference (one micro-batch in flight)."""
    P = plan.pipeline
    if not training:
        return [1.0] * P
    orders = pl.stage_orders(P, plan.micro_batches, True, plan.schedule, plan.virtual_stages)
    out = []
    for s, order in enumerate(orders):
        own = [j for j in range(plan.chunks) if j % P == s]
        total = sum(plan.layers[j] for j in own) or 1
        weight = [plan.layers[j] / total if j % P == s else 0.0 for j in range(plan.chunks)]
        out.append(pl.peak_in_flight(order, weight))
    return out


def socket_bytes(plan: ParallelPlan, socket: int, shares: dict, training: bool,
                 held: float) -> dict[str, float]:
    """Bytes one socket of ``plan`` holds, by category.

    Args:
        plan: the plan (with ``layers``).
        socket: pipeline position s.
        shares: the program's totals in bytes over the whole batch and model:
            ``params`` (weights), ``optimizer``, ``kv_cache``, ``saved`` (activations kept for
            the backward: of the layers ``saved_layers``, of the embedding ``saved_first``, of
            the head ``saved_last``), ``carry`` (one layer's input over the batch), and the
            parameter split ``param_layers`` / ``param_first`` / ``param_last`` (fractions).
        training: gradients and held activations counted.
        held: ``in_flight(plan)[socket]`` micro-batches held.
    Returns:
        {'weights', 'gradients', 'optimizer_state', 'kv_cache', 'activations'} bytes.
    """
    P, L = plan.pipeline, sum(plan.layers)
    mine = sum(n for j, n in enumerate(plan.layers) if j % P == socket) / L
    first, last = socket == 0, socket == P - 1
    pfrac = (mine * shares["param_layers"] + first * shares["param_first"]
             + last * shares["param_last"])
    t = plan.tensor
    weights = shares["params"] * pfrac / t
    # Held activations split T ways: sequence parallelism (Korthikanti et al. 2022, arXiv
    # 2205.05198) shards what tensor parallelism leaves replicated.
    per_mb = 1.0 / (plan.data * plan.micro_batches * t)
    if plan.recompute:  # only each layer's input is kept
        saved = shares["carry"] * mine * L + first * shares["saved_first"] + last * shares[
            "saved_last"]
    else:
        saved = (mine * shares["saved_layers"] + first * shares["saved_first"]
                 + last * shares["saved_last"])
    return {
        "weights": weights,
        "gradients": weights if training else 0.0,
        "optimizer_state": shares["optimizer"] * pfrac / t,
        "kv_cache": shares["kv_cache"] * mine / (t * plan.data),
        "activations": saved * per_mb * held if training else 0.0,
    }
