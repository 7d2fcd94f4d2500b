"""The calibration suite: one bounded fit over every group of cases, leave-one-out over the point
cases, and the never-fitted validation set.

A ``Group`` is a list of published cases and the parameters it brings (e.g. the SN40L/[KL] cases
of ``cases`` with the RDU and DGX parameters; a GPU training table with its own). ``run`` fits
the union of the groups' parameters to the union of their cases at once (``fit.fit``: bounded
to each parameter's plausible range, weak prior toward the assumed values), then:

- leave-one-out: for every point case i (a published number, not a range), refit without case i
  (from the assumed values, as the full fit: starting from the full fit would let case i in
  through an unconverged search) and predict case i. Its mean and max absolute error are the
  fidelity figure; the in-sample errors are not.
- validation: every validation case estimated with the full fit's values, never fitted.
- bounds: every fitted value within ``fit.BOUND_MARGIN`` of a bound is reported as a missing
  mechanism; ``constraints`` counts the point cases that depend on parameters against the
  parameters fitted.

Units: errors in percent; parameters in their fields' units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rdu_xla_backend.calibrate import fit
from rdu_xla_backend.ranges import parameter_range

PRIOR_WEIGHT = 0.02  # a parameter a full range-width from its assumed value costs ~ a case 15% off


@dataclass
class Group:
    """Published cases and the parameters they inform."""

    name: str
    cases: list[fit.Case]
    params: list[fit.Param]


@dataclass
class LooRow:
    """One point case predicted by a fit that did not see it."""

    name: str
    published: float
    in_sample: float  # estimate with every case fitted
    predicted: float  # estimate with this case left out
    error_percent: float  # of ``predicted``
    at_bound: dict[str, str] = field(default_factory=dict)  # of the leave-one-out fit


@dataclass
class SuiteResult:
    """Everything ``run`` measured."""

    groups: list[Group]
    params: list[fit.Param]
    assumed: dict[str, float]
    full: fit.FitResult
    loo: list[LooRow]
    validation: list[tuple[fit.Case, float, float]]  # (case, estimate, error %)
    constraints: dict[str, int]
    # parameter -> case -> elasticity d log(estimate) / d log(parameter) at the fit (nonzero)
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)

    def informed_by(self, name: str, threshold: float = 0.05) -> list[str]:
        """Cases whose estimate moves by at least ``threshold`` x a relative change of ``name``
        (ranges marked, since they constrain only at their edges)."""
        kinds = {c.name: c.is_point for c in self.cases}
        return [c if kinds[c] else f"{c} (range)" for c, e in self.sensitivity.get(name, {}).items()
                if abs(e) >= threshold]

    @property
    def cases(self) -> list[fit.Case]:
        return [c for g in self.groups for c in g.cases]

    def loo_summary(self) -> tuple[float, float]:
        """(mean, max) absolute leave-one-out error in percent over the point cases."""
        errs = [abs(r.error_percent) for r in self.loo]
        return (sum(errs) / len(errs), max(errs)) if errs else (0.0, 0.0)


def assumed_values(params: Sequence[fit.Param]) -> dict[str, float]:
    """The value of every parameter before any fit: ``Param.assumed``, else ``ranges.RANGES``'
    (the dataclass defaults carry the fitted values instead)."""
    return {p.name: float(p.assumed if p.assumed is not None
                          else parameter_range(p.target, p.name).assumed) for p in params}


def union_params(groups: Sequence[Group]) -> list[fit.Param]:
    """Every group's parameters once (first definition wins), in order."""
    seen: dict[str, fit.Param] = {}
    for g in groups:
        for p in g.params:
            seen.setdefault(p.name, p)
    return list(seen.values())


def depends_on_params(case: fit.Case, chips: dict, params: Sequence[fit.Param],
                      base: dict[str, float], factor: float = 1.3) -> bool:
    """Whether ``case``'s estimate moves when every parameter moves by ``factor`` in turn."""
    ref = case.estimate(fit.apply(chips, params, base))
    for p in params:
        moved = dict(base, **{p.name: min(p.high, max(p.low, base[p.name] * factor))})
        if moved[p.name] == base[p.name]:
            moved[p.name] = max(p.low, base[p.name] / factor)
        if not math.isclose(case.estimate(fit.apply(chips, params, moved)), ref, rel_tol=1e-9):
            return True
    return False


def sensitivity(cases: Sequence[fit.Case], chips: dict, params: Sequence[fit.Param],
                values: dict[str, float], step: float = 0.05) -> dict[str, dict[str, float]]:
    """Elasticity of every case's estimate to every parameter at ``values`` (central difference
    in log space, each parameter moved by ``step`` relatively, kept inside its range)."""
    out: dict[str, dict[str, float]] = {}
    for p in params:
        up = dict(values, **{p.name: min(p.high, values[p.name] * (1 + step))})
        down = dict(values, **{p.name: max(p.low, values[p.name] / (1 + step))})
        span = math.log(up[p.name] / down[p.name])
        hi, lo = fit.evaluate(cases, chips, params, up), fit.evaluate(cases, chips, params, down)
        out[p.name] = {c.name: math.log(hi[c.name] / lo[c.name]) / span for c in cases
                       if hi[c.name] > 0 and lo[c.name] > 0 and span > 0
                       and not math.isclose(hi[c.name], lo[c.name], rel_tol=1e-9)}
    return out


def _starts(params: Sequence[fit.Param], assumed: dict[str, float]) -> list[dict[str, float]]:
    """The assumed values, and every parameter at its range's geometric middle."""
    mid = {p.name: math.sqrt(p.low * p.high) for p in params}
    return [assumed, mid]


def run(groups: Sequence[Group], chips: dict, validation: Sequence[fit.Case] = (),
        iters: int = 300, loo_iters: int = 200, prior_weight: float = PRIOR_WEIGHT,
        log: Callable[[str], None] = print) -> SuiteResult:
    """Fit, leave-one-out and validation (see the module docstring).

    Args:
        groups: the case groups with their parameters.
        chips: name -> chip every estimate may use (RDU ``ChipSpec`` / ``GpuSpec``).
        validation: cases never fitted.
        iters, loo_iters: Nelder-Mead iterations per start of the full fit / of each refit.
        prior_weight: weight of the prior toward the assumed values (``fit.fit``).
    """
    params = union_params(groups)
    assumed = assumed_values(params)
    cases = [c for g in groups for c in g.cases]
    full = fit.fit(cases, chips, params, _starts(params, assumed), iters=iters, prior=assumed,
                   prior_weight=prior_weight)
    log(f"fitted {len(params)} parameters to {len(cases)} cases ({full.evaluations} "
        f"evaluations), loss {full.loss:.4g}")
    points = [c for c in cases if c.is_point]
    dependent = [c for c in points if depends_on_params(c, chips, params, full.values)]
    loo = []
    for c in points:
        rest = [x for x in cases if x is not c]
        r = fit.fit(rest, chips, params, [assumed], iters=loo_iters, prior=assumed,
                    prior_weight=prior_weight)
        pred = c.estimate(fit.apply(chips, params, r.values))
        loo.append(LooRow(c.name, float(c.published), full.estimates[c.name], pred,
                          fit.error_percent(c, pred), r.at_bound))
        log(f"leave-one-out {c.name}: predicted {pred:.4g} vs published {c.published:.4g} "
            f"({loo[-1].error_percent:+.1f}%)")
    fitted = fit.apply(chips, params, full.values)
    val = []
    for c in validation:
        e = float(c.estimate(fitted))
        val.append((c, e, fit.error_percent(c, e)))
    constraints = {"point_cases": len(points), "point_cases_on_parameters": len(dependent),
                   "range_cases": len(cases) - len(points), "parameters": len(params)}
    elastic = sensitivity(cases, chips, params, full.values)
    names = {c.name for c in points}
    constraints["parameters_a_point_case_informs"] = sum(
        any(n in names and abs(e) >= 0.05 for n, e in elastic[p.name].items()) for p in params)
    return SuiteResult(list(groups), params, assumed, full, loo, val, constraints, elastic)


def chips_with(result: SuiteResult, chips: dict) -> dict:
    """``chips`` carrying the fitted values."""
    return fit.apply(chips, result.params, result.full.values)

