"""Train a dense and a block-sparse recipe on the same data, then print and plot the pair.

    python scripts/dense_vs_sparse.py                       # the demo: tiny-dense vs tiny-sparse
    python scripts/dense_vs_sparse.py A.yaml B.yaml --set run.steps=100

Each run goes to a fresh directory under `runs/` (nothing earlier is overwritten). Prints one
row per run (final val loss, tokens/s, step time, stored parameters) and the sparse/dense
step-time ratio; writes `pair.json` and `val_loss.png` beside the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import datasets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sparsetrain.config import load_recipe
from sparsetrain.training.tracking import read_jsonl
from sparsetrain.training.loop import train


def allocator() -> str:
    """Which malloc this process runs with (XLA's big buffers are sensitive to it)."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload or "jemalloc" in preload:
        return f"LD_PRELOAD={preload}"
    return "glibc malloc" + (f" (GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']})"
                             if os.environ.get("GLIBC_TUNABLES") else " (defaults)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipes", nargs="*", default=["recipes/tiny-dense.yaml", "recipes/tiny-sparse.yaml"],
                        help="dense recipe first, then the sparse one(s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every recipe (repeatable)")
    parser.add_argument("--out", default=None, help="parent directory of the runs (default runs/pair-TIME)")
    args = parser.parse_args(argv)

    datasets.disable_progress_bars()  # local files: "downloading" bars are noise
    out = Path(args.out or f"runs/pair-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"allocator: {allocator()}")
    print(f"runs in {out}/")
    try:
        cfgs = [load_recipe(r, args.overrides) for r in args.recipes]  # every recipe checked first
    except ValueError as e:
        print(f"recipe error: {e}", file=sys.stderr)
        return 2
    results = []
    for cfg in cfgs:
        cfg.run.out_dir = str(out / cfg.run.name)
        print(f"\n== {cfg.run.name}: {cfg.sparsity.pattern}, density {cfg.sparsity.density}, "
              f"{cfg.run.steps} steps of {cfg.data.batch_size}x{cfg.data.seq_len} tokens")
        summary = train(cfg)
        summary["curve"] = [(r["step"], r["val_loss"]) for r in read_jsonl(cfg.out_dir / "metrics.jsonl")
                            if "val_loss" in r]
        results.append(summary)

    base = results[0]
    print(f"\n| run | final val loss | tokens/s | step time (s) | params stored | step time vs {base['run']} |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['final_val_loss']:.3f} | {r['tokens_per_s']:,.0f} | "
              f"{r['step_time_s']:.3f} | {r['params_stored']:,} | {r['step_time_s'] / base['step_time_s']:.2f}x |")
    for r in results[1:]:
        print(f"{r['run']}/{base['run']} step-time ratio: {r['step_time_s'] / base['step_time_s']:.2f} "
              f"(speedup {base['step_time_s'] / r['step_time_s']:.2f}x)")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        steps, losses = zip(*r["curve"])
        ax.plot(steps, losses, marker="o", label=f"{r['run']} ({r['params_stored'] / 1e6:.2f} M stored)")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "val_loss.png", dpi=120)
    (out / "pair.json").write_text(json.dumps({"allocator": allocator(), "runs": results}, indent=2))
    print(f"wrote {out / 'pair.json'} and {out / 'val_loss.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
