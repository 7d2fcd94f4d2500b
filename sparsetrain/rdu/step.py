"""Training steps run through the RDU emulator (`run.backend: rdu`).

The train step (the same pure function XLA jits) is lowered once by `rdu_xla_backend` into a
graph of fused kernels (decoder-layer loops, forward, backward, optimizer update); every call then
runs that graph kernel by kernel with `rdu_xla_backend.execute` on the real state and batch, so losses
and parameters equal the XLA run within float tolerance. The emulated step time on the chip comes
from `program_perf` of the same graph, with the sparse gathers priced from the block indices the
state holds (repriced when a sparsity flow changes them).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from rdu_xla_backend import Options, get_chip, program_perf
from rdu_xla_backend.execute import execute

from sparsetrain.rdu.programs import lower_program, program_roles


class EmulatedTrainStep:
    """`step(state, batch) -> (state, metrics)` executed on the emulated RDU.

    Attributes:
        emulated_step_s: seconds one step would take on the chip (None before the first call).
        bound: what limits the step's slowest kernels (compute, sram, hbm, ddr, network, launch).
        lowerings: how many times the step was traced and lowered (1: shapes never change).
    """

    def __init__(self, step_fn: Callable, chip: str, options: Options = Options()):
        self.step_fn = step_fn
        self.chip_name = chip
        self.chip = get_chip(chip)
        self.options = options
        self.graph = None
        self.emulated_step_s: float | None = None
        self.bound: str | None = None
        self.lowerings = 0

    def __call__(self, state: dict, batch: dict) -> tuple[dict, dict]:
        if self.graph is None:
            self.graph = lower_program(self.step_fn, state, batch, name="train_step",
                                       roles=program_roles("train"))
            self.lowerings += 1
            self.reprice(state, batch)
        outputs, _ = execute(self.graph, state, batch, timed=False)
        return outputs

    def reprice(self, state: dict, batch: dict) -> float:
        """Emulated step time (s) with the sparse gathers priced from `state`'s current indices."""
        leaves = jax.tree.leaves((state, batch))
        self.graph.concrete = {pos: np.asarray(leaves[pos]) for pos in self.graph.concrete}
        perf = program_perf(self.graph, self.chip, self.options)
        self.emulated_step_s, self.bound = float(perf.step_s), perf.bound
        return self.emulated_step_s

    def after_mask_update(self, state: dict, batch: dict) -> None:
        """A flow changed the block indices: reprice the sparse gathers."""
        self.reprice(state, batch)

    def step_metrics(self, tokens_per_step: int) -> dict[str, Any]:
        """Logged each step: emulated step time (s) and tokens/s on the chip."""
        return {"rdu_step_time_s": self.emulated_step_s,
                "rdu_tokens_per_s": tokens_per_step / self.emulated_step_s}

    def summary(self) -> dict[str, Any]:
        """What the run summary records: lowerings (as compiles), chip, step time and bound."""
        return {"train_step_compiles": self.lowerings, "rdu_chip": self.chip_name,
                "rdu_step_time_s": self.emulated_step_s, "rdu_bound": self.bound}
