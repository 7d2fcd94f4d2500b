"""Measured GPU training: Megatron-LM's weak-scaling table [MEG] as calibration cases.

[MEG] Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters Using
Megatron-LM", SC21, arXiv 2104.04473, Table 1: GPT models of 1.7B to 1T parameters trained on
Selene (DGX A100 80 GB nodes: 8 GPUs on NVSwitch, 8 x 200 Gb/s HDR InfiniBand per node), with
tensor (t), pipeline (p) and data parallelism, mixed precision, sequence 2048, vocabulary 51200;
achieved TFLOP/s per GPU counts the FLOPs of their Eq. 3, 96 B s l h^2 (1 + s / (6h) +
V / (16 l h)), which includes activation recomputation. Sec. 5.1: these runs use the
interleaved pipeline schedule with the scatter/gather optimisation. Not stated in the table
and assumed here (each an input of the case, never fitted): micro-batch size 1 (with it every
row's micro-batch count m = B / d is a multiple of p, which the interleaved schedule requires),
full activation recomputation on every row (the FLOP count assumes it), 2 interleaved chunks
per GPU where the layers per stage split in two, else 3 (the 530B row: 3 layers per stage),
unfused attention (2021: no FlashAttention; Megatron's fused scale-mask-softmax kernel), weight
gradients summed into FP16 main-gradient buffers by an element-wise add per micro-batch (2021
Megatron's data-parallel wrapper; gradient-accumulation fusion came later), data-parallel
gradient all-reduce after the backward pass (not overlapped).

A case's estimate is ``gpu_training.step_time`` (the model ``emulate`` uses for its GPU
baseline) for the row's model and plan, after ``gpu_plan.require_fit`` has checked that the
plan fits 80 GB per GPU: the model's FLOPs (Eq. 3) / (GPUs x step time), in TFLOP/s.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdu_xla_backend import hardware as hw
from rdu_xla_backend.calibrate import suite
from rdu_xla_backend.calibrate.fit import Case, Param
from rdu_xla_backend.cost import gpu_training
from rdu_xla_backend.mapping import gpu_plan as gp

SOURCE = "[MEG] Table 1"
VALIDATION_SOURCE = "[MEG] Sec. 5.1 text"
SEQ, VOCAB = 2048, 51200  # [MEG] Sec. 5.1


@dataclass(frozen=True)
class Row:
    """One row of [MEG] Table 1."""

    params_b: float  # billions, as printed
    heads: int
    hidden: int
    layers: int
    tp: int
    pp: int
    gpus: int
    batch: int
    tflops: float  # achieved TFLOP/s per GPU (published)

    @property
    def model(self) -> gp.Transformer:
        return gp.Transformer(self.layers, self.hidden, self.heads, VOCAB, SEQ,
                              name=f"GPT {self.params_b:g}B")

    @property
    def plan(self) -> gp.GpuPlan:
        per_stage = self.layers // self.pp
        chunks = 1 if self.pp == 1 else (2 if per_stage % 2 == 0 else 3)
        return gp.GpuPlan(self.tp, self.pp, self.gpus // (self.tp * self.pp), 1, self.batch,
                          recompute=True, chunks=chunks, attention="unfused",
                          grad_accumulation="separate")


# [MEG] Table 1: parameters (B), heads, hidden, layers, t, p, GPUs, batch, TFLOP/s per GPU.
ROWS = (
    Row(1.7, 24, 2304, 24, 1, 1, 32, 512, 137),
    Row(3.6, 32, 3072, 30, 2, 1, 64, 512, 138),
    Row(7.5, 32, 4096, 36, 4, 1, 128, 512, 142),
    Row(18.4, 48, 6144, 40, 8, 1, 256, 1024, 135),
    Row(39.1, 64, 8192, 48, 8, 2, 512, 1536, 138),
    Row(76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140),
    Row(145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148),
    Row(310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155),
    Row(529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163),
    Row(1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163),
)

# Never fitted (a validation row): [MEG] Sec. 5.1 text: GPT-3 175B (96 layers, h 12288, 96
# heads) on 1024 A100s with batch 1536 "achieves 140 teraFLOP/s per GPU" (training on 300B tokens
# would take 34 days); the plan t = 8, p = 16 of Megatron-LM's published GPT-3 175B example
# script (examples/pretrain_gpt3_175B.sh, micro-batch 1).
VALIDATION_ROWS = (Row(175.0, 96, 12288, 96, 8, 16, 1024, 1536, 140),)


# The GPU parameters these cases constrain, searched inside their cited ranges
# (``ranges.RANGES``). The table pins one combination of GEMM and collective speed; the
# HBM fraction (streaming benchmarks) and the tile overhead stay at their assumed values (fitted
# too, the loss is nearly flat along them and they drift to their bounds).
PARAMS = [Param.of("gpu", name)
          for name in ("achievable_compute_fraction", "collective_bandwidth_fraction")]


def estimate_tflops(row: Row, gpu: hw.GpuSpec) -> float:
    """Achieved TFLOP/s per GPU the model estimates for ``row`` on ``gpu`` (FLOPs of [MEG]
    Eq. 3 / (GPUs x step time)). Raises ``gpu_plan.PlanDoesNotFit`` if the plan does not fit."""
    model, plan = row.model, row.plan
    gp.require_fit(model, plan, gpu)
    step = gpu_training.step_time(model, plan, gpu)
    return gpu_training.megatron_flops(model, row.batch) / (row.gpus * step.step_s) / 1e12


def megatron_cases(chip_key: str = "a100", rows=ROWS, source: str = SOURCE) -> list[Case]:
    """One ``fit.Case`` per row: estimate(chips) uses ``chips[chip_key]`` (an A100 80 GB).
    ``megatron_cases(rows=VALIDATION_ROWS, source=VALIDATION_SOURCE)``: the validation set."""
    return [Case(f"megatron_{r.params_b:g}b", source,
                 f"GPT {r.params_b:g}B: {r.layers} layers, h {r.hidden}, {r.heads} heads; "
                 f"t {r.tp}, p {r.pp}, {r.gpus} A100 80GB, batch {r.batch}x{SEQ}",
                 float(r.tflops), "TFLOP/s per GPU",
                 (lambda chips, r=r: estimate_tflops(r, chips[chip_key])),
                 "the published point")
            for r in rows]


def group(builder=None) -> suite.Group:
    """The Table 1 rows as a calibration group with the GPU parameters they inform (the rows are
    built from their shapes: ``builder`` is not needed)."""
    return suite.Group("Megatron-LM Table 1 (GPT training on A100s)", megatron_cases(),
                       list(PARAMS))


def validation_cases() -> list[Case]:
    """Megatron-LM measurements outside Table 1: never fitted."""
    return megatron_cases(rows=VALIDATION_ROWS, source=VALIDATION_SOURCE)
