"""Published measurements that are never fitted: the check that a calibration generalises.

Same form as ``cases``: ``VALIDATION`` rows (source, inputs, published value or bound, how the
point was chosen) and ``estimators(g)`` on the lowered ``PROGRAMS``. The suite reports them
separately from the fitted table, with the fitted parameters; nothing here moves a parameter.

Where a publication gives a bound ("up to 3.7x"), the row is the range up to that bound.
Measurements that a batch-1 weight-streaming model cannot reach (the published rate exceeds the
HBM roofline of the stated system) are kept and say so in ``how``: they show a mechanism the
emulator lacks (speculative decoding), not a parameter to move.
"""

from __future__ import annotations

import math

from rdu_xla_backend.calibrate import fit
from rdu_xla_backend.calibrate.cases import Published
from rdu_xla_backend.calibrate.programs import (HO, SN40L_ERA, CoESetting, Program,
                                                coe_programs, coe_result, gpu_step, max_over,
                                                rdu_step, weight_bytes)
from rdu_xla_backend.cost import coe, gpu_training
from rdu_xla_backend.mapping.gpu_plan import Transformer
from rdu_xla_backend.mapping.placement import copy_seconds

LONG_OUTPUT = CoESetting(output_tokens=200)  # Table V's batch with 10x the output tokens
BATCH_1 = CoESetting(batch=1)  # one request per batch

PROGRAMS: dict[str, Program] = {
    **coe_programs(LONG_OUTPUT, "long_"),
    **coe_programs(BATCH_1, "b1_"),
    "dec70b": Program("llama3.1-70b.yaml", "decode", ("data.seq_len=4096",)),
    "dec405b": Program("llama3.1-405b.yaml", "decode", ("data.seq_len=4096",)),
}

# The dense GPT-3 13B of [SP]'s baseline by its shapes (layers, width, heads, GPT-2 BPE
# vocabulary, 2K sequence), as the GPU training model takes it.
GPT3_13B = Transformer(40, 5120, 40, 50257, 2048, name="gpt3-13b")

VALIDATION: tuple[Published, ...] = (
    Published("switch_ratio_a100", "[SN40L] abstract",
              "one Llama2-7B expert host -> HBM on a DGX A100 / DDR -> HBM on an SN40L node", 31.0,
              "ratio", "'speeds up model switching time by 15x to 31x': the DGX A100 end"),
    Published("switch_ratio_h100", "[SN40L] abstract", "as above, DGX H100", 15.0, "ratio",
              "'15x to 31x': the DGX H100 end"),
    Published("looping_gain_geomean", "[KL] evaluation (geometric mean over its models)",
              "decode batch 1, 4K: looping off / on, geometric mean over Llama2-7B, Llama 3.1 8B, "
              "Mistral-7B on 8 and 16 sockets", 1.6, "speedup",
              "'geometric mean speedup of 1.6x'; the paper's model set and socket counts are not "
              "ours: our three presets on 8 and 16 sockets"),
    Published("ddr_copy_node", "[SN40L] (three-tier memory: DDR -> HBM over 1 TB/s per node)",
              "DDR -> HBM copy bandwidth of an 8-socket node, TB/s", (1.0, 2.3), "TB/s",
              "'over 1 TB/s'; the upper end: 8 sockets x 8 channels of DDR5-4800 x 0.92"),
    Published("kl_vs_dgx_h100", "[KL] abstract",
              "decode batch 1, 4K: SN40L 8 or 16 sockets (looping) / DGX H100 TP8 time, the "
              "largest over Llama2-7B, Llama 3.1 8B, Mistral-7B", (1.0, 3.7), "speedup",
              "'a speedup of up to 3.7x over DGX H100': a bound on the largest"),
    Published("decode_70b_16s", "SambaNova Cloud launch (press release, 2024-09-10)",
              "Llama 3.1 70B decode, BF16, batch 1, 4K, 16 sockets TP16, looping", 461.0,
              "tokens/s/user", "the published rate; above the batch-1 HBM roofline of 16 "
              "sockets (~200 tok/s): speculative decoding, not modelled"),
    Published("decode_405b_16s", "SambaNova Cloud launch (press release, 2024-09-10)",
              "Llama 3.1 405B decode, BF16, batch 1, 4K, 16 sockets TP16, looping", 132.0,
              "tokens/s/user", "the published rate; above the batch-1 HBM roofline of 16 "
              "sockets (~35 tok/s): speculative decoding, not modelled"),
    Published("sparse13b_vs_a100", "[SP] abstract",
              "GPT-13B 87.5%-sparse training on 8 SN30 sockets (the plan emulate chooses) vs "
              "dense GPT-13B trained Megatron-style on a DGX A100 (the fastest 8-GPU plan that "
              "fits), one step of 1024 x 2048 tokens: what `emulate --chip sn30` prints", 4.5,
              "speedup", "'end-to-end speedup of 4.5x over dense A100 baseline'; both on 8 chips "
              "(assumed)"),
)


def estimators(g: dict) -> dict:
    """Validation row name -> estimate(chips) on the lowered programs ``g`` (cases' and ours)."""
    def switch_ratio(gpu):
        def f(c):
            box = coe.dgx(c[gpu], 8)
            nbytes = weight_bytes(g["expert_dec"])
            return (nbytes / box.copy_bytes_per_s) / copy_seconds(nbytes, c["sn40l"], 8)
        return f

    def vs_h100(c):
        return max_over(lambda xs: gpu_step(xs[0], c, 8, "h100") / rdu_step(xs[0], c, xs[1], **HO),
                        [(g[k], s) for k in ("dec4k", "dec4k_l2", "dec4k_m7") for s in (8, 16)])

    def looping_geomean(c):
        gains = [rdu_step(g[k], c, s, **SN40L_ERA) / rdu_step(g[k], c, s, **HO)
                 for k in ("dec4k", "dec4k_l2", "dec4k_m7") for s in (8, 16)]
        return math.prod(gains) ** (1.0 / len(gains))

    return {
        "looping_gain_geomean": looping_geomean,
        "ddr_copy_node": lambda c: 1.0 / copy_seconds(1e12, c["sn40l"], 8),
        "switch_ratio_a100": switch_ratio("a100"),
        "switch_ratio_h100": switch_ratio("h100"),
        "kl_vs_dgx_h100": vs_h100,
        "decode_70b_16s": lambda c: 1.0 / rdu_step(g["dec70b"], c, 16, **HO),
        "decode_405b_16s": lambda c: 1.0 / rdu_step(g["dec405b"], c, 16, **HO),
        "sparse13b_vs_a100": lambda c: (
            gpu_training.choose_plan(GPT3_13B, 8, 1024, c["a100"])[0].step_s
            / rdu_step(g["sparse13"], c, 8, chip="sn30", parallel="auto", batch=1024,
                       heads=GPT3_13B.heads, orchestration="hardware")),
    }


def make_validation(g: dict) -> list[fit.Case]:
    """The ``VALIDATION`` rows with their estimate functions."""
    est = estimators(g)
    return [fit.Case(p.name, p.source, p.inputs, p.published, p.unit, est[p.name], p.how)
            for p in VALIDATION]


def coe_predictions(g: dict, chips: dict) -> dict[str, tuple[coe.CoEResult, ...]]:
    """The CoE at settings with no published value (batch 1; 200 output tokens) on the SN40L
    node, DGX A100 and DGX H100: reported next to the validation, never compared or fitted."""
    return {f"batch {s.batch}, {s.output_tokens} output tokens":
            tuple(coe_result(g, chips, s, sys, prefix) for sys in ("sn40l", "a100", "h100"))
            for s, prefix in ((BATCH_1, "b1_"), (LONG_OUTPUT, "long_"))}
