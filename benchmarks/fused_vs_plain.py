"""The train step with and without the XLA:CPU fusions of sparsetrain/kernels/fused_ops.py.

    python benchmarks/fused_vs_plain.py --config small-30m --steps 5

Builds each step (dense and density-1/8 sparse) twice: once as training traces it, once with
`cpu_fusions` off (plain autodiff of jnp ops: jax.nn.gelu, optax cross-entropy, no
residual-gradient barrier), and times all four in interleaved rounds (train_throughput's loop).
Prints and writes (benchmarks/results/fused_vs_plain_<config>.json) plain/fused step time per
round and the medians, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from unittest import mock

from train_throughput import CASES, load_average, make_jax_step, recipe, timed_rounds

from sparsetrain.kernels import fused_ops
from sparsetrain.models import gpt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=list(CASES), default="small-30m")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds")
    parser.add_argument("--density", type=float, default=0.125)
    args = parser.parse_args()
    preset, batch, seq_len, block = CASES[args.config]
    start_load = load_average()
    runners = {}
    for label, density in (("sparse", args.density), ("dense", 1.0)):
        cfg = recipe(preset, batch, seq_len, block, density)
        runners[f"{label}_fused"] = make_jax_step(cfg)[0]
        with mock.patch.object(gpt, "cpu_fusions", lambda: False), \
                mock.patch.object(fused_ops, "cpu_fusions", lambda: False):
            runners[f"{label}_plain"] = make_jax_step(cfg)[0]
            runners[f"{label}_plain"]()  # traced and compiled while the fusions are off
    times = timed_rounds(runners, args.steps)
    out = {"config": args.config, "density": args.density, "cpu_count": os.cpu_count(),
           "load_average_start": start_load, "load_average_end": load_average(), "rounds": times}
    for label in ("sparse", "dense"):
        ratios = [p / f for p, f in zip(times[f"{label}_plain"], times[f"{label}_fused"])]
        out[f"{label}_plain_over_fused_per_round"] = ratios
        print(f"{args.config} {label}: plain / fused step time {statistics.median(ratios):.2f}x "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f}); fused "
              f"{statistics.median(times[f'{label}_fused']):.3f} s, plain "
              f"{statistics.median(times[f'{label}_plain']):.3f} s")
    print(f"load average {start_load} -> {out['load_average_end']}")
    path = Path(f"benchmarks/results/fused_vs_plain_{args.config}.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
