"""Plausible ranges of the non-public hardware parameters, each with the public source of its
bounds: the ``ModelParameters`` (RDU) and ``GpuParameters`` (GPU) fields of ``hardware``.

A calibration is bounded to these ranges; a fitted value at a bound means a missing mechanism
(``calibrate.fit`` reports it). The source tags are those of ``hardware``'s docstring. Units: the
fields' own (bytes, seconds, bytes/s, Hz, fractions).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """Physically plausible values of one non-public parameter, with the public source of the
    bounds. A calibration is bounded to [low, high]; a fitted value at a bound means a missing
    mechanism (reported, never accepted)."""

    low: float
    high: float
    assumed: float  # the value before any fit: a calibration starts here, its prior pulls here
    source: str


# "rdu.<field>" for ModelParameters, "gpu.<field>" for GpuParameters.
RANGES: dict[str, Range] = {
    "rdu.simd_lanes_per_pcu": Range(16, 64, 32, "[PLAST]: 16 lanes; SN40L peak / PCUs / clock "
                                    "< 2 GHz allows 16-64 lanes x 4-8 stages"),
    "rdu.stages_per_pcu": Range(4, 8, 6, "[PLAST]: 6 SIMD stages per PCU; same peak arithmetic"),
    "rdu.banks_per_pmu": Range(16, 64, 32, "[PLAST]: banked scratchpad, one bank per lane "
                               "(16); [SN40L]: programmable bank bits"),
    "rdu.bank_word_bytes": Range(2, 8, 4, "one BF16 (2 B) to one 64-bit word per bank per cycle"),
    "rdu.clock_hz": Range(1.0e9, 2.0e9, 1.6e9, "[SN40L]: clock '< 2 GHz'; [PLAST] ran at 1 GHz"),
    "rdu.inter_socket_bytes_per_s": Range(
        32e9, 400e9, 100e9, "one PCIe 4 x16 link (32 GB/s) up to NVLink-4-class 450 GB/s per "
        "direction ([H100] datasheet 900 GB/s both ways); SN40L peer links not public"),
    "rdu.launch_seconds_software": Range(
        4e-6, 40e-6, 10e-6, "host-launched kernel plus synchronisation: 3-7 us on GPUs (community "
        "microbenchmarks); host round trip over PCIe ~1-2 us; [SN40L]: software orchestration "
        "up to 8x slower decode than hardware orchestration"),
    "rdu.launch_seconds_hardware": Range(
        0.5e-6, 5e-6, 1e-6, "device-side sequencing of the next call: kernel-to-kernel gaps inside "
        "CUDA Graphs ~1-3 us (NVIDIA, 'Getting Started with CUDA Graphs'); at least one on-chip "
        "completion round trip"),
    "rdu.host_link_bytes_per_s": Range(16e9, 64e9, 32e9, "PCIe 4 x16 (32 GB/s) or 5 x16 (64 GB/s), "
                                       "PCI-SIG; x8 at the low end"),
    "rdu.hbm_efficiency": Range(
        0.85, 0.97, 0.9, "[SN40L]: decode uses 'over 85%' of HBM bandwidth; [KL]: 'over 90% of "
        "peak' on 8 and 16 sockets; GPU HBM streaming microbenchmarks (BabelStream, NVIDIA "
        "bandwidthTest) reach ~90-93%; refresh and bank turnaround keep it below ~97%"),
    "rdu.ddr_efficiency": Range(
        0.70, 0.92, 0.8, "STREAM on DDR4/DDR5 servers sustains ~70-90% of the channels' peak"),
    "rdu.ddr_peak_factor": Range(
        1.0, 1.54, 1.2, "[SN40L]: DDR 'over 200 GB/s' (so >= 1); <= 8 channels of DDR5-4800 "
        "(JEDEC JESD79-5: 38.4 GB/s each, 307 GB/s) assumed as the upper end"),
    "rdu.offchip_latency_seconds": Range(
        0.3e-6, 2e-6, 1e-6, "HBM load-to-use latency ~0.4-0.7 us on A100/H100 (pointer-chase "
        "microbenchmarks, Jia et al. arXiv 1804.06826 and successors) plus the AGCU path"),
    "rdu.stage_latency_cycles": Range(8, 128, 32, "PCU pipeline depth (6 stages [PLAST]) plus a "
                                      "few on-chip network hops per stage"),
    "rdu.inter_socket_latency_seconds": Range(
        0.5e-6, 3e-6, 1e-6, "one hop over a PCIe/NVLink-class peer link: ~0.5-1 us one way "
        "(PCIe round trips ~1 us); a synchronised step of a collective a few us (nccl-tests: "
        "small-message all-reduce ~10-20 us on 8 NVLink GPUs)"),
    "gpu.launch_sync_seconds": Range(
        2e-6, 10e-6, 5e-6, "kernel launch ~3 us, 5-7 us with synchronisation (community "
        "microbenchmarks); CUDA Graphs reach ~2 us"),
    "gpu.achievable_compute_fraction": Range(
        0.6, 0.9, 0.75, "the ceiling of the GEMM model: cuBLAS BF16 GEMMs reach ~75-85% of the "
        "tensor peak on large shapes at the boost clock [CUBLAS]; lower for 2021 library versions "
        "and the sustained clock of a full node under its power cap; [MEG] Table 1: 44-52% of "
        "peak end to end"),
    "gpu.achievable_bandwidth_fraction": Range(
        0.80, 0.95, 0.88, "HBM streaming microbenchmarks (BabelStream, bandwidthTest) reach "
        "~85-93% "
        "of the datasheet bandwidth on A100/H100"),
    "gpu.host_copy_links": Range(
        1.0, 4.0, 2.0, "1: one host stream copies the shards in turn; 4: every PCIe switch uplink "
        "at once (DGX A100 system architecture: 4 PCIe switches, 2 GPUs each)"),
    "gpu.pcie_copy_efficiency": Range(
        0.7, 0.9, 0.8, "pinned host -> device copies: ~25 of 32 GB/s on PCIe 4, ~50-55 of 64 "
        "GB/s on "
        "PCIe 5 (NVIDIA bandwidthTest / nvbandwidth)"),
    "gpu.collective_bandwidth_fraction": Range(
        0.65, 0.95, 0.8, "[NCCL] nccl-tests on DGX A100: all-reduce bus bandwidth ~230 of 300 GB/s "
        "NVLink per direction; ~22-24 of 25 GB/s per HDR NIC"),
    "gpu.flash_attention_fraction": Range(
        0.40, 0.73, 0.55, "[FA2] FlashAttention-2 on A100: 50-73% of the tensor peak forward, "
        "lower backward"),
    "gpu.gemm_tile_overhead_steps": Range(
        1.0, 16.0, 4.0, "[CUBLAS] CUTLASS multistage pipelines keep 3-5 K-stages in flight; the "
        "epilogue writes one tile"),
    "gpu.reserved_bytes": Range(
        1e9, 8e9, 4e9, "CUDA context ~0.5-1 GB, NCCL buffers and caching-allocator fragmentation "
        "a few GB (PyTorch memory reports)"),
}


def parameter_range(target: str, name: str) -> Range:
    """The plausible range of ``ModelParameters`` ('rdu') or ``GpuParameters`` ('gpu') field
    ``name``. Raises KeyError naming the field when it has none."""
    key = f"{target}.{name}"
    if key not in RANGES:
        raise KeyError(f"no plausible range stated for {key}: add it to ranges.RANGES")
    return RANGES[key]
