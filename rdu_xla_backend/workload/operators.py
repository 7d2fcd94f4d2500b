"""Operator-level kernels: how an unfused program (and the GPU baseline) splits into launches.

An unfused program runs one kernel per *operator*, as a framework launches them: every matmul,
gather, cache update, scatter or sort is a kernel of its own, and a run of consecutive
element-wise ops, reductions and layout moves between them (a softmax, a norm, an activation, a
residual add) is one kernel, as every framework's element-wise fusion makes it. Wiring (reshape,
broadcast) launches nothing. A kernel reads the values it uses that an earlier kernel produced
and writes the values a later kernel (or the program) uses: those bytes go through off-chip
memory. Values are followed by the keys ``collect`` records on each op (``Op.ins``/``Op.outs``).

Units: bytes and FLOPs per execution of the operator; ``count`` executions per kernel call.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdu_xla_backend.workload.graph import Kernel, Op

# Ops that are a kernel of their own (data-dependent addressing, in-place updates, sorting).
SOLO = {"dynamic_update_slice", "scatter", "scatter-add", "scatter_add", "scatter-mul",
        "scatter-min", "scatter-max", "sort", "select_and_scatter_add", "select_and_gather_add"}
FUSIBLE_KINDS = ("vector", "transcendental", "reduce", "memory")


@dataclass
class OperatorGroup:
    """One operator-level kernel: its ops and the bytes crossing its boundary per execution."""

    ops: list[Op]
    count: int  # executions per call of the enclosing kernel
    in_bytes: float  # distinct values read that another operator (or the program) produced
    out_bytes: float  # values written that another operator (or the program) uses

    @property
    def flops(self) -> float:
        return sum(op.flops for op in self.ops)

    @property
    def kind(self) -> str:
        """'matmul', 'gather' or 'memory' for a solo op, else 'vector' (an element-wise run)."""
        kinds = {op.kind for op in self.ops}
        for k in ("matmul", "gather"):
            if k in kinds:
                return k
        if len(self.ops) == 1 and self.ops[0].primitive in SOLO:
            return "memory"
        return "vector"

    @property
    def name(self) -> str:
        main = next((op for op in self.ops if op.primitive not in VIEWS), self.ops[0]).primitive
        return main if len(self.ops) == 1 else f"{main}+{len(self.ops) - 1}"


def _solo(op: Op) -> bool:
    return (op.kind not in FUSIBLE_KINDS or op.primitive in SOLO
            or (op.kind == "memory" and op.primitive == "gather"))


# Ops that only address their operand (a framework passes a view to the next kernel).
VIEWS = {"slice", "dynamic_slice", "transpose", "rev"}
IN_PLACE = {"dynamic_update_slice", "scatter", "scatter-add", "scatter_add", "scatter-mul",
            "scatter-min", "scatter-max"}


def _read_charge(op: Op, position: int, size: float) -> float:
    """Bytes ``op`` really reads of its ``position``-th keyed operand of ``size`` bytes."""
    if position == 0 and (op.primitive in ("slice", "dynamic_slice") or op.kind == "gather"
                          or op.primitive == "gather"):
        return min(size, op.bytes_out)
    if position == 0 and op.primitive in IN_PLACE:
        return 0.0 if op.primitive == "dynamic_update_slice" else min(size, op.bytes_out)
    return size


def _write_charge(op: Op, size: float) -> float:
    """Bytes ``op`` really writes of an output of ``size`` bytes (in-place updates: the update)."""
    return min(size, op.bytes_out) if op.primitive in IN_PLACE else size


def _split(ops: list[Op]) -> list[list[int]]:
    """Indices of the non-free ops per operator (see the module docstring)."""
    idx: list[list[int]] = []
    pending: list[int] = []  # views waiting for the operator that reads them
    last_count = None
    for i, op in enumerate(ops):
        if op.kind == "free":
            continue
        if op.primitive in VIEWS and (not idx or last_count != op.count or _solo(ops[idx[-1][-1]])):
            pending.append(i)
            last_count = op.count
            continue
        if _solo(op) or not idx or last_count != op.count or _solo(ops[idx[-1][-1]]):
            idx.append(pending + [i])
        else:
            idx[-1] += pending + [i]
        pending = []
        last_count = op.count
    # Views nobody here reads (the operand of a kernel in the next execution unit) launch
    # nothing: the reader addresses them (and is charged the bytes it reads).
    return idx


def operator_groups(ops: list[Op]) -> list[OperatorGroup]:
    """Split a kernel's ops (in program order) into operator-level kernels.

    A view (slice, transpose) before a matmul or a gather is part of that operator (it is how
    the operand is addressed), a slice or gather reads only what it selects, and an in-place
    update (a KV-cache write) writes only its update.

    Args:
        ops: ops with their value keys (``collect``); free ops only alias values.
    Returns:
        groups in order; each non-free op belongs to at most one group (a trailing view to none).
    """
    root: dict[int, int] = {}
    size: dict[int, float] = {}

    def find(k: int) -> int:
        while k in root:
            k = root[k]
        return k

    for op in ops:
        if op.kind == "free":
            src = [k for k, _ in op.ins]
            for k, _ in op.outs:
                if src:
                    root[k] = find(src[0])
                else:
                    size[k] = 0.0  # a broadcast constant: generated where it is used
    for op in ops:
        for k, b in op.ins + op.outs:
            size.setdefault(find(k), b)
    idx = _split(ops)
    consumers: dict[int, set[int]] = {}
    for g, members in enumerate(idx):
        for i in members:
            for k, _ in ops[i].ins:
                consumers.setdefault(find(k), set()).add(g)
    groups = []
    for g, members in enumerate(idx):
        produced: dict[int, float] = {}
        for i in members:
            for k, _ in ops[i].outs:
                r = find(k)
                produced[r] = max(produced.get(r, 0.0), _write_charge(ops[i], size.get(r, 0.0)))
        read: dict[int, float] = {}
        for i in members:
            for pos, (k, _) in enumerate(ops[i].ins):
                r = find(k)
                if r not in produced:
                    read[r] = max(read.get(r, 0.0), _read_charge(ops[i], pos, size.get(r, 0.0)))
        # Written: used by another operator, by nobody here (a result), or a top-level value
        # (negative key: a later execution unit may read it).
        written = [b for r, b in produced.items()
                   if r < 0 or r not in consumers or consumers[r] - {g}]
        gops = [ops[i] for i in members]
        groups.append(OperatorGroup(gops, gops[-1].count, sum(read.values()), sum(written)))
    return groups


def operator_kernels(ops: list[Op], start: int = 0) -> list[Kernel]:
    """One unfused ``Kernel`` per operator group, called ``count`` times, bytes off chip.

    Args:
        ops: the ops of one execution unit, in program order (they are copied, not changed).
        start: index of the first kernel (for names).
    """
    out = []
    for grp in operator_groups(ops):
        gops = [Op(**{**op.__dict__, "count": 1}) for op in grp.ops]
        out.append(Kernel(f"{grp.name}.{start + len(out)}", "op", gops, calls=grp.count,
                          local_bytes=grp.in_bytes + grp.out_bytes,
                          working_bytes=sum(op.out_bytes_each for op in gops),
                          largest_bytes=max(op.out_bytes_each for op in gops)))
    return out


def charged_reads(ops: list[Op], sizes: dict[int, float]) -> dict[int, float]:
    """Bytes a fused kernel really reads of each input value: a value it only slices or gathers
    from costs what is selected; any other use (free ops included) costs the whole value.

    Args:
        ops: the kernel's ops with value keys.
        sizes: value key -> bytes of the kernel's inputs.
    Returns:
        value key -> bytes read, for every key of ``sizes``.
    """
    out: dict[int, float | None] = {k: None for k in sizes}
    for op in ops:
        for pos, (k, _) in enumerate(op.ins):
            if k in out:
                charge = sizes[k] if op.kind == "free" else _read_charge(op, pos, sizes[k])
                out[k] = max(out[k] or 0.0, charge)
    return {k: (sizes[k] if v is None else v) for k, v in out.items()}


def charged_writes(ops: list[Op], sizes: dict[int, float]) -> dict[int, float]:
    """Bytes a fused kernel really writes of each output value: an in-place update (a KV-cache
    write) writes its update, anything else the whole value.

    Args:
        ops: the kernel's ops with value keys.
        sizes: value key -> bytes of the kernel's outputs.
    """
    out = dict(sizes)
    for op in ops:
        for k, _ in op.outs:
            if k in out and op.primitive in IN_PLACE:
                out[k] = _write_charge(op, sizes[k])
    return out
