"""Chips as data: RDU sockets (SN10, SN30, SN40L) and GPU baselines (A100, H100).

Adding a chip is adding an instance below, not code. Every public number carries its source in a
comment, by a short tag:

- [SN40L] Prabhakar et al., "SambaNova SN40L: Scaling the AI Memory Wall with Dataflow and
  Composition of Experts", MICRO 2024, arXiv 2405.07518.
- [KL]    Koeplinger et al., "Kernel Looping: Eliminating Synchronization Boundaries for Peak
  Inference Performance", arXiv 2410.23668.
- [SP]    Srinivasan et al., "Training Large Language Models Efficiently with Sparsity and
  Dataflow", arXiv 2304.05511.
- [MEG]   Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters Using
  Megatron-LM", SC21, arXiv 2104.04473.
- [HC24]  SN40L talk at Hot Chips 2024 (as reported by the tech press).
- [PLAST] Prabhakar et al., "Plasticine: A Reconfigurable Architecture for Parallel Patterns",
  ISCA 2017.
- [SN10]  SN10 RDU, ISSCC 2022 and press.  [SN30] press.
- [A100], [H100], [H200] NVIDIA SXM datasheets and architecture whitepapers; DGX A100 / DGX H100
  system datasheets (8 GPUs per node, one 200 / 400 Gb/s InfiniBand NIC per GPU).
- [ACT] Korthikanti et al., "Reducing Activation
  Recomputation in Large Transformer Models", arXiv 2205.05198.  [ZERO] Rajbhandari et al.,
  arXiv 1910.02054 (16 bytes per parameter for mixed-precision Adam).

Values the public record does not give (PCU lanes and stages, PMU banks, exact clock, inter-socket
bandwidth, launch costs, achievable fractions) live in ``ModelParameters`` / ``GpuParameters``:
named, with stated defaults, each with a plausible range and its public source in
``ranges.RANGES``, and listed by ``assumptions(chip)``. A calibration suite may replace them
within those ranges (``dataclasses.replace``); nothing else in the backend may hide a
constant of this kind.

Units everywhere: bytes, seconds, bytes/s, FLOP/s, Hz.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rdu_xla_backend.ranges import RANGES

KB, MB, GB, TB = 1e3, 1e6, 1e9, 1e12
MiB = 2**20


@dataclass(frozen=True)
class ModelParameters:
    """RDU values that are not public. Every field is named here with its default (assumed, or
    fitted by benchmarks/calibration.py: ``calibrate.suite`` fits a subset jointly to published
    measurements, starting from the assumed value in brackets) and has a physically plausible
    range with its public source in ``ranges.RANGES``
    (``"rdu.<field>"``): a fit is bounded to that range, and a value that ends at a bound is
    reported as a missing mechanism, never accepted as a fit.

    The structural defaults are consistent with the public peak: with 32 lanes x 6 stages per
    PCU doing one multiply-add per lane-stage per cycle, SN40L's 638 TFLOP/s over 1040 PCUs needs
    a 1.60 GHz clock, inside the public bound "< 2 GHz" [SN40L].
    """

    simd_lanes_per_pcu: int = 32  # not public: assumed (Plasticine had 16 lanes [PLAST])
    stages_per_pcu: int = 6  # not public: assumed (Plasticine had 6 stages [PLAST])
    banks_per_pmu: int = 32  # not public: assumed, one bank per lane
    bank_word_bytes: int = 4  # not public: assumed, bytes a bank serves per cycle
    # None: derived so that peak = 2 * PCUs * lanes * stages * clock (see ChipSpec.clock_hz).
    clock_hz: float | None = None  # not public: assumed/derived ("< 2 GHz" for SN40L [SN40L])
    # Peer link between sockets, per socket and direction (not public).
    inter_socket_bytes_per_s: float = 80.7 * GB  # not public: fitted [100 GB/s]
    # Gap between kernel calls: host-orchestrated (a host round trip and synchronisation per
    # call) or AGCU-orchestrated (the on-chip sequencer starts the next call) [SN40L].
    launch_seconds_software: float = 18.0e-6  # not public: fitted [10 us]
    launch_seconds_hardware: float = 1.04e-6  # not public: fitted [1 us]
    host_link_bytes_per_s: float = 32 * GB  # not public: assumed, PCIe 4 x16-class link
    # Fraction of the public HBM / DDR peak a streaming kernel (or a DDR -> HBM copy) reaches.
    hbm_efficiency: float = 0.896  # not public: fitted [0.9] ([SN40L]: > 85% used in decode)
    ddr_efficiency: float = 0.807  # not public: fitted [0.8] (STREAM-class DDR5 efficiency)
    # [SN40L] gives the DDR bandwidth as a lower bound ("over 200 GB/s"): the true peak is
    # this factor times the figure in ``ChipSpec.ddr_bytes_per_s`` (>= 1 by the paper's
    # wording; for SN10/SN30, whose figure is itself assumed, it scales the assumption).
    ddr_peak_factor: float = 1.236  # not public: fitted [1.2]
    # Latency of a kernel call's first off-chip access (HBM/DDR latency through the AGCU): a call
    # cannot prefetch before it starts, a pipelined (looped) kernel pays it once.
    offchip_latency_seconds: float = 1.07e-6  # not public: fitted [1 us]
    # Cycles a tile spends in one pipeline stage beyond its work (network hops, PCU pipeline
    # depth): adds to a kernel's fill and drain.
    stage_latency_cycles: float = 32.0  # not public: assumed
    # One hop of a collective between sockets (a recursive-doubling all-reduce takes log2(P)).
    inter_socket_latency_seconds: float = 1.90e-6  # not public: fitted [1 us]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and value <= 0:
                raise ValueError(f"ModelParameters.{f.name} must be > 0, got {value!r}")
            if f.name.endswith("efficiency") and value > 1:
                raise ValueError(f"ModelParameters.{f.name} must be <= 1, got {value!r}")
        if self.ddr_peak_factor < 1:
            raise ValueError("ModelParameters.ddr_peak_factor must be >= 1 ([SN40L]: DDR "
                             f"bandwidth 'over 200 GB/s'), got {self.ddr_peak_factor!r}")


@dataclass(frozen=True)
class ChipSpec:
    """One RDU socket: public facts plus the assumed ``params``.

    ``assumed`` names fields of this instance that are *not* public for this chip (with why),
    e.g. SN30's PCU count; ``assumptions()`` reports them with the ``params`` fields.
    """

    name: str
    peak_bf16_flops: float  # FLOP/s, dense BF16
    pcus: int
    pmus: int
    sram_bytes: float  # total PMU scratchpad bytes
    hbm_bytes: float  # 0: no HBM tier
    hbm_bytes_per_s: float
    ddr_bytes: float
    ddr_bytes_per_s: float
    pmu_addresses_per_cycle: int  # addresses a PMU address generator produces per cycle
    params: ModelParameters = field(default_factory=ModelParameters)
    assumed: tuple[tuple[str, str], ...] = ()  # (field name, reason) for non-public values

    # --- the not-public values, reached through the chip for convenience ---
    @property
    def simd_lanes_per_pcu(self) -> int:
        return self.params.simd_lanes_per_pcu

    @property
    def stages_per_pcu(self) -> int:
        return self.params.stages_per_pcu

    @property
    def banks_per_pmu(self) -> int:
        return self.params.banks_per_pmu

    @property
    def inter_socket_bytes_per_s(self) -> float:
        return self.params.inter_socket_bytes_per_s

    @property
    def launch_seconds_software(self) -> float:
        return self.params.launch_seconds_software

    @property
    def launch_seconds_hardware(self) -> float:
        return self.params.launch_seconds_hardware

    @property
    def host_link_bytes_per_s(self) -> float:
        return self.params.host_link_bytes_per_s

    # --- derived quantities ---
    @property
    def clock_hz(self) -> float:
        """Clock in Hz: ``params.clock_hz`` or, if None, peak / (2 * PCUs * lanes * stages)."""
        if self.params.clock_hz is not None:
            return self.params.clock_hz
        return self.peak_bf16_flops / (2 * self.pcus * self.macs_per_pcu_per_cycle)

    @property
    def macs_per_pcu_per_cycle(self) -> int:
        """Multiply-adds one PCU does per cycle in systolic mode: lanes x stages."""
        return self.simd_lanes_per_pcu * self.stages_per_pcu

    @property
    def flops_per_pcu(self) -> float:
        """Peak BF16 FLOP/s of one PCU (public peak / PCU count)."""
        return self.peak_bf16_flops / self.pcus

    @property
    def flops_per_pcu_per_cycle(self) -> float:
        return self.flops_per_pcu / self.clock_hz

    @property
    def sram_bytes_per_pmu(self) -> float:
        """Scratchpad bytes of one PMU (total SRAM / PMU count)."""
        return self.sram_bytes / self.pmus

    @property
    def pmu_bytes_per_s(self) -> float:
        """Peak read bandwidth of one PMU: banks x bank word bytes x clock (bytes/s)."""
        return self.banks_per_pmu * self.params.bank_word_bytes * self.clock_hz

    @property
    def sram_bytes_per_s(self) -> float:
        """Aggregate on-chip SRAM read bandwidth over all PMUs (bytes/s)."""
        return self.pmus * self.pmu_bytes_per_s


@dataclass(frozen=True)
class GpuParameters:
    """GPU-baseline values that are not datasheet numbers. Each field: its plausible range with
    a public source (``ranges.RANGES``); the calibration searches inside that range only.

    Sources: [CUBLAS] NVIDIA "Matrix Multiplication Background" user's guide (tile and wave
    quantisation; large BF16/FP16 GEMMs on A100 reach roughly 75-85% of the tensor peak in
    isolation at the boost clock; the lower end allows for 2021 library versions and the
    sustained clock of a full node under its 400 W power cap);
    [FA2] Dao, "FlashAttention-2", arXiv 2307.08691 (50-73% of the A100 peak forward, lower
    backward); [NCCL] nccl-tests on DGX A100 (all-reduce bus bandwidth about 230 GB/s of the
    300 GB/s NVLink per direction; about 22-24 GB/s of a 25 GB/s HDR NIC); [STREAM]
    BabelStream-class copy kernels on A100 reach 85-93% of the HBM peak.
    """

    # Fitted by benchmarks/calibration.py within ``ranges.RANGES`` ("gpu.<field>": range,
    # source, the value assumed before fitting, also in brackets).
    launch_sync_seconds: float = 3.70e-6  # not public: fitted [5 us]; community: 3-7 us
    # Fraction of the tensor-core peak the best-shaped large GEMM reaches (one full wave of
    # large tiles, long K): the ceiling of ``gpu_kernels.gemm_efficiency`` [CUBLAS].
    achievable_compute_fraction: float = 0.699  # not public: fitted [0.75]
    achievable_bandwidth_fraction: float = 0.882  # not public: fitted [0.88], streaming HBM
    # Host links a DGX uses at once to copy one model into its GPUs (DGX A100 system
    # architecture: 4 PCIe switches, 2 GPUs each; the DGX H100 topology is taken the same).
    host_copy_links: float = 2.22  # not public: fitted [2]
    # Fraction of a PCIe link's peak a pinned host -> GPU copy reaches (bandwidthTest-class).
    pcie_copy_efficiency: float = 0.790  # not public: fitted [0.8]
    # Fraction of the per-direction NVLink / NIC bandwidth a NCCL collective reaches (bus
    # bandwidth / link bandwidth) [NCCL].
    collective_bandwidth_fraction: float = 0.809  # not public: fitted [0.8]
    # Fraction of the tensor-core peak a fused (FlashAttention-2-style) attention kernel
    # reaches, forward and backward together [FA2].
    flash_attention_fraction: float = 0.55  # not public: assumed
    # K-loop iterations' worth of time a GEMM tile spends outside its main loop (prologue:
    # first loads; epilogue: writing the tile): a tile over K takes (K / k_tile + this) steps.
    gemm_tile_overhead_steps: float = 4.0  # not public: assumed
    # Memory a GPU cannot give to the model: CUDA context, NCCL buffers, allocator
    # fragmentation (bytes).
    reserved_bytes: float = 4e9  # not public: assumed

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value <= 0 or (f.name.endswith("fraction") and value > 1):
                raise ValueError(f"GpuParameters.{f.name} out of range: {value!r}")
            if f.name == "host_copy_links" and value < 1:
                raise ValueError(f"GpuParameters.{f.name} must be >= 1, got {value!r}")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU of the baseline, and the node it sits in (a DGX)."""

    name: str
    peak_bf16_flops: float  # FLOP/s, dense tensor core BF16
    hbm_bytes: float
    hbm_bytes_per_s: float
    l2_bytes: float
    nvlink_bytes_per_s: float  # both directions together (the datasheet figure)
    host_link_bytes_per_s: float
    sector_bytes: int = 32  # CUDA C++ Best Practices Guide: global memory moves in 32-byte sectors
    peak_fp32_flops: float = 0.0  # FLOP/s of non-tensor-core FP32 (element-wise ops); 0: unknown
    sms: int = 108  # streaming multiprocessors (A100 whitepaper: 108 SMs on the SXM4 part)
    l2_bytes_per_s: float = 7.2 * TB  # L2 read bandwidth (A100 whitepaper: 5120 B/clk x 1.41 GHz)
    gpus_per_node: int = 8  # DGX A100 / DGX H100: 8 GPUs on NVLink/NVSwitch
    nic_bytes_per_s: float = 25 * GB  # per GPU, each direction (DGX A100: 8 x 200 Gb/s HDR IB)
    params: GpuParameters = field(default_factory=GpuParameters)
    assumed: tuple[tuple[str, str], ...] = ()

    @property
    def launch_sync_seconds(self) -> float:
        return self.params.launch_sync_seconds

    @property
    def achievable_flops(self) -> float:
        """FLOP/s the best-shaped large GEMM reaches: peak x achievable fraction."""
        return self.peak_bf16_flops * self.params.achievable_compute_fraction

    @property
    def achievable_vector_flops(self) -> float:
        """FLOP/s of element-wise (non-tensor-core) work: FP32 peak x achievable fraction."""
        peak = self.peak_fp32_flops or self.peak_bf16_flops / 16
        return peak * self.params.achievable_compute_fraction

    @property
    def achievable_hbm_bytes_per_s(self) -> float:
        """HBM bytes/s a streaming kernel reaches: peak x achievable fraction (assumed)."""
        return self.hbm_bytes_per_s * self.params.achievable_bandwidth_fraction

    @property
    def nvlink_collective_bytes_per_s(self) -> float:
        """Bus bandwidth of a collective inside a node: NVLink per direction x fraction."""
        return self.nvlink_bytes_per_s / 2 * self.params.collective_bandwidth_fraction

    @property
    def nic_collective_bytes_per_s(self) -> float:
        """Bus bandwidth per GPU of a collective across nodes: its NIC x fraction."""
        return self.nic_bytes_per_s * self.params.collective_bandwidth_fraction


# ----------------------------------------------------------------------------- RDU instances

SN40L = ChipSpec(
    name="SN40L",
    peak_bf16_flops=638 * TB,  # [SN40L] Table II: 638 TFLOP/s BF16
    pcus=1040,  # [SN40L] Table II
    pmus=1040,  # [SN40L] Table II
    sram_bytes=520 * MiB,  # [SN40L] Table II: 520 MiB (0.5 MiB per PMU, derived)
    hbm_bytes=64 * GB,  # [SN40L] Table II: 64 GB
    hbm_bytes_per_s=1.8 * TB,  # [SN40L] Table II: 1.8 TB/s (text: "about 2 TB/s")
    ddr_bytes=1.5 * TB,  # [SN40L] Table II: 1.5 TB
    ddr_bytes_per_s=200 * GB,  # [SN40L]: "over 200 GB/s" (lower bound taken)
    pmu_addresses_per_cycle=4,  # [HC24]: PMU address generation, 4 addresses per cycle
)

SN10 = ChipSpec(
    name="SN10",
    peak_bf16_flops=320 * TB,  # [SN10] ISSCC 2022: "over 320 TFLOP/s" BF16 (lower bound taken)
    pcus=640,  # [SN10] ISSCC 2022
    pmus=640,  # [SN10] ISSCC 2022
    sram_bytes=320 * MB,  # [SN10] ISSCC 2022: 320 MB on-chip SRAM
    hbm_bytes=0.0,  # [SN10]: no HBM tier; DDR4 only
    hbm_bytes_per_s=0.0,
    ddr_bytes=1.5 * TB,  # [SN10] press: 1.5 TB DDR4 per socket
    ddr_bytes_per_s=150 * GB,  # not public: assumed
    pmu_addresses_per_cycle=4,  # not public for SN10: assumed equal to SN40L [HC24]
    assumed=(
        ("ddr_bytes_per_s", "SN10 DDR4 bandwidth not in our public sources"),
        ("pmu_addresses_per_cycle", "published for SN40L only [HC24]"),
    ),
)

SN30 = ChipSpec(
    name="SN30",
    peak_bf16_flops=688 * TB,  # [SN30] press: 688 TFLOP/s BF16
    pcus=1280,  # not public: assumed 2 x SN10's 640 (two SN10-class dies, 8 tiles [SN30])
    pmus=1280,  # not public: assumed 2 x SN10's 640
    sram_bytes=640 * MB,  # [SN30] press: 640 MB on-chip SRAM
    hbm_bytes=0.0,  # [SN30]: no HBM tier
    hbm_bytes_per_s=0.0,
    ddr_bytes=1 * TB,  # [SN30] press: "about 1 TB" DDR
    ddr_bytes_per_s=300 * GB,  # not public: assumed (about 2 x SN10's assumed value)
    pmu_addresses_per_cycle=4,  # not public for SN30: assumed equal to SN40L [HC24]
    assumed=(
        ("pcus", "SN30 PCU count not public; 2 x SN10 (two SN10-class dies)"),
        ("pmus", "SN30 PMU count not public; 2 x SN10 (two SN10-class dies)"),
        ("ddr_bytes_per_s", "SN30 DDR bandwidth not in our public sources"),
        ("pmu_addresses_per_cycle", "published for SN40L only [HC24]"),
    ),
)

# ----------------------------------------------------------------------------- GPU instances

A100_40GB = GpuSpec(
    name="A100_40GB",
    peak_bf16_flops=312 * TB,  # [A100] datasheet: 312 TFLOP/s BF16 dense tensor
    hbm_bytes=40 * GB,  # [A100] datasheet SXM4 40 GB
    hbm_bytes_per_s=1.555 * TB,  # [A100] datasheet: 1,555 GB/s
    l2_bytes=40 * MB,  # [A100] datasheet/whitepaper: 40 MB L2
    nvlink_bytes_per_s=600 * GB,  # [A100] datasheet: NVLink 600 GB/s
    host_link_bytes_per_s=32 * GB,  # [A100] datasheet: PCIe 4.0, 32 GB/s (as used in [SN40L])
    peak_fp32_flops=19.5 * TB,  # [A100] datasheet: FP32 19.5 TFLOP/s
)

A100_80GB = dataclasses.replace(
    A100_40GB,
    name="A100_80GB",
    hbm_bytes=80 * GB,  # [A100] datasheet SXM4 80 GB
    hbm_bytes_per_s=2.039 * TB,  # [A100] datasheet: 2,039 GB/s
)

H100 = GpuSpec(
    name="H100",
    peak_bf16_flops=989 * TB,  # [H100] datasheet SXM5: 989 TFLOP/s BF16 dense tensor
    hbm_bytes=80 * GB,  # [H100] datasheet SXM5: 80 GB
    hbm_bytes_per_s=3.35 * TB,  # [H100] datasheet SXM5: 3.35 TB/s
    l2_bytes=50 * MB,  # [H100] whitepaper: 50 MB L2
    nvlink_bytes_per_s=900 * GB,  # [H100] datasheet: NVLink 900 GB/s
    host_link_bytes_per_s=64 * GB,  # [H100] datasheet: PCIe 5.0, 64 GB/s (as used in [SN40L])
    peak_fp32_flops=67 * TB,  # [H100] datasheet SXM5: FP32 67 TFLOP/s
    sms=132,  # [H100] whitepaper: 132 SMs on the SXM5 part
    l2_bytes_per_s=7.2 * TB * 1.6,  # not public as a figure: assumed 1.6 x A100's
    nic_bytes_per_s=50 * GB,  # DGX H100: 8 x 400 Gb/s ConnectX-7, one per GPU
    assumed=(("l2_bytes_per_s", "H100 L2 bandwidth not in the datasheet; 1.6 x A100 assumed"),),
)

H200 = dataclasses.replace(
    H100,
    name="H200",
    hbm_bytes=141 * GB,  # [H200] datasheet SXM: 141 GB HBM3e
    hbm_bytes_per_s=4.8 * TB,  # [H200] datasheet SXM: 4.8 TB/s
)  # the H100 SXM5's compute, L2, SMs, NVLink and PCIe ([H200] datasheet: same Hopper die)

# ----------------------------------------------------------------------------- registry

CHIPS: dict[str, ChipSpec | GpuSpec] = {
    c.name: c for c in (SN10, SN30, SN40L, A100_40GB, A100_80GB, H100, H200)
}
# "a100" alone means the 80 GB part: the DGX A100 of the [SN40L] comparison.
ALIASES: dict[str, str] = {"A100": "A100_80GB"}


def get_chip(name: str) -> ChipSpec | GpuSpec:
    """Look up a chip by name, case-insensitive ('-' and '_' alike), e.g. 'sn40l', 'a100-40gb'.

    Raises:
        ValueError: unknown name; the message lists the allowed names.
    """
    key = name.strip().upper().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in CHIPS:
        allowed = ", ".join(sorted(CHIPS) + sorted(ALIASES))
        raise ValueError(f"unknown chip {name!r}; allowed: {allowed}")
    return CHIPS[key]


def _fmt(value: float | None) -> str:
    return "None" if value is None else f"{value:.4g}"


def assumptions(chip: ChipSpec | GpuSpec) -> list[str]:
    """Human-readable lines stating every non-public value the model uses for ``chip``.

    Each line: '<chip>: <field> = <value> (assumed[: reason])', with the plausible range of a
    ``params`` field. Includes every field of the chip's ``params`` and every chip field listed
    in ``chip.assumed``; for an RDU also the clock actually used when it is derived from the
    peak.
    """
    lines = []
    target = "rdu" if isinstance(chip, ChipSpec) else "gpu"
    for f in dataclasses.fields(chip.params):
        r = RANGES.get(f"{target}.{f.name}")
        span = f"; plausible {_fmt(r.low)}-{_fmt(r.high)}" if r else ""
        lines.append(f"{chip.name}: {f.name} = {_fmt(getattr(chip.params, f.name))} "
                     f"(not public: assumed/fitted{span})")
    if isinstance(chip, ChipSpec) and chip.params.clock_hz is None:
        lines.append(f"{chip.name}: clock_hz derived = {chip.clock_hz:.4g} Hz "
                     "(peak / (2 x PCUs x lanes x stages); assumed lanes and stages)")
    for name, reason in chip.assumed:
        lines.append(f"{chip.name}: {name} = {_fmt(getattr(chip, name))} "
                     f"(not public: assumed: {reason})")
    return lines
