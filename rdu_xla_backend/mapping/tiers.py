"""Memory tiers of a chip: bandwidths, capacities and the time of a transfer between two.

Tiers: 'sram' (PMU scratchpads), 'hbm', 'ddr', 'host' (the host link) and 'peer' (the link to
another socket; NVLink on a GPU). Every value comes from ``hardware`` (public numbers with their
sources). Units: bytes, bytes/s, seconds.
"""

from __future__ import annotations

from rdu_xla_backend.hardware import ChipSpec, GpuSpec

TIERS = ("sram", "hbm", "ddr", "host", "peer")


def tier_bytes_per_s(chip: ChipSpec | GpuSpec, tier: str) -> float:
    """Bandwidth of a tier (bytes/s). GPUs have 'hbm', 'host' and 'peer' (NVLink) only.

    Raises ValueError for an unknown tier or one the chip lacks (e.g. HBM on SN10).
    """
    if isinstance(chip, GpuSpec):
        bw = {"hbm": chip.hbm_bytes_per_s, "host": chip.host_link_bytes_per_s,
              "peer": chip.nvlink_bytes_per_s}
    else:
        bw = {"sram": chip.sram_bytes_per_s, "hbm": chip.hbm_bytes_per_s,
              "ddr": chip.ddr_bytes_per_s, "host": chip.host_link_bytes_per_s,
              "peer": chip.inter_socket_bytes_per_s}
    if not bw.get(tier):
        raise ValueError(f"{chip.name} has no tier {tier!r}; it has: "
                         f"{', '.join(t for t, v in bw.items() if v)}")
    return bw[tier]


def tier_capacity_bytes(chip: ChipSpec | GpuSpec, tier: str) -> float:
    """Capacity of a storage tier in bytes ('sram', 'hbm', 'ddr'; GPUs: 'hbm')."""
    cap = {"hbm": chip.hbm_bytes}
    if isinstance(chip, ChipSpec):
        cap.update(sram=chip.sram_bytes, ddr=chip.ddr_bytes)
    if not cap.get(tier):
        raise ValueError(f"{chip.name} has no storage tier {tier!r}")
    return cap[tier]


def transfer_seconds(nbytes, tier_from: str, tier_to: str, chip: ChipSpec | GpuSpec):
    """Seconds to move ``nbytes`` (scalar or array, bytes) from one tier to another.

    Bandwidth is the slower of the two tiers; a copy within one tier reads and writes it, so it
    moves 2 x nbytes at that tier's bandwidth. Latency is not modelled.
    """
    if tier_from == tier_to:
        return 2 * nbytes / tier_bytes_per_s(chip, tier_from)
    return nbytes / min(tier_bytes_per_s(chip, tier_from), tier_bytes_per_s(chip, tier_to))
