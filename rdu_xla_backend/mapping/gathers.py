"""Pricing a lowered gather on a PMU: index lists from the real arrays or a seeded draw.

A gather's ``GatherInfo`` names the argument its indices come from; when the graph holds that
argument's values (``Graph.concrete``), the real index lists are priced
(``memory.block_gather_cost``: bank conflicts and address-generation cycles); otherwise a seeded
random draw of the same shape stands in (the expected-cost model). Long lists are sampled and
the cost scaled.
"""

from __future__ import annotations

import numpy as np

from rdu_xla_backend.mapping import banks as mem
from rdu_xla_backend.workload.graph import GatherInfo, Graph

MAX_GATHER_LISTS = 64  # index lists simulated per gather (evenly sampled); the rest scales
MAX_GATHER_FEATURES = 1 << 16  # elements per simulated list; longer lists are sampled and scaled
EXPECTED_SEED = 0


def index_lists(info: GatherInfo, graph: Graph) -> tuple[np.ndarray, bool]:
    """(n_lists, indices) index lists for a gather: real ones if known, else a seeded draw."""
    arr = graph.concrete.get(info.origin) if info.origin is not None else None
    if arr is not None and arr.size % info.indices == 0:
        lists = np.clip(arr.reshape(-1, info.indices), 0, info.rows - 1)
        real = True
    else:
        rng = np.random.default_rng(EXPECTED_SEED)
        n = min(MAX_GATHER_LISTS, 16)
        if info.indices <= info.rows:
            lists = np.stack([np.sort(rng.choice(info.rows, info.indices, replace=False))
                              for _ in range(n)])
        else:
            lists = np.sort(rng.integers(0, info.rows, (n, info.indices)), axis=1)
        real = False
    if lists.shape[0] > MAX_GATHER_LISTS:
        lists = lists[np.linspace(0, lists.shape[0] - 1, MAX_GATHER_LISTS).astype(int)]
    return lists.astype(np.int64), real


def gather_cost(info: GatherInfo, graph: Graph, pmu: mem.PmuConfig,
                cache: dict | None = None) -> tuple[float, float, bool]:
    """(cycles, conflicts, from_real_indices) of ONE execution of a gather on one PMU."""
    key = (info, pmu)
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
