"""Calibration: the emulator against published SN40L / Kernel Looping / DGX measurements.

    .venv/bin/python benchmarks/calibration.py [--iters N] [--loo-iters N] [--out DIR]

A thin runner over ``rdu_xla_backend.calibrate``: lowers the programs of every case and
validation row once (sparsetrain's recipes, through ``sparsetrain/rdu/calibration_programs``),
runs the suite (one bounded fit over all cases, leave-one-out over the point cases, the
never-fitted validation set) and writes benchmarks/results/calibration.{md,json,png}. Extra case
groups join with ``--group module:function`` (Megatron-LM Table 1 is always in): the function takes the
lowering builder and returns a ``suite.Group``. About 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rdu_xla_backend.calibrate import (  # noqa: E402
    cases, megatron, programs, suite, tables, validation)
from sparsetrain.rdu.calibration_programs import recipe_program  # noqa: E402


def plot(result: suite.SuiteResult, path: Path) -> Path:
    """Published vs estimate on log axes: in-sample (circles), leave-one-out (crosses),
    validation (squares); ranges as horizontal bars; ±20% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    loo = {r.name: r.predicted for r in result.loo}
    rows = [(c, result.full.estimates[c.name], "tab:blue", "o") for c in result.cases]
    rows += [(c, e, "tab:green", "s") for c, e, _ in result.validation]
    values = []
    for c, e, color, marker in rows:
        if isinstance(c.published, tuple):
            lo, hi = c.published
            ax.plot([lo, hi], [e, e], "-", color=color, lw=3, alpha=0.5)
            x = (lo * hi) ** 0.5
            values += [lo, hi]
        else:
            x = c.published
            ax.plot(x, e, marker, color=color)
            if c.name in loo:
                ax.plot(x, loo[c.name], "x", color="tab:red")
            values.append(x)
        values.append(e)
        ax.annotate(c.name, (x, e), fontsize=6, xytext=(3, 3), textcoords="offset points")
    grid = [min(values) / 2, max(values) * 2]
    ax.loglog(grid, grid, "k-", lw=0.8)
    ax.fill_between(grid, [v / 1.2 for v in grid], [v * 1.2 for v in grid], color="gray",
                    alpha=0.2, label="±20%")
    for label, color, marker in (("fitted (in-sample)", "tab:blue", "o"),
                                 ("leave-one-out", "tab:red", "x"),
                                 ("validation (never fitted)", "tab:green", "s")):
        ax.plot([], [], marker, color=color, label=label)
    ax.set_xlabel("published (ranges and bounds: bars)")
    ax.set_ylabel("estimate")
    ax.set_title("SN40L emulator calibration: fit, leave-one-out, validation")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def coe_lines(graphs: dict, chips: dict) -> list[str]:
    """CoE breakdowns at the fitted values: Table V and the unpublished settings."""
    lines = ["## Composition of Experts at the fitted values", "",
             "Table V setting (150 Llama2-7B experts, batch 8, 128-token prompts assumed, "
             "20 output tokens):", ""]
    lines += [f"- {programs.coe_result(graphs, chips, cases.TABLE_V, s).summary()}"
              for s in ("sn40l", "a100", "h100")]
    for name, results in validation.coe_predictions(graphs, chips).items():
        lines += ["", f"Prediction, no published value ({name}):", ""]
        lines += [f"- {r.summary()}" for r in results]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=200, help="Nelder-Mead iterations per start")
    ap.add_argument("--loo-iters", type=int, default=200, help="iterations per leave-one-out refit")
    ap.add_argument("--group", action="append", default=[],
                    help="extra case group as module:function(builder) -> suite.Group")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    graphs = programs.build_graphs(recipe_program, {**cases.PROGRAMS, **validation.PROGRAMS})
    groups = [cases.group(graphs), megatron.group()]
    for spec in args.group:
        module, fn = spec.split(":")
        groups.append(getattr(importlib.import_module(module), fn)(recipe_program))
    result = suite.run(groups, programs.CHIPS,
                       validation.make_validation(graphs) + megatron.validation_cases(),
                       iters=args.iters, loo_iters=args.loo_iters)
    text = tables.markdown(result, coe_lines(graphs, suite.chips_with(result, programs.CHIPS)))
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.md").write_text(text)
    data = dict(tables.as_json(result), wall_s=time.perf_counter() - t0)
    (out / "calibration.json").write_text(json.dumps(data, indent=2))
    plot(result, out / "calibration.png")
    print(f"wrote {out}/calibration.md, calibration.json, calibration.png "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
