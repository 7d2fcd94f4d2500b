"""Kernel looping as a lowering pass: consecutive calls of the same kernel become one loop.

A stack of identical decoder layers reaches the lowering either as a ``scan`` (already one
kernel with ``trips`` = layers) or unrolled: the same fused kernel called once per layer, back
to back (or a layer made of a few kernels, called in the same order for every layer).
``loop_repeated_kernels`` finds runs of consecutive repeats of the same kernel sequence (each
kernel with the same signature: phase, the same ops with the same FLOPs, bytes and counts, the
same off-chip traffic; each repeat reading what the previous one wrote) and merges each run into
ONE kernel whose trip is one repeat and whose ``trips`` is the number of repeats, as [KL] does
(Koeplinger et al., "Kernel Looping", arXiv 2410.23668): the calls become one call of a kernel
with an outer loop; ``calls_per_trip`` remembers how many calls one repeat was. How the loop is
timed is ``perf``'s business: with ``Options.kernel_looping`` the outer loop is pipelined
(launch, synchronisation, fill and drain paid once per call; the next trip's weight loads
overlap the current trip), without it every trip pays them as the separate calls
did. Either way the graph is the same, so both can be reported from one lowering.

The merged kernel reads and writes the union of the calls' tensors (totals per call, as a scan
kernel's are) and carries the bytes one call passed to the next. A block-sparse gather in the
merged kernel is priced from the first call's index array (the calls' shapes are equal).
"""

from __future__ import annotations

from rdu_xla_backend.workload.graph import Kernel, Step, Tensor
from rdu_xla_backend.workload.operators import VIEWS


def signature(kernel: Kernel, tensors: dict[int, Tensor]) -> tuple:
    """What must be equal for two kernel calls to be calls of the same kernel."""
    ops = tuple((op.primitive, op.kind, op.flops, op.bytes_in, op.bytes_out, op.count,
                 None if op.gather is None else op.gather.__dict__ | {"origin": None})
                for op in kernel.ops)
    reads = tuple(sorted(tensors[k].nbytes for k in kernel.reads))
    writes = tuple(sorted(tensors[k].nbytes for k in kernel.writes))
    name = kernel.name.rsplit(".", 1)[0]
    return (name, kernel.phase, kernel.trips, kernel.local_bytes, ops, reads, writes)


def _hashable(sig: tuple) -> tuple:
    name, phase, trips, local, ops, reads, writes = sig
    ops = tuple(o[:-1] + (None if o[-1] is None else tuple(sorted(o[-1].items())),) for o in ops)
    return (name, phase, trips, local, ops, reads, writes)


MAX_PERIOD = 4  # kernels one repeated layer may be made of (e.g. attention, then MLP)


def repeated_runs(kernels: list[Kernel], tensors: dict[int, Tensor]) -> list[tuple[int, int, int]]:
    """(first, period, repeats) of each maximal run of >= 2 consecutive repeats of the same
    sequence of ``period`` single-trip kernel calls, each repeat feeding the next (it reads
    something the previous one wrote). The longest run wins, then the shortest period."""
    sigs = [_hashable(signature(k, tensors)) for k in kernels]
    single = [k.trips == 1 and k.calls == 1 for k in kernels]

    def feeds(a: int, b: int, p: int) -> bool:
        written = {t for k in kernels[a:a + p] for t in k.writes}
        return any(t in written for k in kernels[b:b + p] for t in k.reads)

    runs, i = [], 0
    while i < len(kernels):
        best = (0, 0)  # (covered kernels, -period)
        for p in range(1, MAX_PERIOD + 1):
            if not all(single[i:i + p]) or i + 2 * p > len(kernels):
                continue
            r = 1
            while (i + (r + 1) * p <= len(kernels) and all(single[i + r * p:i + (r + 1) * p])
                   and sigs[i + r * p:i + (r + 1) * p] == sigs[i:i + p]
                   and feeds(i + (r - 1) * p, i + r * p, p)):
                r += 1
            if r >= 2 and (r * p, -p) > best:
                best = (r * p, -p)
        if best[0]:
            p = -best[1]
            runs.append((i, p, best[0] // p))
            i += best[0]
        else:
            i += 1
    return runs


def loop_repeated_kernels(kernels: list[Kernel], steps: list[Step],
                          tensors: dict[int, Tensor], all_reduces_per_layer: int = 2
                          ) -> tuple[list[Kernel], list[Step]]:
    """Merge each run of repeated calls into one looped kernel.

    Args:
        kernels: kernels in program order.
        steps: execution units, referring to kernels by index (remapped here).
        tensors: graph tensors; their producer and consumer indices are remapped in place.
        all_reduces_per_layer: tensor-parallel all-reduces per trip of a looped kernel
            (``lowering.lower``).
    Returns:
        (kernels, steps) with every run merged; unchanged if there is none.
    """
    kernels, steps = fold_views(kernels, steps, tensors)
    runs = repeated_runs(kernels, tensors)
    if not runs:
        return kernels, steps
    start = {first: (period, reps) for first, period, reps in runs}
    new_index: dict[int, int] = {}
    out: list[Kernel] = []
    i = 0
    while i < len(kernels):
        period, reps = start.get(i, (1, 1))
        group = kernels[i:i + period * reps]
        for j in range(i, i + len(group)):
            new_index[j] = len(out)
        out.append(group[0] if len(group) == 1
                   else _merge(group, period, len(out), tensors, all_reduces_per_layer))
        i += len(group)
    return out, _remap(out, steps, tensors, new_index)


def _remap(kernels: list[Kernel], steps: list[Step], tensors: dict[int, Tensor],
           new_index: dict[int, int]) -> list[Step]:
    for t in tensors.values():
        t.producer = new_index.get(t.producer, t.producer) if t.producer >= 0 else t.producer
        t.consumers = sorted({new_index[c] for c in t.consumers})
    return [Step(s.eqns, sorted({new_index[k] for k in s.kernels})) for s in steps]


def _view_only(kernel: Kernel) -> bool:
    return kernel.trips == 1 and all(op.kind == "free" or op.primitive in VIEWS
                                     for op in kernel.ops)


def fold_views(kernels: list[Kernel], steps: list[Step], tensors: dict[int, Tensor]):
    """Fold kernels that only address values (slice a layer's weights out of a stack, reshape)
    into the next kernel, their only reader: on the chip this is the reader's address
    generation, not a kernel call. Tensors passed between the two disappear from ``tensors``."""
    folded: dict[int, int] = {}
    out: list[Kernel] = []
    for i, k in enumerate(kernels):
        nxt = kernels[i + 1] if i + 1 < len(kernels) else None
        if (nxt is not None and k.writes and _view_only(k)
                and all(tensors[t].consumers == [i + 1] for t in k.writes)):
            nxt.reads = list(k.reads) + [t for t in nxt.reads if t not in k.writes
                                         and t not in k.reads]
            nxt.read_bytes = {**k.read_bytes, **{t: b for t, b in nxt.read_bytes.items()
                                                 if t not in k.writes}}
            for t in k.writes:
                del tensors[t]
            folded[i] = i + 1
            continue
    if not folded:
        return kernels, steps
    new_index: dict[int, int] = {}
    for i, k in enumerate(kernels):
        if i not in folded:
            new_index[i] = len(out)
            out.append(k)
    for i in sorted(folded, reverse=True):
        new_index[i] = new_index[folded[i]]
    return out, _remap(out, steps, tensors, new_index)


def _merge(group: list[Kernel], period: int, index: int, tensors: dict[int, Tensor],
           all_reduces: int) -> Kernel:
    """One looped kernel: each trip is one repeat of the ``period`` kernels of ``group``."""
    body = group[:period]
    produced = {t for k in group for t in k.writes}
    reads, writes = [], []
    for k in group:
        reads += [t for t in k.reads if t not in reads and t not in produced]
        writes += [t for t in k.writes if t not in writes]

    def read_outside(t: int) -> bool:  # a program result, or read by a kernel outside the run
        inside = sum(t in k.reads for k in group)
        return not tensors[t].consumers or len(tensors[t].consumers) > inside

    # What one repeat passes to the next stays on chip (the loop carry).
    writes = [t for t in writes if read_outside(t)]
    passed = ({t for k in body for t in k.writes}
              & {t for k in group[period:2 * period] for t in k.reads})
    carry = sum(tensors[t].nbytes for t in passed)
    read_bytes = {}
    for t in reads:
        n = tensors[t].nbytes
        total = sum(k.read_charge(t, n) for k in group if t in k.reads)
        if total < n:
            read_bytes[t] = total
    name = "+".join(k.name.rsplit(".", 1)[0] for k in body) + f".looped.{index}"
    return Kernel(name, body[0].phase, [op for k in body for op in k.ops], reads=reads,
                  writes=writes, trips=len(group) // period, calls=1,
                  local_bytes=sum(k.local_bytes for k in body),
                  working_bytes=sum(k.working_bytes for k in body),
                  largest_bytes=max(k.largest_bytes for k in body), carry_bytes=carry,
                  read_bytes=read_bytes, calls_per_trip=sum(k.calls_per_trip for k in body),
                  collectives=all_reduces)
