"""The dataflow graph IR: kernels made of operators, the tensors between kernels, loops.

A ``Graph`` is what ``lowering.lower`` builds from a jaxpr and what ``perf`` times and
``execute`` runs:

- ``Op``: one primitive application inside a kernel, with its work per execution (FLOPs, bytes
  read and written) and ``count``, how many times it runs per kernel call (the product of the
  trip counts of the loops inside the kernel that enclose it). ``kind`` says which unit runs it:
  ``matmul``/``vector``/``transcendental``/``reduce`` on PCUs, ``memory``/``gather`` on PMUs,
  ``free`` for pure wiring (reshape, broadcast: no unit, no kernel of its own).
- ``Kernel``: one configuration of the chip; its operators are pipeline stages. A looped kernel
  (``trips`` > 1) runs its body ``trips`` times, e.g. a ``scan`` over decoder layers.
- ``Tensor``: a value crossing a kernel boundary, with its bytes and the memory tier it lives in.
- ``Step``: the unit ``execute`` runs (top-level equations) and the kernels it accounts to.

Units: bytes, FLOPs (multiply and add count 2 for a matmul), counts are per kernel call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PCU_KINDS = ("matmul", "vector", "transcendental", "reduce")
PMU_KINDS = ("memory", "gather")
KINDS = PCU_KINDS + PMU_KINDS + ("free",)


def values_fingerprint(a: np.ndarray) -> tuple:
    """A hashable key that changes when an array's values change: its shape and a hash of its
    bytes (caches of gather and block-sparse costs hold it, so new indices are repriced)."""
    return (a.shape, hash(np.ascontiguousarray(a).tobytes()))


# What a program input is to the program, in the HBM priority order of the placement: the caller of
# ``lower`` names them (the workload cannot know a KV cache from a weight by its shape).
ROLES = ("activations", "kv_cache", "weights", "optimizer_state")


@dataclass(frozen=True)
class GatherInfo:
    """Shape of an indexed read X[t, idx * run : (idx + 1) * run] for t < tokens (see memory.py).

    Attributes:
        tokens: rows of X (product of the operand axes before the indexed axis).
        rows: extent of the indexed axis (block-rows of X).
        run: contiguous elements read per index (product of the axes after it).
        indices: indices read per execution.
        itemsize: bytes per element.
        origin: flat position of the top-level argument the indices were sliced from (None if
            they are computed, e.g. token ids after clipping, or unknown); perf then prices the
            real index values of that argument when it is concrete.
    """

    tokens: int
    rows: int
    run: int
    indices: int
    itemsize: int
    origin: int | None = None


@dataclass(frozen=True)
class BlockSparseInfo:
    """One block-sparse matmul call: y (T, out) = x (T, in) @ W, W stored as blocks.

    Attributes:
        tokens: T, rows of x.
        in_features, out_features: W's shape.
        block: (bk, bn) block shape in elements.
        blocks_per_col: k, stored blocks per output block-column (nc = out / bn columns).
        backward: False for y = x W; True for dx = dy W^T plus dvalues = x_r^T dy_j.
        itemsize: bytes per element of x.
        origin: flat position of the top-level argument holding the block-row indices
            ((nc, k), or stacked (..., nc, k) for a layer loop), or None if unknown.
    """

    tokens: int
    in_features: int
    out_features: int
    block: tuple[int, int]
    blocks_per_col: int
    backward: bool
    itemsize: int
    origin: int | None = None


@dataclass
class Op:
    """One primitive inside a kernel. FLOPs and bytes are per execution; ``count`` executions
    happen per kernel call (per trip for a looped kernel)."""

    primitive: str
    kind: str
    flops: float
    bytes_in: float
    bytes_out: float
    count: int = 1
    out_bytes_each: float = 0.0  # size of the value produced (for SRAM working set)
    gather: GatherInfo | None = None
    path: str = ""  # where it came from, e.g. 'scan/jit:_take/gather'
    # (value key, bytes) of the values read / written (keys follow a value through calls and
    # loops; ``operators`` uses them to find the bytes crossing an operator-kernel boundary).
    ins: tuple = ()
    outs: tuple = ()
    # A matmul's GEMM shape (batch, m, n, k): ``batch`` products of (m x k) @ (k x n); () if
    # not a matmul. The GPU baseline prices a GEMM by its shape (tile and wave quantisation).
    gemm: tuple = ()
    sparse: BlockSparseInfo | None = None  # set on the ops of a block-sparse matmul call

    @property
    def total_flops(self) -> float:
        return self.flops * self.count

    @property
    def total_bytes(self) -> float:
        return (self.bytes_in + self.bytes_out) * self.count


@dataclass
class Tensor:
    """A value at a kernel boundary (or a program input/output)."""

    key: int
    shape: tuple[int, ...]
    dtype: str
    nbytes: float
    tier: str = "hbm"
    producer: int = -1  # kernel index; -1 for a program input or constant
    consumers: list[int] = field(default_factory=list)
    generated: bool = False  # computed from small inputs by element-wise ops: made on chip


@dataclass
class Kernel:
    """One configuration of the chip: operators as pipeline stages, tensors in and out.

    ``reads``/``writes`` are the off-chip tensors (keys into ``Graph.tensors``) per call; a looped
    kernel reads each per-trip slice of a stacked input once over all its trips, so these are
    totals per call. ``trips``: loop trip count (1 if not a loop). ``phase``: forward, backward,
    update (optimizer) or op (unfused). ``calls``: times the program calls this kernel.
    """

    name: str
    phase: str
    ops: list[Op]
    reads: list[int] = field(default_factory=list)
    writes: list[int] = field(default_factory=list)
    trips: int = 1
    calls: int = 1
    # Unfused kernels inside a loop: their operands are per-iteration values, not graph tensors.
    local_bytes: float = 0.0
    working_bytes: float = 0.0  # sum of the values produced inside per trip (SRAM working set)
    largest_bytes: float = 0.0  # largest value produced inside per trip (sets the tile count)
    carry_bytes: float = 0.0  # loop carry (the activation passed from layer to layer)
    # Bytes really read of a read tensor when less than its size (a kernel that slices a
    # stacked weight reads one slice); absent keys read the whole tensor.
    read_bytes: dict[int, float] = field(default_factory=dict)
    write_bytes: dict[int, float] = field(default_factory=dict)  # likewise (in-place updates)
    # Kernel calls one trip was made of before the looping pass merged them (launches per trip
    # when the loop is not pipelined).
    calls_per_trip: int = 1
    # All-reduces of ``carry_bytes`` per trip when the program is split tensor-parallel (a layer
    # of a stack: 2, Megatron style; see ``parallel``).
    collectives: int = 0

    @property
    def flops(self) -> float:
        """FLOPs of one call (all trips)."""
        return self.trips * sum(op.total_flops for op in self.ops)

    def read_charge(self, key: int, nbytes: float) -> float:
        """Bytes this kernel reads of tensor ``key`` (of ``nbytes`` bytes) per call."""
        return min(nbytes, self.read_bytes.get(key, nbytes))

    def write_charge(self, key: int, nbytes: float) -> float:
        """Bytes this kernel writes of tensor ``key`` (of ``nbytes`` bytes) per call."""
        return min(nbytes, self.write_bytes.get(key, nbytes))


@dataclass
class Step:
    """Top-level equations that ``execute`` runs together, and the kernels they account to."""

    eqns: list[Any]  # FlatEqn
    kernels: list[int]


@dataclass
class FlatEqn:
    """A top-level jaxpr equation with its operands renamed to program-wide integer keys.

    ``ins`` holds keys or jax Literals; ``outs`` keys or None for dropped outputs.
    """

    eqn: Any
    ins: tuple
    outs: tuple
    phase: str = "forward"


@dataclass
class Graph:
    """A lowered program: kernels in program order, tensors, and what execution needs."""

    kernels: list[Kernel]
    tensors: dict[int, Tensor]
    steps: list[Step]
    inputs: list[int]  # keys of the flat arguments
    outputs: list[Any]  # keys (or Literals) of the flat results
    constants: dict[int, Any]  # key -> value of jaxpr constants
    out_tree: Any
    in_tree: Any
    concrete: dict[int, np.ndarray]  # flat argument position -> value, for concrete int inputs
    mode: str = "fused"
    name: str = ""
    # Pytree path of each flat argument, e.g. "[0].params['layers']['wq']" (for reports).
    input_paths: list[str] = field(default_factory=list)
    # Role of each flat argument (one of ``ROLES``, or None: inferred from its dtype), given by
    # the caller of ``lower``; the mapping places tensors by role (``mapping.placement``).
    input_roles: list[str | None] = field(default_factory=list)

    @property
    def flops(self) -> float:
        """FLOPs of one run of the program."""
        return sum(k.flops * k.calls for k in self.kernels)

    def tensor_bytes(self, keys) -> dict[str, float]:
        """Bytes per tier of the given tensor keys."""
        out: dict[str, float] = {}
        for k in keys:
            t = self.tensors[k]
            out[t.tier] = out.get(t.tier, 0.0) + t.nbytes
        return out

    def summary(self) -> str:
        """One line per kernel: name, phase, trips, ops, GFLOP."""
        lines = [f"graph {self.name} ({self.mode}): {len(self.kernels)} kernels, "
                 f"{self.flops / 1e9:.4g} GFLOP"]
        for k in self.kernels:
            lines.append(f"  {k.name:<24} {k.phase:<8} trips {k.trips:<5} calls {k.calls:<6} "
                         f"ops {len(k.ops):<5} {k.flops * k.calls / 1e9:.4g} GFLOP")
        return "\n".join(lines)
