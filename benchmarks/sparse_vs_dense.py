"""Study: is a block-sparse GPT worth it against dense baselines at equal tokens?

    python benchmarks/sparse_vs_dense.py             # the study: 300 steps per run (recipes' budget)
    python benchmarks/sparse_vs_dense.py --quick     # 40 steps per run, a smoke test of the pipeline
    python benchmarks/sparse_vs_dense.py --steps 600 --out runs/study-600

Six runs on the Shakespeare corpus, same data order, tokens and optimizer:

    tiny-dense               dense baseline (recipes/tiny-dense.yaml)
    tiny-sparse              87.5%-sparse static random-balanced blocks (recipes/tiny-sparse.yaml)
    tiny-gradual             gradual magnitude pruning 50% -> 12.5% (recipes/tiny-gradual.yaml)
    tiny-prune-regrow        RigL block prune/regrow (recipes/tiny-prune-regrow.yaml)
    tiny-sparse-then-dense   tiny-sparse's checkpoint at 90% of the steps, densified, last 10% dense
    tiny-dense-narrow        dense, width chosen so its stored parameters match tiny-sparse's

Goals (from the issue): the sparse model beats the narrowed dense model at equal stored parameters;
sparse-then-dense lands within 2% of the dense val loss with at least 2x fewer training FLOPs.
Writes study.json, compare.md/json and val_loss.png under --out; a run that already finished
there (summary.json) is reused, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sparsetrain.evaluation.compare import compare_runs, markdown_table, write_outputs  # noqa: E402
from sparsetrain.config import load_recipe  # noqa: E402
from sparsetrain.models.accounting import dense_param_count  # noqa: E402
from sparsetrain.models.gpt import GPTSpec  # noqa: E402
from sparsetrain.training.loop import train  # noqa: E402


def narrow_width(dense_cfg, target_params: int, vocab_size: int, multiple: int = 8) -> int:
    """The width (a multiple of `multiple` and of n_heads) whose dense GPT stores closest to target."""
    best = None
    heads = dense_cfg.shape().n_heads
    for d in range(multiple, dense_cfg.shape().d_model + 1, multiple):
        if d % heads:
            continue
        dense_cfg.model.d_model = d
        n = dense_param_count(GPTSpec.from_config(dense_cfg, vocab_size))
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (d, n)
    return best[0]


def run(recipe: str, overrides: list[str], out: Path) -> dict:
    cfg = load_recipe(ROOT / recipe if not Path(recipe).is_absolute() else recipe, overrides)
    cfg.run.out_dir = str(out / cfg.run.name)
    if (cfg.out_dir / "summary.json").is_file():
        print(f"== {cfg.run.name}: already done, reusing {cfg.out_dir}")
        return json.loads((cfg.out_dir / "summary.json").read_text())
    print(f"== {cfg.run.name}: {cfg.sparsity.pattern} {cfg.sparsity.flow}, {cfg.run.steps} steps", flush=True)
    t0 = time.perf_counter()
    summary = train(cfg, progress=False)
    print(f"   done in {time.perf_counter() - t0:.0f} s: val loss {summary['final_val_loss']:.4f}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 steps per run (a smoke test, not a result)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 300, quick 40)")
    parser.add_argument("--out", default=None, help="directory of the runs and results")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run (repeatable)")
    args = parser.parse_args(argv)

    steps = args.steps or (40 if args.quick else 300)
    out = Path(args.out or f"runs/study-{'quick' if args.quick else steps}")
    every = max(steps // 10, 1)
    common = [f"run.steps={steps}", f"run.eval_every={every}", f"run.checkpoint_every={every}",
              "run.keep_checkpoints=3", "run.wandb=disabled", *args.overrides]
    if args.quick:
        common += ["run.eval_batches=4"]
    flow_every = [f"sparsity.update_every={max(steps // 12, 1)}"]
    switch = steps - steps // 10  # sparse-then-dense: last 10% of the steps dense

    t0 = time.perf_counter()
    summaries = {}
    summaries["tiny-dense"] = run("recipes/tiny-dense.yaml", common, out)
    summaries["tiny-sparse"] = run("recipes/tiny-sparse.yaml", common, out)
    summaries["tiny-gradual"] = run("recipes/tiny-gradual.yaml", common + flow_every, out)
    summaries["tiny-prune-regrow"] = run("recipes/tiny-prune-regrow.yaml", common + flow_every, out)
    summaries["tiny-sparse-then-dense"] = run(
        "recipes/tiny-sparse-then-dense.yaml",
        common + [f"sparsity.init_from={out / 'tiny-sparse'}", f"sparsity.init_step={switch}"], out)
    dense_cfg = load_recipe(ROOT / "recipes/tiny-dense.yaml", common)
    width = narrow_width(dense_cfg, summaries["tiny-sparse"]["params_stored"], summaries["tiny-dense"]["vocab_size"])
    summaries["tiny-dense-narrow"] = run("recipes/tiny-dense.yaml",
                                         common + [f"model.d_model={width}", "run.name=tiny-dense-narrow"], out)

    result = compare_runs([out / name for name in summaries], baseline="tiny-dense")
    paths = write_outputs(result, out)
    by = {r["run"]: r for r in result["rows"]}
    goals = {
        "sparse_beats_narrow_dense": by["tiny-sparse"]["val_loss"] < by["tiny-dense-narrow"]["val_loss"],
        "sparse_then_dense_within_2pct": by["tiny-sparse-then-dense"]["val_loss_vs_base_pct"] <= 2.0,
        "sparse_then_dense_2x_fewer_flops": by["tiny-sparse-then-dense"]["flops_vs_base"] <= 0.5,
    }
    study = {"steps": steps, "quick": args.quick, "narrow_width": width, "goals": goals,
             "wall_time_s": time.perf_counter() - t0, **result}
    (out / "study.json").write_text(json.dumps(study, indent=2))
    print()
    print(markdown_table(result))
    print(f"\nnarrow dense width {width}; goals: " + ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in goals.items()))
    print(f"written: {out / 'study.json'}, {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
