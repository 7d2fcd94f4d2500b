"""Pricing a lowered gather on a PMU from its index lists.

A gather's ``GatherInfo`` names the argument its indices come from; when the graph holds that
argument's values (``Graph.concrete``), the real index lists are priced
(``banks.block_gather_cost``: bank conflicts and address-generation cycles). Indices that are
data (token ids of an embedding lookup, computed indices) are not known when a program is
lowered: they are priced as distinct rows spread evenly over the table and flagged as such
(``real`` False). That price is exact whenever a row is a whole number of bank periods (an
embedding row of d_model elements: every row read is then the same aligned vectors whatever
its index); otherwise it is a stated assumption. Block-sparse matmuls never use this path: their
indices must be concrete (``block_sparse``). Long lists are sampled and the cost scaled.
"""

from __future__ import annotations

import numpy as np

from rdu_xla_backend.mapping import banks as mem
from rdu_xla_backend.workload.graph import GatherInfo, Graph, values_fingerprint

MAX_GATHER_LISTS = 64  # index lists simulated per gather (evenly sampled); the rest scales
MAX_GATHER_FEATURES = 1 << 16  # elements per simulated list; longer lists are sampled and scaled


def index_lists(info: GatherInfo, graph: Graph) -> tuple[np.ndarray, bool]:
    """(n_lists, indices) index lists for a gather and whether they are the real ones.

    Real: the concrete argument's values. Otherwise one list of distinct rows spread evenly
    over the ``info.rows`` rows (repeating when more indices than rows): no random stand-in.
    """
    arr = graph.concrete.get(info.origin) if info.origin is not None else None
    if arr is not None and arr.size % info.indices == 0:
        lists = np.clip(arr.reshape(-1, info.indices), 0, info.rows - 1)
        real = True
    else:
        spread = (np.arange(info.indices) * max(info.rows // max(info.indices, 1), 1)) % info.rows
        lists = np.sort(spread)[None, :]
        real = False
    if lists.shape[0] > MAX_GATHER_LISTS:
        lists = lists[np.linspace(0, lists.shape[0] - 1, MAX_GATHER_LISTS).astype(int)]
    return lists.astype(np.int64), real


def index_fingerprint(info: GatherInfo, graph: Graph) -> tuple:
    """A cache key part that changes when the gather's index values change."""
    arr = graph.concrete.get(info.origin) if info.origin is not None else None
    if arr is None:
        return ()
    return values_fingerprint(arr)


def gather_cost(info: GatherInfo, graph: Graph, pmu: mem.PmuConfig,
                cache: dict | None = None) -> tuple[float, float, bool]:
    """(cycles, conflicts, from_real_indices) of ONE execution of a gather on one PMU."""
    key = (info, pmu, index_fingerprint(info, graph))
    if cache is not None and key in cache:
        return cache[key]
    lists, real = index_lists(info, graph)
    keep = max(1, min(info.indices, MAX_GATHER_FEATURES // max(info.run, 1)))
    scale = info.indices / keep
    cost = mem.block_gather_cost(lists[:, :keep], (info.run, 1), info.rows * info.run,
                                 info.tokens, pmu)
    out = (cost.cycles / lists.shape[0] * scale, cost.conflicts / lists.shape[0] * scale, real)
    if cache is not None:
        cache[key] = out
    return out


def assumed_gathers(graph: Graph, period: int) -> list[str]:
    """A line per gather of ``graph`` priced without its real indices (data-dependent ones),
    saying whether the price is exact anyway (rows a whole number of bank ``period``s)."""
    lines, seen = [], set()
    for kernel in graph.kernels:
        for op in kernel.ops:
            info = op.gather
            if info is None or op.sparse is not None or info in seen:
                continue
            seen.add(info)
            if index_lists(info, graph)[1]:
                continue
            exact = info.run % period == 0
            lines.append(f"gather {op.path or op.primitive} ({info.indices} indices of "
                         f"{info.rows} rows x {info.run} elements): indices not known when "
                         "lowered, priced as distinct rows spread evenly ("
                         + ("exact: every row is whole bank periods)" if exact
                            else "an assumption: the bank pattern depends on the values)"))
    return lines
