"""The published measurements the RDU parameters are fitted to, as data, and how each is estimated.

Each ``Published`` row is one measurement: its source (paper + table/figure), the inputs of the
measured system, the published value (a number, or a range ``(low, high)`` where the publication
gives a range or a bound: "up to 2.2x" is the bound (1, 2.2), not a point) and how the
representative point was chosen. ``estimators(g)`` says how the emulator estimates each on the
lowered programs ``g`` (``PROGRAMS``); ``make_cases`` joins the two into ``fit.Case``s.

Inputs describe the measured system, never a per-case constant: [SN40L] measurements (Table IV,
Table V, Fig. 10) were taken before kernel looping existed ([KL], five months later), so they run
with looping off and hardware-orchestrated launches (the [SN40L] production mode); [KL] cases
with hardware orchestration and looping on/off as the paper compares them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rdu_xla_backend.calibrate import fit
from rdu_xla_backend.calibrate.suite import Group
from rdu_xla_backend.calibrate.programs import (HO, SN40L_ERA, CoESetting, Program,
                                                coe_programs, coe_speedup, max_over,
                                                rdu_step, weight_bytes)
from rdu_xla_backend.cost import gpu as gpu_model
from rdu_xla_backend.cost import rdu as perf
from rdu_xla_backend.hardware import SN40L, GpuParameters
from rdu_xla_backend.mapping.placement import copy_seconds


@dataclass(frozen=True)
class Published:
    """One published measurement (no estimate attached)."""

    name: str
    source: str
    inputs: str
    published: float | tuple[float, float]
    unit: str
    how: str


TABLE_V = CoESetting()  # 150 Llama2-7B experts, batch 8, 128-token prompts (assumed), 20 tokens

PROGRAMS: dict[str, Program] = {
    "dec8k": Program("llama3.1-8b.yaml", "decode", (), unfused=True),
    "dec4k": Program("llama3.1-8b.yaml", "decode", ("data.seq_len=4096",)),
    "dec4k_l2": Program("llama2-7b.yaml", "decode", ("data.seq_len=4096",)),
    "dec4k_m7": Program("mistral-7b.yaml", "decode", ("data.seq_len=4096",)),
    "pre7b": Program("llama2-7b.yaml", "prefill", ("data.seq_len=4096",), unfused=True),
    **coe_programs(TABLE_V),
    "train13": Program("gpt3-13b.yaml", "train", (), unfused=True),
    "sparse13": Program("gpt3-13b-sparse.yaml", "train", (), unfused=True),
}

CASES: tuple[Published, ...] = (
    Published("decode_8b_16s", "[SN40L] Table IV",
              "Llama 3.1 8B decode, BF16, batch 1, 8K context, 16 sockets TP16", 1042.0,
              "tokens/s/user", "the published point"),
    Published("coe_vs_dgx_a100", "[SN40L] Table V",
              "CoE: 150 Llama2-7B experts, router + experts TP8, batch 8, 128-token prompts "
              "(assumed), 20 output tokens; SN40L x8 vs DGX A100", 6.6, "speedup",
              "the published point"),
    Published("coe_vs_dgx_h100", "[SN40L] Table V", "as above vs DGX H100", 3.7, "speedup",
              "the published point"),
    Published("fusion_prefill", "[SN40L] Fig. 10",
              "Llama2-7B prefill 4K, 8 sockets TP8: unfused / fused time", (1.5, 3.0), "speedup",
              "range 1.5x-3x for prefill/training; the Llama-7B 4K prefill the text names"),
    Published("fusion_train", "[SN40L] Fig. 10",
              "GPT-13B dense training step, 2K sequence, batch 1024, 8 sockets TP8", (1.5, 3.0),
              "speedup", "range 1.5x-3x; the 13B model of the sparse case, dense"),
    Published("fusion_sparse_train", "[SN40L] Fig. 10",
              "GPT-13B 87.5%-sparse training step, 2K sequence, 8 sockets TP8", (1.5, 3.0),
              "speedup", "range 1.5x-3x; the named case"),
    Published("fusion_decode", "[SN40L] Fig. 10",
              "Llama 3.1 8B decode 8K, batch 1, 8 sockets TP8: unfused / fused", (1.0, 13.0),
              "speedup", "range 1x-13x for decode; the Table IV model on one node"),
    Published("ho_vs_so_decode", "[SN40L] Fig. 10",
              "Llama 3.1 8B decode 8K, fused, 8 sockets: software / hardware orchestrated",
              (1.4, 8.0), "speedup", "range 1.4x-8x on decode; the fused Table IV decode"),
    Published("ho_vs_so_other", "[SN40L] Fig. 10",
              "max of Llama2-7B prefill 4K and GPT-13B training, 8 sockets: SO / HO", (1.0, 1.1),
              "speedup", "'at most 1.1x elsewhere': the larger of the two non-decode programs"),
    Published("kernel_calls_prefill", "[SN40L] Fig. 10 text",
              "Llama2-7B 4K prefill: kernel calls unfused / fused", 11.0, "ratio",
              "the published point (depends on the lowering, on no parameter)"),
    Published("switch_8b", "[HC24]", "Llama 3.1 8B weights DDR -> HBM on an 8-socket node",
              0.01, "s", "the published point ('about 0.01 s')"),
    Published("looping_gain", "[KL] abstract",
              "decode, BF16, batch 1, 4K: looping off / on, the largest over Llama2-7B, "
              "Llama 3.1 8B, Mistral-7B on 1, 8 and 16 sockets", (1.0, 2.2), "speedup",
              "'up to 2.2x' over the paper's models: a bound on the largest gain, not a point"),
    Published("peak_fraction_8s", "[KL] abstract",
              "Llama 3.1 8B decode 4K, 8 sockets TP8, looping on: HBM-roofline fraction",
              (0.9, 1.0), "fraction", "'over 90% of peak': bytes per socket / (time x HBM peak)"),
    Published("peak_fraction_16s", "[KL] abstract", "as above on 16 sockets TP16", (0.9, 1.0),
              "fraction", "'over 90% of peak' on 16 sockets"),
    Published("gpu_decode_bw", "[KL] abstract",
              "Llama 3.1 8B decode 4K, batch 1, DGX H100 TP8: HBM bandwidth used / peak", 0.21,
              "fraction", "'about 21% of peak memory bandwidth' on the DGX H100 of [KL]"),
)


def hbm_peak_fraction(graph, chips: dict, sockets: int) -> float:
    """Off-chip bytes per socket / (step time x HBM peak): [KL]'s 'fraction of peak'."""
    pp = perf.program_perf(graph, chips["sn40l"], perf.Options(sockets=sockets, **HO))
    return sum(k.offchip_bytes for k in pp.kernels) / (pp.step_s * chips["sn40l"].hbm_bytes_per_s)


def gpu_bandwidth_fraction(graph, chips: dict, gpu: str, gpus: int) -> float:
    """HBM bytes per GPU / (step time x HBM peak) of the kernel-by-kernel baseline."""
    gp = gpu_model.gpu_perf(graph, chips[gpu], gpus=gpus)
    return gp.bytes / gpus / (gp.step_s * chips[gpu].hbm_bytes_per_s)


def estimators(g: dict) -> dict:
    """Case name -> estimate(chips) on the lowered programs ``g``."""
    def ratio(slow, fast, sockets, opt_slow, opt_fast):
        return lambda c: rdu_step(slow, c, sockets, **opt_slow) / rdu_step(fast, c, sockets,
                                                                              **opt_fast)

    def looping_gain(c):
        return max_over(lambda xs: rdu_step(xs[0], c, xs[1], **SN40L_ERA)
                        / rdu_step(xs[0], c, xs[1], **HO),
                        [(g[k], s) for k in ("dec4k", "dec4k_l2", "dec4k_m7") for s in (1, 8, 16)])

    so, ho = dict(SN40L_ERA, orchestration="software"), SN40L_ERA
    calls = lambda gr: perf.program_perf(gr, SN40L, perf.Options(**SN40L_ERA)).launches  # noqa
    return {
        "decode_8b_16s": lambda c: 1.0 / rdu_step(g["dec8k"], c, 16, **SN40L_ERA),
        "coe_vs_dgx_a100": lambda c: coe_speedup(g, c, TABLE_V, "a100"),
        "coe_vs_dgx_h100": lambda c: coe_speedup(g, c, TABLE_V, "h100"),
        "fusion_prefill": ratio(g["pre7b_u"], g["pre7b"], 8, ho, ho),
        "fusion_train": ratio(g["train13_u"], g["train13"], 8, ho, ho),
        "fusion_sparse_train": ratio(g["sparse13_u"], g["sparse13"], 8, ho, ho),
        "fusion_decode": ratio(g["dec8k_u"], g["dec8k"], 8, ho, ho),
        "ho_vs_so_decode": ratio(g["dec8k"], g["dec8k"], 8, so, ho),
        "ho_vs_so_other": lambda c: max(ratio(x, x, 8, so, ho)(c)
                                        for x in (g["pre7b"], g["train13"])),
        "kernel_calls_prefill": lambda c: calls(g["pre7b_u"]) / calls(g["pre7b"]),
        "switch_8b": lambda c: copy_seconds(weight_bytes(g["dec4k"]), c["sn40l"], 8),
        "looping_gain": looping_gain,
        "peak_fraction_8s": lambda c: hbm_peak_fraction(g["dec4k"], c, 8),
        "peak_fraction_16s": lambda c: hbm_peak_fraction(g["dec4k"], c, 16),
        "gpu_decode_bw": lambda c: gpu_bandwidth_fraction(g["dec4k"], c, "h100", 8),
    }


def make_cases(g: dict, table: tuple[Published, ...] = CASES, estimates: dict | None = None
               ) -> list[fit.Case]:
    """``table``'s rows with their estimate functions (``estimators(g)`` unless given)."""
    est = estimators(g) if estimates is None else estimates
    return [fit.Case(p.name, p.source, p.inputs, p.published, p.unit, est[p.name], p.how)
            for p in table]



# The parameters these cases inform, each bounded to its range in ``ranges.RANGES``. GPU
# fields the GPU baseline no longer has are left out (the baseline's own group brings its).
_GPU_FIELDS = {f.name for f in dataclasses.fields(GpuParameters)}
PARAMS: tuple[fit.Param, ...] = tuple(
    [fit.Param.of("rdu", n) for n in (
        "launch_seconds_software", "launch_seconds_hardware", "hbm_efficiency", "ddr_efficiency",
        "ddr_peak_factor", "inter_socket_latency_seconds", "inter_socket_bytes_per_s",
        "offchip_latency_seconds")]
    + [fit.Param.of("gpu", n) for n in (
        "launch_sync_seconds", "achievable_bandwidth_fraction", "achievable_compute_fraction",
        "host_copy_links", "pcie_copy_efficiency") if n in _GPU_FIELDS])


def group(g: dict) -> Group:
    """The SN40L / [KL] / [HC24] cases on the lowered programs ``g``, with ``PARAMS``."""
    return Group("SN40L, Kernel Looping, Hot Chips 2024", make_cases(g), list(PARAMS))
