"""Three-tier memory: where weights, KV cache, activations and optimizer state live.

SRAM (PMU scratchpads) holds what a kernel produces and consumes inside itself, tile by tile
(``perf`` checks each kernel's working set per tile against it and charges the excess as a spill
to HBM and back). The tensors that cross kernel boundaries live off chip, placed here:

1. Each tensor gets a category: a program input has the role its caller gave ``lower``
   (``graph.input_roles``: weights, KV cache, optimizer state, activations); without one, a
   floating input is weights and an integer input (tokens, indices) activations; every value a
   kernel produces is an activation.
2. HBM is filled by priority: activations first (the peak of their live set is reserved, from
   a liveness sweep in program order), then KV cache, weights, optimizer state. What does not fit
   HBM spills to DDR; what fits neither is *overflow*: reported (``MemoryPlan.overflow``, a note
   in every estimate) and charged as streamed from the host over the host link, never hidden.
3. Capacities are per socket times the sockets the program is split over. A KV cache a step
   returns updated lives where the input cache does (an in-place update, no second copy).

DDR -> HBM copies (switching models, [SN40L] Composition of Experts) take
``copy_seconds``: bytes / (sockets x DDR bandwidth x ``ddr_peak_factor`` x ``ddr_efficiency``);
each socket copies its own shard from its own DDR.

Units: bytes, seconds.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import jax.numpy as jnp

from rdu_xla_backend.mapping.tiers import tier_bytes_per_s
from rdu_xla_backend.workload.graph import ROLES, Graph

CATEGORIES = ROLES  # HBM priority order
OFF_CHIP = ("hbm", "ddr")


def _floating(dtype: str) -> bool:
    try:
        return bool(jnp.issubdtype(jnp.dtype(dtype), jnp.floating))
    except TypeError:  # PRNG keys
        return False


def categorize(graph: Graph) -> dict[int, str]:
    """Category of every non-generated graph tensor (see the module docstring)."""
    pos = {k: i for i, k in enumerate(graph.inputs)}
    out = {}
    for t in graph.tensors.values():
        if t.generated:
            continue
        if t.key in pos and t.producer < 0:
            roles = graph.input_roles
            role = roles[pos[t.key]] if pos[t.key] < len(roles) else None
            if role is not None:
                out[t.key] = role
            elif _floating(t.dtype):
                out[t.key] = "weights"
            else:
                out[t.key] = "activations"
        elif t.producer < 0:  # a jaxpr constant
            out[t.key] = "weights"
        else:
            out[t.key] = "activations"
    kv = {(t.shape, t.dtype): t.key for t in graph.tensors.values() if out.get(t.key) == "kv_cache"}
    for t in graph.tensors.values():  # the updated cache a step returns is the cache
        if t.producer >= 0 and (t.shape, t.dtype) in kv:
            out[t.key] = "kv_cache"
    return out


def updated_in_place(graph: Graph, category_of: dict[int, str]) -> dict[int, int]:
    """Produced KV-cache tensors -> the input cache tensor they update in place (same shape)."""
    inputs = {(t.shape, t.dtype): t.key for t in graph.tensors.values()
              if category_of.get(t.key) == "kv_cache" and t.producer < 0}
    return {t.key: inputs[(t.shape, t.dtype)] for t in graph.tensors.values()
            if category_of.get(t.key) == "kv_cache" and t.producer >= 0
            and (t.shape, t.dtype) in inputs}


@dataclass
class MemoryPlan:
    """Where every off-chip tensor lives, per category and tier.

    Attributes:
        tier_of: tensor key -> 'hbm', 'ddr' or 'overflow'.
        category_of: tensor key -> category.
        bytes: category -> tier -> bytes placed (overflow included).
        capacity: tier -> bytes available over all sockets.
        overflow: keys that fit no tier (reported, charged over the host link).
        spilled: keys placed below HBM (in DDR) for lack of room.
        sockets: sockets the capacities are summed over.
    """

    tier_of: dict[int, str]
    category_of: dict[int, str]
    bytes: dict[str, dict[str, float]]
    capacity: dict[str, float]
    overflow: list[int] = field(default_factory=list)
    spilled: list[int] = field(default_factory=list)
    sockets: int = 1

    def notes(self) -> list[str]:
        """One line per category with its bytes per tier, plus overflow and spill warnings."""
        lines = []
        for cat in CATEGORIES:
            per = self.bytes.get(cat, {})
            if per:
                where = ", ".join(f"{t} {b / 1e9:.4g} GB" for t, b in per.items() if b)
                lines.append(f"memory: {cat}: {where or '0 GB'}")
        cap = ", ".join(f"{t} {b / 1e9:.4g} GB" for t, b in self.capacity.items())
        lines.append(f"memory: capacity over {self.sockets} socket(s): {cap}")
        if self.spilled:
            lines.append(f"memory: {len(self.spilled)} tensors spilled from HBM to DDR")
        if self.overflow:
            total = sum(self.bytes.get(c, {}).get("overflow", 0.0) for c in CATEGORIES)
            lines.append(f"memory: OVERFLOW: {len(self.overflow)} tensors ({total / 1e9:.4g} GB) "
                         "fit in no tier; charged as streamed over the host link")
        return lines


def _capacity(chip, sockets: int) -> dict[str, float]:
    cap = {"hbm": chip.hbm_bytes * sockets, "ddr": getattr(chip, "ddr_bytes", 0.0) * sockets}
    return {t: c for t, c in cap.items() if c > 0}


def plan_memory(graph: Graph, chip, sockets: int = 1) -> MemoryPlan:
    """Place every off-chip tensor of ``graph`` on ``sockets`` sockets of ``chip``."""
    cat = categorize(graph)
    cap = _capacity(chip, sockets)
    tiers = list(cap)
    end = len(graph.kernels)
    outputs = {k for k in graph.outputs if isinstance(k, int)}

    def death(t) -> int:
        return end if t.key in outputs or not t.consumers else max(t.consumers)

    aliases = updated_in_place(graph, cat)
    produced = sorted((graph.tensors[k] for k, c in cat.items()
                       if graph.tensors[k].producer >= 0 and k not in aliases),
                      key=lambda t: (t.producer, t.key))
    inputs = [graph.tensors[k] for k, c in cat.items() if graph.tensors[k].producer < 0]
    inputs.sort(key=lambda t: (CATEGORIES.index(cat[t.key]), t.key))
    # Peak of the produced (activation) live set, reserved in HBM first.
    live, peak, now = [], 0.0, 0.0
    for t in produced:
        while live and live[0][0] < t.producer:
            now -= heapq.heappop(live)[2]
        heapq.heappush(live, (death(t), t.key, t.nbytes))
        now += t.nbytes
        peak = max(peak, now)
    left = dict(cap)
    reserve = min(peak, left.get("hbm", 0.0))
    if "hbm" in left:
        left["hbm"] -= reserve
    tier_of: dict[int, str] = {}
    for t in inputs:
        tier = next((x for x in tiers if t.nbytes <= left[x]), "overflow")
        tier_of[t.key] = tier
        if tier != "overflow":
            left[tier] -= t.nbytes
    if "hbm" in left:
        left["hbm"] += reserve
    live = []
    for t in produced:
        while live and live[0][0] < t.producer:
            _, _, tier, size = heapq.heappop(live)
            left[tier] += size
        tier = next((x for x in tiers if t.nbytes <= left[x]), "overflow")
        tier_of[t.key] = tier
        if tier != "overflow":
            left[tier] -= t.nbytes
            heapq.heappush(live, (death(t), t.key, tier, t.nbytes))
    for k, src in aliases.items():  # an in-place update lives where the cache does
        tier_of[k] = tier_of[src]
    per: dict[str, dict[str, float]] = {}
    for k, tier in tier_of.items():
        if k in aliases:
            continue
        d = per.setdefault(cat[k], {})
        d[tier] = d.get(tier, 0.0) + graph.tensors[k].nbytes
    overflow = [k for k, t in tier_of.items() if t == "overflow"]
    spilled = [k for k, t in tier_of.items() if t == "ddr" and "hbm" in cap]
    return MemoryPlan(tier_of, cat, per, cap, overflow, spilled, sockets)


def place_tensors(graph: Graph, chip, sockets: int = 1) -> tuple[dict[int, str], list[int]]:
    """(tier of every off-chip tensor, overflowing keys): ``plan_memory`` in short."""
    plan = plan_memory(graph, chip, sockets)
    return plan.tier_of, plan.overflow


def copy_seconds(nbytes: float, chip, sockets: int = 1, src: str = "ddr",
                 dst: str = "hbm") -> float:
    """Seconds to copy ``nbytes`` from ``src`` to ``dst`` on ``sockets`` sockets of an RDU, each
    moving its shard at the slower tier's achievable bandwidth (``cost.rdu.
    achievable_bytes_per_s``: DDR at ``ddr_efficiency`` x ``ddr_peak_factor`` x the public
    "over 200 GB/s"; [SN40L]: an 8-socket node copies DDR -> HBM at over 1 TB/s)."""
    p = chip.params
    rate = {t: tier_bytes_per_s(chip, t) * {"hbm": p.hbm_efficiency,
                                             "ddr": p.ddr_efficiency * p.ddr_peak_factor
                                             }.get(t, 1.0) for t in (src, dst)}
    return nbytes / (sockets * min(rate.values()))
