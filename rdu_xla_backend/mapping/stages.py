"""Which kernels of a lowered program a pipeline stage runs, and the program's byte totals.

A program with a layer loop (a looped kernel of ``trips`` = L layers, forward and backward) is
cut into pipeline stages of whole layers: kernels before the forward loop (the embedding) and
after the backward loop (its gradient) go with the first stage, those between (the head, the
loss and their gradients) with the last; the optimizer update is spread over the stages by their
share of the parameters. ``structure`` also totals what a socket must hold: parameters by
stage group, optimizer state, KV cache, the activations the forward keeps for the backward
(tensors a forward kernel writes and a backward kernel reads) and one layer's input (the loop
carry: all that is kept with activation recomputation).

Units: bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdu_xla_backend.mapping.placement import CATEGORIES, categorize


@dataclass
class Structure:
    """Where a program's kernels go in a pipeline, and its byte totals (see ``structure``).

    Attributes:
        groups: kernel index -> 'first', 'layers', 'last' or 'update'.
        layers: L, trips of the layer loop (1 when there is none).
        training: the program has a backward.
        cat_bytes: kernel index -> category -> bytes one call moves (unsharded, whole batch).
        shares: the totals ``parallel.socket_bytes`` takes.
        recomputes: the traced program already recomputes (holds only layer inputs).
    """

    groups: dict[int, str]
    layers: int
    training: bool
    cat_bytes: dict[int, dict[str, float]]
    shares: dict[str, float]
    recomputes: bool


def structure(graph) -> Structure:
    """Classify the kernels of ``graph`` and total its bytes (cached on the graph)."""
    if "_plan_structure" in graph.__dict__:
        return graph.__dict__["_plan_structure"]
    cat = categorize(graph)
    loops = [i for i, k in enumerate(graph.kernels) if k.trips > 1 and k.phase != "update"]
    fwd = next((i for i in loops if graph.kernels[i].phase == "forward"), None)
    bwd = next((i for i in loops if graph.kernels[i].phase == "backward"), None)
    groups = {}
    for i, k in enumerate(graph.kernels):
        if k.phase == "update":
            groups[i] = "update"
        elif i in (fwd, bwd):
            groups[i] = "layers"
        elif k.phase == "forward":
            groups[i] = "first" if fwd is None or i < fwd else "last"
        else:  # head backward before the layers' backward, embedding backward after
            groups[i] = "last" if bwd is not None and i < bwd else "first"
    cat_bytes = {}
    for i, k in enumerate(graph.kernels):
        per = dict.fromkeys(CATEGORIES, 0.0)
        if k.local_bytes:
            per["activations"] = k.local_bytes
        for key in k.reads + k.writes:
            t = graph.tensors[key]
            if t.generated or key not in cat:
                continue
            per[cat[key]] += (k.read_charge(key, t.nbytes) if key in k.reads
                              else k.write_charge(key, t.nbytes))
        cat_bytes[i] = per
    saved = {"first": 0.0, "layers": 0.0, "last": 0.0}
    for t in graph.tensors.values():
        if (t.producer >= 0 and graph.kernels[t.producer].phase == "forward"
                and any(graph.kernels[c].phase == "backward" for c in t.consumers)):
            saved[groups[t.producer]] += t.nbytes
    params = {"first": set(), "layers": set(), "last": set()}
    for i, k in enumerate(graph.kernels):
        if groups[i] != "update":
            params[groups[i]].update(x for x in k.reads if cat.get(x) == "weights")
    params["first"] -= params["layers"]
    params["last"] -= params["layers"] | params["first"]
    pbytes = {g: sum(graph.tensors[x].nbytes for x in s) for g, s in params.items()}
    psum = sum(pbytes.values()) or 1.0
    total = {c: sum(graph.tensors[x].nbytes for x, c2 in cat.items()
                    if c2 == c and graph.tensors[x].producer < 0) for c in CATEGORIES}
    L = graph.kernels[fwd].trips if fwd is not None else 1
    carry = graph.kernels[fwd].carry_bytes if fwd is not None else 0.0
    shares = {"params": total["weights"], "optimizer": total["optimizer_state"],
              "kv_cache": total["kv_cache"], "saved_layers": saved["layers"],
              "saved_first": saved["first"], "saved_last": saved["last"], "carry": carry,
              "param_layers": pbytes["layers"] / psum, "param_first": pbytes["first"] / psum,
              "param_last": pbytes["last"] / psum}
    training = bwd is not None or any(k.phase == "backward" for k in graph.kernels)
    recomputes = training and carry > 0 and saved["layers"] <= 1.5 * carry * L
    out = Structure(groups, L, training, cat_bytes, shares, recomputes)
    graph.__dict__["_plan_structure"] = out
    return out


def carry_shape(graph) -> tuple[int, ...] | None:
    """Shape of the layer loop's carry (batch first, width last), or None without a loop."""
    st = structure(graph)
    loop = next((i for i, g in st.groups.items() if g == "layers"), None)
    if loop is None:
        return None
    k = graph.kernels[loop]
    for key in k.reads:
        t = graph.tensors[key]
        if t.nbytes == k.carry_bytes and len(t.shape) >= 2:
            return t.shape
    return None
