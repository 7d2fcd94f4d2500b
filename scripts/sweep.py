"""Train one recipe at several values of one field; print a table of the results.

    python scripts/sweep.py recipes/tiny-sparse.yaml sparsity.density 0.5 0.25 0.125 \
        --set run.steps=100

Each value runs as `sparsetrain train RECIPE --set FIELD=VALUE --set run.name=NAME-FIELD-VALUE`
in its own run directory (nothing earlier is overwritten: an existing run name stops the sweep
before training). Every value is validated before the first run starts.
"""

from __future__ import annotations

import argparse
import json
import sys

from sparsetrain.config import load_recipe
from sparsetrain.training.loop import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("field", help="dotted recipe field, e.g. sparsity.density")
    parser.add_argument("values", nargs="+", help="values to try (parsed as YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    cfgs = []
    try:
        for value in args.values:
            base = load_recipe(args.recipe, args.overrides, check_data=False)
            name = f"{base.run.name}-{args.field.split('.')[-1]}-{value}"
            cfgs.append(load_recipe(args.recipe, [*args.overrides, f"{args.field}={value}",
                                                  f"run.name={name}"]))
    except ValueError as e:
        print(f"recipe error: {e}", file=sys.stderr)
        return 2
    rows = []
    for value, cfg in zip(args.values, cfgs):
        s = train(cfg)
        rows.append({"value": value, **{k: s[k] for k in ("run", "final_val_loss", "tokens_per_s",
                                                         "params_stored", "train_flops_effective")}})
    print(f"\n| {args.field} | run | final val loss | tokens/s | params stored | train FLOPs (effective) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['value']} | {r['run']} | {r['final_val_loss']:.3f} | {r['tokens_per_s']:,.0f} | "
              f"{r['params_stored']:,} | {r['train_flops_effective']:.3g} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
