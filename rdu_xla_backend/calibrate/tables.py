"""The calibration suite's result as markdown and JSON: in-sample table with the leave-one-out
column, the validation table, the fitted parameters with their ranges and sources, and how many
point constraints hold how many parameters."""

from __future__ import annotations

from rdu_xla_backend.calibrate import fit
from rdu_xla_backend.calibrate.suite import SuiteResult


def fmt(x) -> str:
    """A published value or estimate: 4 significant digits, ranges as 'low-high'."""
    if isinstance(x, tuple):
        return f"{fmt(x[0])}-{fmt(x[1])}"
    return f"{x:.4g}"


def cases_table(result: SuiteResult) -> list[str]:
    """Every fitted case: published, in-sample estimate and error, leave-one-out prediction."""
    loo = {r.name: r for r in result.loo}
    lines = ["| group | case | source | inputs | published | estimate | unit | in-sample % | "
             "LOO prediction | LOO % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in result.groups:
        for c in g.cases:
            e = result.full.estimates[c.name]
            r = loo.get(c.name)
            lo = (f"{fmt(r.predicted)} | {r.error_percent:+.1f}" if r
                  else "(range: not a point) | ")
            lines.append(f"| {g.name} | {c.name} | {c.source} | {c.inputs} | {fmt(c.published)} | "
                         f"{fmt(e)} | {c.unit} | {result.full.errors[c.name]:+.1f} | {lo} |")
    return lines


def validation_table(result: SuiteResult) -> list[str]:
    lines = ["| case | source | inputs | published | estimate | unit | error % | note |",
             "|---|---|---|---|---|---|---|---|"]
    for c, e, err in result.validation:
        lines.append(f"| {c.name} | {c.source} | {c.inputs} | {fmt(c.published)} | {fmt(e)} | "
                     f"{c.unit} | {err:+.1f} | {c.how} |")
    return lines


def params_table(result: SuiteResult) -> list[str]:
    lines = ["| parameter | of | fitted | assumed | range | at a bound | informed by (elasticity "
             ">= 0.05) | source of the range |", "|---|---|---|---|---|---|---|---|"]
    for p in result.params:
        v = result.full.values[p.name]
        cases = ", ".join(result.informed_by(p.name)) or "none: held by its range and the prior"
        lines.append(f"| {p.name} | {p.target} | {v:.4g} | {result.assumed[p.name]:.4g} | "
                     f"{p.low:.3g}-{p.high:.3g} | {p.at_bound(v) or 'no'} | {cases} | "
                     f"{p.source} |")
    return lines


def summary(result: SuiteResult) -> list[str]:
    """The fidelity figures in words."""
    k = result.constraints
    mean, worst = result.loo_summary()
    points = [c for c in result.cases if c.is_point]
    in_mean = sum(abs(result.full.errors[c.name]) for c in points) / max(len(points), 1)
    ranges_in = sum(result.full.errors[c.name] == 0 for c in result.cases if not c.is_point)
    bounds = result.full.at_bound
    val_in = sum(abs(err) <= 20 if c.is_point else err == 0 for c, _, err in result.validation)
    return [
        f"- Constraints: {k['point_cases']} point cases ({k['point_cases_on_parameters']} depend "
        f"on a parameter) and {k['range_cases']} ranges or bounds hold {k['parameters']} "
        f"parameters ({k.get('parameters_a_point_case_informs', 0)} of them move a point case), "
        "each bounded to its plausible range, with a weak prior toward its assumed value.",
        f"- Leave-one-out over the {len(result.loo)} point cases (the fidelity figure): mean "
        f"|error| {mean:.1f}%, max {worst:.1f}%.",
        f"- In-sample: point cases mean |error| {in_mean:.1f}%; {ranges_in} of "
        f"{k['range_cases']} ranges hold their estimate.",
        "- Fitted values at a bound (a missing mechanism): "
        + (", ".join(f"{n} ({s})" for n, s in bounds.items()) if bounds else "none") + ".",
        f"- Validation (never fitted): {val_in} of {len(result.validation)} within ±20% "
        "(ranges and bounds: inside).",
    ]


def markdown(result: SuiteResult, extra: list[str] = ()) -> str:
    """The whole report as markdown."""
    out = ["# Calibration", "", *summary(result), "", "## Fitted cases", "",
           *cases_table(result), "", "## Validation: published measurements never fitted", "",
           *validation_table(result), "", "## Parameters (one set for every case)", "",
           *params_table(result)]
    if extra:
        out += ["", *extra]
    return "\n".join(out) + "\n"


def as_json(result: SuiteResult) -> dict:
    """The result as plain data."""
    def case(c: fit.Case, e: float, err: float) -> dict:
        return {"name": c.name, "source": c.source, "inputs": c.inputs, "published": c.published,
                "unit": c.unit, "how": c.how, "estimate": e, "error_percent": err}

    mean, worst = result.loo_summary()
    return {
        "constraints": result.constraints,
        "leave_one_out": {"mean_abs_percent": mean, "max_abs_percent": worst,
                          "rows": [vars(r) for r in result.loo]},
        "parameters": {p.name: {"target": p.target, "fitted": result.full.values[p.name],
                                "assumed": result.assumed[p.name], "low": p.low, "high": p.high,
                                "at_bound": p.at_bound(result.full.values[p.name]),
                                "informed_by": result.informed_by(p.name),
                                "source": p.source} for p in result.params},
        "sensitivity": result.sensitivity,
        "loss": result.full.loss,
        "groups": {g.name: [case(c, result.full.estimates[c.name], result.full.errors[c.name])
                            for c in g.cases] for g in result.groups},
        "validation": [case(c, e, err) for c, e, err in result.validation],
    }
