"""Composition of Experts (CoE): many expert models held off-HBM, switched in per request.

The [SN40L] scenario (Prabhakar et al., MICRO 2024, Sec. V and Table V): N experts (copies of
one model, e.g. Llama2-7B), a router model, a batch of B requests; the router picks one expert
per request; each chosen expert answers its requests with ``output_tokens`` decode steps after
a prefill of the prompt. Expert weights live in the node's large tier and are copied into HBM
when an expert is switched in:

- SN40L node: S sockets, experts in DDR (S x 1.5 TB), copied DDR -> HBM by every socket from
  its own DDR (``placement.copy_seconds``; [SN40L]: over 1 TB/s on 8 sockets).
- DGX: G GPUs, experts in host memory, copied over the host links (PCIe; 32 GB/s per link on
  A100, 64 GB/s on H100 [SN40L]): ``GpuParameters.host_copy_links`` links work at once, at most
  one per PCIe switch (DGX A100 system architecture: 4 switches, 2 GPUs each, so two GPUs share
  a switch's uplink), each at ``pcie_copy_efficiency`` of its peak (a pinned copy).

HBM keeps the experts that fit besides the router and the running expert's working set (a
cache); with uniform routing a needed expert is resident with probability resident / N. An
expert that does not fit HBM at all is never copied: it runs from the large tier, and the
emulator charges its weights there (RDU: the placement puts them in DDR; GPU: its weights cross
the host link at every step). More experts than the large tier holds is an overflow, reported.

Per batch: the router's prefill over all prompts, then for each distinct expert needed (in
expectation N (1 - (1 - 1/N)^B)): its switch if not resident, its prefill and its decode steps,
one expert after the other (no overlap of copies with compute: stated). Every request of the
batch waits for the batch: per-request latency = batch time. Expert times come from the
emulator (``rdu_expert_times`` / ``gpu_expert_times`` on lowered prefill and decode graphs).

Units: bytes, seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rdu_xla_backend.cost import rdu as perf
from rdu_xla_backend.cost import gpu as gpu_model
from rdu_xla_backend.workload.graph import Graph
from rdu_xla_backend.hardware import ChipSpec, GpuSpec
from rdu_xla_backend.mapping.placement import copy_seconds

TB = 1e12


@dataclass(frozen=True)
class CoESystem:
    """A node serving CoE.

    Attributes:
        name: label, e.g. 'SN40L x8', 'DGX A100_80GB'.
        devices: sockets or GPUs (the experts and the router are split over all of them).
        hbm_bytes: HBM over all devices.
        store_bytes: the large tier holding every expert (DDR, or the host's memory).
        store_tier: 'ddr' or 'host'.
        copy_bytes_per_s: aggregate store -> HBM copy bandwidth.
        chip: the RDU or GPU model.
    """

    name: str
    devices: int
    hbm_bytes: float
    store_bytes: float
    store_tier: str
    copy_bytes_per_s: float
    chip: ChipSpec | GpuSpec


def rdu_node(chip: ChipSpec, sockets: int = 8) -> CoESystem:
    """An RDU node: experts in DDR, copied DDR -> HBM on every socket at once."""
    rate = 1.0 / copy_seconds(1.0, chip, sockets)
    return CoESystem(f"{chip.name} x{sockets}", sockets, chip.hbm_bytes * sockets,
                     chip.ddr_bytes * sockets, "ddr", rate, chip)


GPUS_PER_PCIE_SWITCH = 2  # DGX A100 / DGX H100 system architecture: 4 PCIe switches for 8 GPUs


def dgx(gpu: GpuSpec, gpus: int = 8, host_bytes: float = 2 * TB) -> CoESystem:
    """A DGX: experts in host memory, copied over ``gpu.params.host_copy_links`` host links at
    once (at most one per PCIe switch: ``GPUS_PER_PCIE_SWITCH`` GPUs share its uplink), each
    moving ``pcie_copy_efficiency`` x ``gpu.host_link_bytes_per_s``.

    Args:
        host_bytes: host memory (DGX A100 640GB and DGX H100 system memory: 2 TB, datasheets).
    """
    switches = max(1, gpus // GPUS_PER_PCIE_SWITCH)
    links = min(gpu.params.host_copy_links, switches)
    rate = links * gpu.params.pcie_copy_efficiency * gpu.host_link_bytes_per_s
    return CoESystem(f"DGX {gpu.name}", gpus, gpu.hbm_bytes * gpus, host_bytes, "host", rate, gpu)


@dataclass(frozen=True)
class CoEScenario:
    """What is served: ``experts`` models of ``expert_bytes`` each, a batch of requests."""

    experts: int
    expert_bytes: float  # weights of one expert (BF16 Llama2-7B: 13.5 GB)
    batch: int = 8
    prompt_tokens: int = 128  # not given by [SN40L] for Table V: assumed
    output_tokens: int = 20
    router_bytes: float | None = None  # default: the router is one more expert-sized model
    working_bytes: float = 0.0  # KV cache and activations of the running expert (all devices)


@dataclass(frozen=True)
class ExpertTimes:
    """Seconds of the model work, from the emulator.

    Attributes:
        router_s: the router's prefill over the whole batch of prompts.
        prefill_s: one expert's prefill of one request's prompt.
        decode_s: one decode step of one expert for one request.
        offload_s: extra seconds per decode step when the expert runs from the large tier
            (GPU: weights over the host link), 0 when it fits HBM.
    """

    router_s: float
    prefill_s: float
    decode_s: float
    offload_s: float = 0.0


@dataclass(frozen=True)
class ExpertPlan:
    """Where the experts live: resident in HBM, in the store, or nowhere (overflow)."""

    fits_hbm: bool  # one expert fits HBM next to the router and the working set
    resident: int  # experts HBM keeps at once (0 if none fits)
    in_store: int  # experts the large tier holds
    overflow: int  # experts that fit nowhere (reported)
    tier: str  # where a running expert's weights are read from: 'hbm' or the store tier


def plan_experts(system: CoESystem, scenario: CoEScenario) -> ExpertPlan:
    """Capacity check of the experts on ``system`` (see the module docstring)."""
    router = scenario.expert_bytes if scenario.router_bytes is None else scenario.router_bytes
    free = system.hbm_bytes - router - scenario.working_bytes
    fits = free >= scenario.expert_bytes
    resident = int(free // scenario.expert_bytes) if fits else 0
    in_store = min(scenario.experts, int(system.store_bytes // scenario.expert_bytes))
    return ExpertPlan(fits, min(resident, scenario.experts), in_store,
                      scenario.experts - in_store, "hbm" if fits else system.store_tier)


def expected_distinct(experts: int, batch: int) -> float:
    """Expected distinct experts among ``batch`` uniform draws from ``experts``."""
    return experts * (1.0 - (1.0 - 1.0 / experts) ** batch)


@dataclass(frozen=True)
class CoEResult:
    """One batch served; every time in seconds."""

    system: str
    plan: ExpertPlan
    switch_s: float  # one expert's copy into HBM (0 if it runs from the store)
    switches: float  # expected switches per batch
    router_s: float
    prefill_s: float  # all experts' prefills of the batch
    decode_s: float  # all experts' decode steps of the batch
    switching_s: float  # switches x switch_s
    per_request_s: float  # = batch time: every request waits for the batch

    def summary(self) -> str:
        p = self.plan
        return (f"{self.system}: {self.per_request_s * 1e3:.4g} ms per request (router "
                f"{self.router_s * 1e3:.3g}, switching {self.switching_s * 1e3:.3g} = "
                f"{self.switches:.3g} x {self.switch_s * 1e3:.3g}, prefill "
                f"{self.prefill_s * 1e3:.3g}, decode {self.decode_s * 1e3:.3g} ms); experts "
                f"resident {p.resident}, in {self.plan.tier if not p.fits_hbm else 'store'} "
                f"{p.in_store}, overflow {p.overflow}")


def coe_latency(system: CoESystem, scenario: CoEScenario, times: ExpertTimes) -> CoEResult:
    """Per-request latency of one batch of ``scenario`` on ``system``."""
    plan = plan_experts(system, scenario)
    distinct = expected_distinct(scenario.experts, scenario.batch)
    per_expert = scenario.batch / distinct  # requests per chosen expert
    if plan.fits_hbm:
        switch = scenario.expert_bytes / system.copy_bytes_per_s
        switches = distinct * (1.0 - plan.resident / scenario.experts)
        step = times.decode_s
    else:  # runs from the store: no copy, its weights are read there at every step
        switch, switches = 0.0, 0.0
        step = times.decode_s + times.offload_s
    prefill = distinct * per_expert * times.prefill_s
    decode = distinct * scenario.output_tokens * step
    total = times.router_s + switches * switch + prefill + decode
    return CoEResult(system.name, plan, switch, switches, times.router_s, prefill, decode,
                     switches * switch, total)


# ----------------------------------------------------------------------------- expert times


def rdu_expert_times(router: Graph, prefill: Graph, decode: Graph, system: CoESystem,
                     scenario: CoEScenario, options: perf.Options) -> ExpertTimes:
    """Expert times on an RDU node from lowered graphs (``options.sockets`` = the node's).

    An expert that does not fit HBM is timed on the chip with no HBM left for it, so the
    placement puts its weights in DDR and the emulator charges the DDR path.
    """
    chip = system.chip
    plan = plan_experts(system, scenario)
    if not plan.fits_hbm:
        chip = dataclasses.replace(chip, name=f"{chip.name} (expert in DDR)",
                                   hbm_bytes=scenario.working_bytes / system.devices + 1.0)
    step = lambda g, c: perf.program_perf(g, c, options).step_s  # noqa: E731
    return ExpertTimes(step(router, system.chip), step(prefill, chip), step(decode, chip))


def gpu_expert_times(router: Graph, prefill: Graph, decode: Graph, system: CoESystem,
                     scenario: CoEScenario) -> ExpertTimes:
    """Expert times on a DGX from lowered graphs (kernel by kernel, tensor parallel)."""
    gpu, n = system.chip, system.devices
    plan = plan_experts(system, scenario)
    offload = 0.0 if plan.fits_hbm else scenario.expert_bytes / system.copy_bytes_per_s
    step = lambda g: gpu_model.gpu_perf(g, gpu, gpus=n).step_s  # noqa: E731
    return ExpertTimes(step(router), step(prefill), step(decode), offload)
