"""PMU banked SRAM: the cycles of irregular gathers (bank conflicts, address generation), and the
bytes a GPU moves for the same gather (32-byte sectors).

Bank model (per PMU, per request group). A request group is the ``lanes`` element addresses one
vector read asks for in the same cycle group (negative address = idle lane). Its cost in cycles is

    max(bank_cycles, ag_cycles)
    bank_cycles = max over banks of the number of DISTINCT addresses in that bank
                  (same-address lanes are served by one broadcast read)
    ag_cycles   = ceil(runs / addresses_per_cycle)

where ``runs`` counts the addresses the PMU address generator must produce: a run of lanes whose
addresses are consecutive (a[i] == a[i-1] + 1) or equal (broadcast) is ONE generated address
(base + lane offset, as a dense vector read); every break starts a new one. That a dense vector
costs one generated address is an assumption of this model; the public record gives only the rate
(4 addresses per cycle on SN40L [HC24]).

Bank mapping: low-order interleave (bank = address mod banks), or programmable bank bits
(bank = the address bits at ``bank_bits``, least significant first), as SN40L's PMUs allow.
Addresses are in elements of one PMU's scratchpad; a bank serves one element per cycle (an
element takes one bank word: BF16 values are not modelled as packed two per 4-byte word).

Access patterns: ROW access of a row-major X (``block_gather_cost``, ``element_gather_cost``,
``feature_lists_cost``: each token's features as lane vectors, so contiguous block rows are one
generated address and distinct banks, small blocks share vectors and conflict by their
indices) and COLUMN access (``column_read_cost``: a vector of consecutive tokens of one feature,
every lane its own address, all lanes in one bank when the row length is a multiple of the
bank period).

Everything per group is vectorised in JAX over groups (fixed chunks of groups: one compilation);
gathers are built from the real index arrays.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rdu_xla_backend.hardware import ChipSpec, GpuSpec


@dataclass(frozen=True)
class PmuConfig:
    """The bank geometry a gather runs against.

    Attributes:
        banks: banks per PMU.
        lanes: addresses per request group (the PCU's SIMD width).
        addresses_per_cycle: addresses the PMU address generator produces per cycle.
        bank_bits: None for low-order interleave; else the address bit positions forming the bank
            number (len(bank_bits) == log2(banks)).
    """

    banks: int
    lanes: int
    addresses_per_cycle: int
    bank_bits: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if min(self.banks, self.lanes, self.addresses_per_cycle) < 1:
            raise ValueError(f"PmuConfig fields must be >= 1: {self}")
        if self.bank_bits is not None:
            if 2 ** len(self.bank_bits) != self.banks:
                raise ValueError(f"bank_bits {self.bank_bits} give {2 ** len(self.bank_bits)} "
                                 f"banks, not {self.banks}")
            if len(set(self.bank_bits)) != len(self.bank_bits) or min(self.bank_bits) < 0:
                raise ValueError(f"bank_bits must be distinct bit positions: {self.bank_bits}")

    @classmethod
    def from_chip(cls, chip: ChipSpec, bank_bits: tuple[int, ...] | None = None) -> PmuConfig:
        """The PMU of ``chip``: its banks, its PCU lane count and its address rate."""
        return cls(chip.banks_per_pmu, chip.simd_lanes_per_pcu, chip.pmu_addresses_per_cycle,
                   bank_bits)

    @property
    def period(self) -> int:
        """Smallest shift P (elements) with bank(a + P) == bank(a) for every address a."""
        if self.bank_bits is None:
            return self.banks
        return 2 ** (max(self.bank_bits) + 1)


def bank_of(addresses: jax.Array, pmu: PmuConfig) -> jax.Array:
    """Bank of each element address (int32, same shape); -1 where the address is negative."""
    a = jnp.asarray(addresses, jnp.int32)
    if pmu.bank_bits is None:
        bank = a % pmu.banks
    else:
        bank = sum(((a >> b) & 1) << i for i, b in enumerate(pmu.bank_bits))
    return jnp.where(a >= 0, bank, -1).astype(jnp.int32)


class GroupCycles(NamedTuple):
    """Per-request-group costs, each of shape (n_groups,) int32 (cycles or counts)."""

    cycles: jax.Array  # max(bank_cycles, ag_cycles)
    bank_cycles: jax.Array  # max over banks of distinct addresses in the bank
    ag_cycles: jax.Array  # ceil(generated addresses / addresses_per_cycle)
    distinct: jax.Array  # distinct valid addresses in the group
    conflicts: jax.Array  # sum over banks of max(distinct in bank - 1, 0): serialised reads


@functools.partial(jax.jit, static_argnames="pmu")
def group_cycles(addresses: jax.Array, pmu: PmuConfig) -> GroupCycles:
    """Bank cycles of request groups.

    Args:
        addresses: (n_groups, lanes) int32 element addresses; negative = idle lane.
        pmu: bank geometry (static).
    Returns:
        GroupCycles of (n_groups,) int32 arrays.
    """
    a = jnp.asarray(addresses, jnp.int32)
    n, lanes = a.shape
    valid = a >= 0
    # Distinct addresses: sort each group, keep the first of each equal run.
    big = jnp.iinfo(jnp.int32).max
    s = jnp.sort(jnp.where(valid, a, big), axis=1)
    first = (s != big) & jnp.concatenate([jnp.ones((n, 1), bool), s[:, 1:] != s[:, :-1]], axis=1)
    bank = jnp.where(first, bank_of(jnp.where(s == big, 0, s), pmu), pmu.banks)
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], (n, lanes))
    counts = jnp.zeros((n, pmu.banks + 1), jnp.int32).at[rows, bank].add(1)[:, : pmu.banks]
    bank_cycles = counts.max(axis=1)
    conflicts = jnp.maximum(counts - 1, 0).sum(axis=1)
    # Generated addresses: a lane continues the previous lane's run if consecutive or equal.
    prev = jnp.concatenate([jnp.full((n, 1), -2, jnp.int32), a[:, :-1]], axis=1)
    cont = (prev >= 0) & ((a == prev + 1) | (a == prev))
    runs = (valid & ~cont).sum(axis=1)
    ag_cycles = -(-runs // pmu.addresses_per_cycle)
    return GroupCycles(jnp.maximum(bank_cycles, ag_cycles).astype(jnp.int32),
                       bank_cycles.astype(jnp.int32), ag_cycles.astype(jnp.int32),
                       first.sum(axis=1).astype(jnp.int32), conflicts.astype(jnp.int32))


@dataclass(frozen=True)
class GatherCost:
    """Totals of one gather (Python numbers).

    Attributes:
        cycles: PMU cycles for the whole gather (sum over request groups).
        bank_cycles, ag_cycles: the two limits, each summed over groups.
        conflicts: reads serialised behind another read of the same bank, summed.
        groups: request groups (vector reads) issued.
        elements: element reads requested (valid lanes).
    """

    cycles: int
    bank_cycles: int
    ag_cycles: int
    conflicts: int
    groups: int
    elements: int

    @property
    def cycles_per_element(self) -> float:
        return self.cycles / max(self.elements, 1)

    def __add__(self, other: GatherCost) -> GatherCost:
        return GatherCost(*(getattr(self, f) + getattr(other, f) for f in _COST_FIELDS))

    def __mul__(self, k: int) -> GatherCost:
        return GatherCost(*(getattr(self, f) * k for f in _COST_FIELDS))


_COST_FIELDS = ("cycles", "bank_cycles", "ag_cycles", "conflicts", "groups", "elements")


def gather_cost(addresses: jax.Array, pmu: PmuConfig) -> GatherCost:
    """Total cost of request groups ``addresses`` (n_groups, lanes) int32; see ``group_cycles``."""
    g = group_cycles(addresses, pmu)
    elements = int((np.asarray(addresses) >= 0).sum())
    return GatherCost(int(g.cycles.sum()), int(g.bank_cycles.sum()), int(g.ag_cycles.sum()),
                      int(g.conflicts.sum()), int(g.cycles.shape[0]), elements)


def _vectors(features: np.ndarray, lanes: int) -> np.ndarray:
    """(n_lists, length) feature lists -> (n_lists, n_vec, lanes), padded with -1."""
    n, length = features.shape
    n_vec = -(-length // lanes)
    out = np.full((n, n_vec * lanes), -1, np.int64)
    out[:, :length] = features
    return out.reshape(n, n_vec, lanes)


def _token_addresses(vectors: np.ndarray, tokens: int, row_stride: int) -> np.ndarray:
    """Feature vectors (n, n_vec, lanes) for each token -> (tokens, n*n_vec, lanes) addresses."""
    t = np.arange(tokens)[:, None, None, None] * row_stride
    addr = np.where(vectors[None] >= 0, vectors[None] + t, -1)
    if addr.max(initial=0) > np.iinfo(np.int32).max:
        raise ValueError("addresses exceed int32")
    return addr.reshape(tokens, -1, vectors.shape[-1]).astype(np.int32)


def feature_lists_cost(features: np.ndarray, tokens: int, row_stride: int,
                       pmu: PmuConfig) -> GatherCost:
    """Cost of reading X[t, features[i]] for every token t and feature list i (row-major X):
    ROW access, each list read as vectors of ``pmu.lanes`` lanes; a feature of -1 is an idle
    lane (ragged lists padded at their end).

    Token t + p has the same bank pattern as token t when p * row_stride is a multiple of the
    bank period, so only p = period / gcd(row_stride, period) tokens are simulated; the total is
    exact for any ``tokens``.
    """
    if tokens < 1 or (features.size and row_stride <= features.max()):
        raise ValueError(f"need tokens >= 1 and row_stride > every feature index "
                         f"(got tokens={tokens}, row_stride={row_stride})")
    vectors = _vectors(features, pmu.lanes)
    p = min(tokens, pmu.period // math.gcd(row_stride, pmu.period))
    addr = _token_addresses(vectors, p, row_stride)  # (p, groups_per_token, lanes)
    flat = addr.reshape(-1, pmu.lanes)
    g = _chunked_group_cycles(flat, pmu)
    per_token = np.stack([np.asarray(x).reshape(p, -1).sum(axis=1)
                          for x in (g.cycles, g.bank_cycles, g.ag_cycles, g.conflicts)], axis=1)
    groups_per_token = addr.shape[1]
    elements_per_token = int((vectors >= 0).sum())
    reps, rest = divmod(tokens, p)
    totals = reps * per_token.sum(axis=0) + per_token[:rest].sum(axis=0)
    return GatherCost(*(int(x) for x in totals), groups_per_token * tokens,
                      elements_per_token * tokens)


def block_gather_cost(row_indices: np.ndarray, block: tuple[int, int], in_features: int,
                      tokens: int, pmu: PmuConfig, row_stride: int | None = None) -> GatherCost:
    """PMU cycles for reading the X tiles a block-sparse weight needs.

    Layout: X (tokens, in_features) is stored ROW-MAJOR (token-major) in one PMU: element (t, f)
    at address ``t * row_stride + f`` (row_stride defaults to in_features; pad it to change the
    bank pattern). For output column block j, the stored blocks W[r, j] with r in
    ``row_indices[j]`` (in stored order) need X[t, r*bk:(r+1)*bk] for every token t; these k*bk
    features are read as vectors of ``pmu.lanes`` lanes. One read of the tile serves all bn output
    columns of the block (the reuse block sparsity buys).

    Args:
        row_indices: (n_col_blocks, k) int, input block-row of each stored block.
        block: (bk, bn) block shape in elements.
        in_features: columns of X.
        tokens: rows of X.
        pmu: bank geometry.
        row_stride: elements between consecutive token rows (>= in_features).
    Returns:
        GatherCost totals in cycles and counts.
    """
    features = block_feature_lists(row_indices, block[0], in_features)
    return feature_lists_cost(features, tokens, row_stride or in_features, pmu)


def block_feature_lists(row_indices: np.ndarray, bk: int, in_features: int) -> np.ndarray:
    """Input features each output column block reads: (n_col_blocks, k) -> (n_col_blocks, k*bk)."""
    r = np.asarray(row_indices, np.int64)
    if r.ndim != 2 or r.size and (r.min() < 0 or (r.max() + 1) * bk > in_features):
        raise ValueError(f"row_indices must be (n_col_blocks, k) in [0, {in_features // bk})")
    return (r[:, :, None] * bk + np.arange(bk)).reshape(r.shape[0], -1)


def element_gather_cost(feature_indices: np.ndarray, in_features: int, tokens: int,
                        pmu: PmuConfig, row_stride: int | None = None) -> GatherCost:
    """PMU cycles for an element-wise (unstructured) sparse weight's gather of X.

    Output column o needs X[t, f] for each f in ``feature_indices[o]`` (stored order), read as
    vectors of ``pmu.lanes`` lanes; no read is shared between columns (no block reuse). Same
    row-major X layout as ``block_gather_cost``.

    Args:
        feature_indices: (n_out, nnz) int, input feature of each stored weight per output column.
        in_features, tokens, pmu, row_stride: as in ``block_gather_cost``.
    Returns:
        GatherCost totals in cycles and counts.
    """
    f = np.asarray(feature_indices, np.int64)
    if f.ndim != 2 or f.size and (f.min() < 0 or f.max() >= in_features):
        raise ValueError(f"feature_indices must be (n_out, nnz) in [0, {in_features})")
    return feature_lists_cost(f, tokens, row_stride or in_features, pmu)


def column_read_cost(columns: np.ndarray, tokens: int, row_stride: int,
                     pmu: PmuConfig) -> GatherCost:
    """PMU cycles for reading columns of a ROW-MAJOR X (column access).

    X (tokens, row_stride) row-major: element (t, c) at ``t * row_stride + c``. Column c is read
    as vectors of ``pmu.lanes`` consecutive tokens: lane i reads ``(t0 + i) * row_stride + c``.
    No two lanes are consecutive, so every lane is an address of its own for the address
    generator (``lanes / addresses_per_cycle`` cycles at best), and when ``row_stride`` is a
    multiple of the bank period every lane hits the same bank (``lanes`` cycles). Exact for any
    ``tokens``: vectors with the same bank pattern are simulated once and counted.

    Args:
        columns: (n,) int column indices read (each over all tokens; repeats are read again).
        tokens: rows of X.
        row_stride: elements between consecutive rows (>= every column + 1).
        pmu: bank geometry.
    Returns:
        GatherCost totals.
    """
    c = np.asarray(columns, np.int64).reshape(-1)
    if tokens < 1 or (c.size and (c.min() < 0 or c.max() >= row_stride)):
        raise ValueError(f"need tokens >= 1 and 0 <= columns < row_stride={row_stride}")
    residues, per_residue = np.unique(c % pmu.period, return_counts=True)
    lanes = pmu.lanes
    q = pmu.period // math.gcd(lanes * row_stride, pmu.period)  # distinct vector phases
    full, rem = divmod(tokens, lanes)
    shapes = [(v, lanes, full // q + (v < full % q)) for v in range(min(q, full))]
    if rem:
        shapes.append((full % q, rem, 1))
    groups, weights = [], []
    for v, n_lanes, times in shapes:
        t = v * lanes + np.arange(lanes)
        addr = np.where(np.arange(lanes) < n_lanes, t[None, :] * row_stride + residues[:, None],
                        -1)
        groups.append(addr)
        weights.append(per_residue * times)
    addr = np.concatenate(groups).astype(np.int32)
    w = np.concatenate(weights)
    g = _chunked_group_cycles(addr, pmu)
    sums = [int((x * w).sum())
            for x in (g.cycles, g.bank_cycles, g.ag_cycles, g.conflicts)]
    elements = int(((addr >= 0).sum(axis=1) * w).sum())
    return GatherCost(*sums, int(w.sum()), elements)


GROUP_CHUNK = 2048  # request groups per group_cycles call: one compiled shape serves every gather


def _chunked_group_cycles(addr: np.ndarray, pmu: PmuConfig) -> GroupCycles:
    """``group_cycles`` of (n, lanes) groups in fixed chunks (idle groups pad the last, cost 0),
    so one compilation serves gathers of every size. Returns numpy arrays of shape (n,)."""
    n = addr.shape[0]
    padded = np.full((max(-(-n // GROUP_CHUNK), 1) * GROUP_CHUNK, addr.shape[1]), -1, np.int32)
    padded[:n] = addr
    parts = [group_cycles(jnp.asarray(padded[i: i + GROUP_CHUNK]), pmu)
             for i in range(0, padded.shape[0], GROUP_CHUNK)]
    return GroupCycles(*(np.concatenate([np.asarray(p[f]) for p in parts])[:n]
                         for f in range(len(GroupCycles._fields))))


def sector_bytes_moved(features: np.ndarray, in_features: int, tokens: int, element_bytes: int,
                       sector_bytes: int = 32) -> int:
    """Bytes a GPU moves from HBM for the same gather: whole sectors, each counted once per list.

    X (tokens, in_features) row-major in HBM; list i reads X[t, features[i]] for every token t and
    pays every distinct ``sector_bytes`` sector those elements touch (the GPU baseline's price of
    an irregular gather; block rows of >= sector_bytes waste nothing).

    Args:
        features: (n_lists, length) int feature indices (e.g. ``block_feature_lists`` or an
            element-wise (n_out, nnz) index array).
        in_features, tokens: shape of X.
        element_bytes: bytes per element (2 for BF16).
        sector_bytes: memory sector size (``GpuSpec.sector_bytes``).
    Returns:
        bytes moved (int).
    """
    f = np.asarray(features, np.int64)
    row = in_features * element_bytes
    p = min(tokens, sector_bytes // math.gcd(row, sector_bytes))  # sector pattern period
    byte = (np.arange(p)[:, None, None] * row + f[None] * element_bytes)  # (p, n_lists, length)
    first = byte // sector_bytes
    last = (byte + element_bytes - 1) // sector_bytes
    sectors = np.sort(np.concatenate([first, last], axis=-1), axis=-1)
    distinct = (np.diff(sectors, axis=-1) != 0).sum(axis=-1) + (sectors.shape[-1] > 0)
    per_token = distinct.sum(axis=1)  # (p,)
    reps, rest = divmod(tokens, p)
    return int((reps * per_token.sum() + per_token[:rest].sum()) * sector_bytes)
