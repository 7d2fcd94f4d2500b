"""The train step with and without the XLA:CPU fusions of sparsetrain/kernels/fused_ops.py, or
without the compiled LayerNorm / bias-GELU kernels of sparsetrain/kernels/norm_gelu.py.

    python benchmarks/fused_vs_plain.py --config small-30m --steps 5
    python benchmarks/fused_vs_plain.py --config small-30m --steps 5 --without kernels

Builds each step (dense and density-1/8 sparse) twice: once as training traces it, once with
`cpu_fusions` off (`--without fused`, the default: plain autodiff of jnp ops: jax.nn.gelu, optax
cross-entropy, no residual-gradient barrier, and so no compiled LayerNorm / GELU either) or with
only the compiled LayerNorm and bias-GELU kernels off (`--without kernels`: their jnp formulas,
the other fused pieces kept), and times all four in interleaved rounds (train_throughput's loop).
Prints and writes (benchmarks/results/fused_vs_plain_<config>.json, or
norm_gelu_vs_plain_<config>.json for `--without kernels`) plain/fused step time per round and the
medians, the sparse/dense speedup of each variant, with the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
from pathlib import Path
from unittest import mock

from train_throughput import CASES, load_average, make_jax_step, recipe, timed_rounds

from sparsetrain.kernels import fused_ops, norm_gelu
from sparsetrain.models import gpt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=list(CASES), default="small-30m")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds")
    parser.add_argument("--density", type=float, default=0.125)
    parser.add_argument("--without", choices=("fused", "kernels"), default="fused",
                        help="what the plain step lacks: every fused piece, or the compiled "
                             "LayerNorm / bias-GELU kernels only")
    args = parser.parse_args()
    preset, batch, seq_len, block = CASES[args.config]
    start_load = load_average()
    runners = {}
    for label, density in (("sparse", args.density), ("dense", 1.0)):
        cfg = recipe(preset, batch, seq_len, block, density)
        runners[f"{label}_fused"] = make_jax_step(cfg)[0]
        if args.without == "fused":
            off = (mock.patch.object(gpt, "cpu_fusions", lambda: False),
                   mock.patch.object(fused_ops, "cpu_fusions", lambda: False))
        else:
            off = (mock.patch.object(norm_gelu, "compiled_elementwise", lambda dtype: False),)
        with contextlib.ExitStack() as stack:
            for patch in off:
                stack.enter_context(patch)
            runners[f"{label}_plain"] = make_jax_step(cfg)[0]
            runners[f"{label}_plain"]()  # traced and compiled while the pieces are off
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
    for variant in ("fused", "plain"):
        speedups = [d / s for d, s in zip(times[f"dense_{variant}"], times[f"sparse_{variant}"])]
        out[f"{variant}_sparse_speedup_per_round"] = speedups
        print(f"{variant}: sparse/dense tokens/s {statistics.median(speedups):.2f}x "
              f"(rounds {min(speedups):.2f}-{max(speedups):.2f})")
    print(f"load average {start_load} -> {out['load_average_end']}")
    stem = "fused_vs_plain" if args.without == "fused" else "norm_gelu_vs_plain"
    out["without"] = args.without
    path = Path(f"benchmarks/results/{stem}_{args.config}.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
