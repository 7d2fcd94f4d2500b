"""A block-sparse matmul on an RDU, from its mechanisms and its real block indices.

One call (``workload.graph.BlockSparseInfo``): y (T, out) = x (T, in) @ W, W stored as nb =
nc x k blocks of (bk, bn); the backward gives dx = dy W^T and dW_b = x_r^T dy_j for every stored
block b = (row r, column j). Lanes L and stages S are the PCU's (``ChipSpec``).

PCU (systolic mode: per cycle one L-lane vector of outputs takes S multiply-adds, one per
stage, over S consecutive reduction indices; [SN40L] describes the PCU body as a systolic array
or a SIMD pipeline). A block is a tile of its own, so its sizes are rounded up to the unit:

- forward, per token and stored block: ceil(bn / L) x ceil(bk / S) cycles (ideal bk bn / (L S));
  each of those S x L weight sub-tiles is held in the stages while the tokens stream through,
  and the next one (S lane vectors, one per cycle) loads behind them: a sub-tile takes
  max(T, S) cycles, so a call of fewer than S tokens (decode) waits on weight loads;
- dx, per token and stored block: ceil(bk / L) x ceil(bn / S) (same sub-tiles of W^T, same
  max(T, S)); dx is accumulated per input
  block-row r over the blocks the TRANSPOSED layout holds in that row. The program is compiled
  once for the shapes while the indices change in place (prune/regrow), so every row gets the
  same share of PCUs and the fullest row sets the time: x (nr max_r count_r / nb);
- dvalues, per stored block: bk x ceil(bn / L) x ceil(T / S) (reduction over tokens on stages).

PMU (``banks``: bank conflicts and the address generator's rate with the real addresses):

- forward: every column's stored blocks read x[t, r bk : (r + 1) bk] for all tokens (row
  access of row-major x, packed into L-lane vectors: small blocks share a vector and conflict
  as their block-rows fall in the same banks);
- dx: the dy segments dy[t, j bn : (j + 1) bn] of each input row's columns, listed by the
  transposed layout (row access of dy);
- dvalues: x_r^T streams tokens, i.e. COLUMN access of row-major x (``column_read_cost``: every
  lane its own address; all in one bank when the row length is a multiple of the bank
  period). The mapping takes the cheaper of reading each stored block's columns so and
  transposing x once (the same column access for all of x, then contiguous reads), and pads the
  row length by one element when that avoids the one-bank conflicts. dy sub-tiles (S tokens x
  L columns) are read by rows.

Units: cycles of work on ONE PCU / ONE PMU per call (the caller balances them over units).
Indices must be concrete: a block-sparse matmul without its indices is refused (ValueError).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rdu_xla_backend.hardware import ChipSpec
from rdu_xla_backend.mapping import banks as mem
from rdu_xla_backend.workload.graph import BlockSparseInfo, Graph, values_fingerprint

MAX_PRICED_LAYERS = 4  # layers of a stacked index array whose gathers are simulated (evenly spaced)
MAX_LISTS = 64  # index lists simulated per gather (evenly sampled); the total is scaled


@dataclass(frozen=True)
class SparseCycles:
    """Cycles of one block-sparse matmul call (means over the layers of a stacked layout).

    Attributes:
        pcu: PCU cycles of work on one PCU.
        ideal_pcu: FLOPs / (2 L S): what ``pcu`` would be at the systolic peak.
        pmu: PMU cycles of the gathers on one PMU.
        conflicts: PMU reads serialised by bank conflicts.
        imbalance: dx's fullest input row over the mean (1 for a balanced layout; forward: 1).
        column_access: PMU cycles of the dvalues' column access of x (in ``pmu``).
    """

    pcu: float
    ideal_pcu: float
    pmu: float
    conflicts: float
    imbalance: float
    column_access: float


def layer_indices(info: BlockSparseInfo, graph: Graph) -> np.ndarray:
    """(n_layers, nc, k) int block-row indices of the call, from ``graph.concrete``.

    Raises:
        ValueError: the indices are not concrete (a cost from a stand-in would be invented).
    """
    bk, bn = info.block
    nc, k = info.out_features // bn, info.blocks_per_col
    arr = graph.concrete.get(info.origin) if info.origin is not None else None
    if arr is None or arr.size % (nc * k):
        raise ValueError(
            f"block-sparse matmul ({info.in_features}x{info.out_features}, blocks {bk}x{bn}): "
            "its block indices are not concrete, so its gathers and balance cannot be priced; "
            "lower the program with the real row_indices (not ShapeDtypeStructs)")
    rows = np.asarray(arr, np.int64).reshape(-1, nc, k)
    nr = info.in_features // bk
    if rows.min() < 0 or rows.max() >= nr:
        raise ValueError(f"block indices out of range [0, {nr})")
    return rows


def _sample(a: np.ndarray, n: int) -> np.ndarray:
    return a if a.shape[0] <= n else a[np.linspace(0, a.shape[0] - 1, n).astype(int)]


def transposed_features(rows: np.ndarray, nr: int, bn: int) -> tuple[np.ndarray, np.ndarray]:
    """The transposed layout of one layer: per input row r, the dy features of its blocks.

    Args:
        rows: (nc, k) block-row of each stored block.
        nr: input block-rows.
        bn: block columns.
    Returns:
        ((nr, max_count * bn) int features j bn + [0, bn) of every column j storing row r, in
        column order, padded with -1; (nr,) blocks per row).
    """
    nc, k = rows.shape
    flat = rows.reshape(-1)
    counts = np.bincount(flat, minlength=nr)
    order = np.argsort(flat, kind="stable")  # block ids by row, columns ascending
    cols = order // k
    cap = max(int(counts.max()), 1)
    slot = np.arange(flat.size) - np.repeat(np.cumsum(counts) - counts, counts)
    lists = np.full((nr, cap), -1, np.int64)
    lists[flat[order], slot] = cols
    feats = np.where(lists[:, :, None] >= 0, lists[:, :, None] * bn + np.arange(bn), -1)
    return feats.reshape(nr, cap * bn), counts


def _scaled(cost: mem.GatherCost, scale: float) -> tuple[float, float]:
    return cost.cycles * scale, cost.conflicts * scale


def _forward_pmu(rows: np.ndarray, info: BlockSparseInfo, pmu: mem.PmuConfig):
    lists = _sample(rows, MAX_LISTS)
    cost = mem.block_gather_cost(lists, info.block, info.in_features, info.tokens, pmu)
    return _scaled(cost, rows.shape[0] / lists.shape[0])


def _dx_pmu(rows: np.ndarray, info: BlockSparseInfo, pmu: mem.PmuConfig):
    nr = info.in_features // info.block[0]
    feats, counts = transposed_features(rows, nr, info.block[1])
    lists = _sample(feats, MAX_LISTS)
    cost = mem.feature_lists_cost(lists, info.tokens, info.out_features, pmu)
    return _scaled(cost, nr / lists.shape[0]), counts


def _dvalues_pmu(nb: int, info: BlockSparseInfo, pmu: mem.PmuConfig) -> tuple[float, float, float]:
    """(cycles, conflicts, column-access cycles) of the dvalues' operand reads."""
    bk, bn = info.block
    T, n_in, L = info.tokens, info.in_features, pmu.lanes
    options = []
    for stride in (n_in, n_in + 1):  # as produced, or padded by one element
        one = mem.column_read_cost(np.arange(bk), T, stride, pmu)  # one block's columns
        per_block = (one.cycles * nb, one.conflicts * nb)
        whole = mem.column_read_cost(np.arange(n_in), T, stride, pmu)  # transpose x once
        once = (whole.cycles + nb * bk * math.ceil(T / L), whole.conflicts)
        options += [per_block, once]
    col_cycles, col_conf = min(options)
    dy_rows = nb * T * math.ceil(bn / L)  # S x L dy sub-tiles, read by rows (one run each)
    return col_cycles + dy_rows, col_conf, col_cycles


def sparse_cycles(info: BlockSparseInfo, graph: Graph, chip: ChipSpec,
                  cache: dict | None = None) -> SparseCycles:
    """Cycles of ONE execution of a block-sparse matmul call on ``chip`` (module docstring)."""
    rows_all = layer_indices(info, graph)
    key = ("block_sparse", info, mem.PmuConfig.from_chip(chip), chip.stages_per_pcu,
           values_fingerprint(rows_all))
    if cache is not None and key in cache:
        return cache[key]
    pmu = mem.PmuConfig.from_chip(chip)
    L, S = chip.simd_lanes_per_pcu, chip.stages_per_pcu
    bk, bn = info.block
    T, (n_layers, nc, k) = info.tokens, rows_all.shape
    nb, nr = nc * k, info.in_features // bk
    ceil = math.ceil
    priced = _sample(rows_all, MAX_PRICED_LAYERS)
    counts_max = np.mean([np.bincount(r.reshape(-1), minlength=nr).max() for r in rows_all])
    stream = max(T, S)  # cycles a weight sub-tile stays: its tokens, or the next one's load
    if not info.backward:
        pcu = stream * nb * ceil(bn / L) * ceil(bk / S)
        ideal = T * nb * bk * bn / (L * S)
        g = np.mean([_forward_pmu(r, info, pmu) for r in priced], axis=0)
        out = SparseCycles(float(pcu), ideal, float(g[0]), float(g[1]), 1.0, 0.0)
    else:
        dx = stream * nr * counts_max * ceil(bk / L) * ceil(bn / S)
        dw = nb * bk * ceil(bn / L) * ceil(T / S)
        ideal = 2 * T * nb * bk * bn / (L * S)
        g = np.mean([_dx_pmu(r, info, pmu)[0] for r in priced], axis=0)
        dv_cycles, dv_conf, col = _dvalues_pmu(nb, info, pmu)
        out = SparseCycles(float(dx + dw), ideal, float(g[0] + dv_cycles), float(g[1] + dv_conf),
                           float(nr * counts_max / nb), float(col))
    if cache is not None:
        cache[key] = out
    return out


def summary(graph: Graph, chip: ChipSpec, cache: dict | None = None) -> list[str]:
    """One line per distinct block-sparse matmul of ``graph``: what its mechanisms cost.

    Each line: shape and blocks, the PCU cycles at the systolic peak over the priced ones
    (rounding to lanes x stages, dx's imbalance), the imbalance, the PMU cycles over the PCU
    cycles (a gather stage above 1 needs more PMUs than the matmul has PCUs) and the reads
    serialised behind another read of their bank, per PMU cycle.
    """
    cache = graph.__dict__.setdefault("_gather_cache", {}) if cache is None else cache
    seen, lines = set(), []
    for kernel in graph.kernels:
        for op in kernel.ops:
            info = op.sparse
            if info is None or op.kind != "matmul" or info in seen:
                continue
            seen.add(info)
            c = sparse_cycles(info, graph, chip, cache)
            what = "dx + dvalues" if info.backward else "forward"
            lines.append(
                f"block-sparse {info.in_features}x{info.out_features} ({info.block[0]}x"
                f"{info.block[1]} blocks, {info.blocks_per_col} per column, {info.tokens} tokens) "
                f"{what}: PCU work at {c.ideal_pcu / c.pcu:.1%} of the systolic peak, "
                f"dx imbalance {c.imbalance:.3g}, PMU/PCU cycles {c.pmu / c.pcu:.3g}, "
                f"{c.conflicts / max(c.pmu, 1):.3g} bank-conflicted reads per PMU cycle")
    return lines
