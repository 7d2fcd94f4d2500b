"""Calibration machinery: named parameters fitted once, jointly, to published measurements.

A ``Case`` is one published measurement: its inputs (text), the published value (a number, or a
range ``(low, high)`` for results published as ranges or bounds) and ``estimate(chips)``: the
emulator's value for the same inputs on chips carrying candidate parameter values. The error of a
case is the log of estimate / published (a range: 0 inside it, else the log distance to the
nearer end). ``fit`` minimises the sum of squared log errors over ALL cases at once with one set
of parameter values: no per-case constants.

The estimates run the emulator (Python, not traceable by JAX, so ``jax.scipy.optimize`` does
not apply), so the search is derivative-free: Nelder-Mead (written here with numpy) on each
parameter's transformed value (the logit of its log-position between its bounds), from several
starts; the best result wins. Every parameter is bounded to its physically plausible range
(``ranges.RANGES``, with the public source of the bounds); a value that ends within
``BOUND_MARGIN`` of a bound is reported (``FitResult.at_bound``) as a sign of a missing mechanism.
An optional weak prior (squared log distance to the assumed values, in units of each range's log
width) keeps parameters the cases do not constrain near their assumed values.

Units: whatever each case reports (tokens/s, a ratio, seconds); parameters in their fields' units.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rdu_xla_backend.hardware import ChipSpec
from rdu_xla_backend.ranges import parameter_range

# A fitted value within this fraction of its range's log width from a bound is 'at the bound'.
BOUND_MARGIN = 0.02


@dataclass(frozen=True)
class Param:
    """One fitted parameter: a field of ``ModelParameters`` ('rdu') or ``GpuParameters``
    ('gpu'), searched between ``low`` and ``high`` (its plausible range, cited in ``source``)."""

    name: str  # field name
    target: str  # 'rdu' or 'gpu'
    low: float
    high: float
    source: str = ""
    assumed: float | None = None  # the value before any fit (the start and the prior)

    @classmethod
    def of(cls, target: str, name: str) -> "Param":
        """The parameter with its range, source and assumed value from ``ranges.RANGES``."""
        r = parameter_range(target, name)
        return cls(name, target, r.low, r.high, r.source, r.assumed)

    def position(self, value: float) -> float:
        """Where ``value`` lies between the bounds: 0 at ``low``, 1 at ``high`` (log scale)."""
        lo, hi = math.log(self.low), math.log(self.high)
        return (math.log(value) - lo) / (hi - lo)

    def at_bound(self, value: float, margin: float = BOUND_MARGIN) -> str:
        """'low' or 'high' when ``value`` is within ``margin`` of that bound, else ''."""
        pos = self.position(value)
        return "low" if pos <= margin else "high" if pos >= 1 - margin else ""

    def to_unit(self, value: float) -> float:
        """Value -> unbounded search coordinate (logit of the log-position between bounds)."""
        lo, hi = math.log(self.low), math.log(self.high)
        p = (math.log(value) - lo) / (hi - lo)
        p = min(max(p, 1e-9), 1 - 1e-9)
        return math.log(p / (1 - p))

    def from_unit(self, x: float) -> float:
        lo, hi = math.log(self.low), math.log(self.high)
        return math.exp(lo + (hi - lo) / (1 + math.exp(-x)))


@dataclass
class Case:
    """One published measurement and how the emulator estimates it."""

    name: str
    source: str
    inputs: str
    published: float | tuple[float, float]
    unit: str
    estimate: Callable[[dict], float]  # chips (name -> chip with candidate params) -> value
    how: str = ""  # how the representative point was chosen

    @property
    def is_point(self) -> bool:
        """A published number (not a range or a bound)."""
        return not isinstance(self.published, tuple)

    def error(self, value: float) -> float:
        """log(estimate / published); for a range 0 inside, else log distance to the nearer end."""
        if value <= 0 or not math.isfinite(value):
            return 10.0
        if isinstance(self.published, tuple):
            lo, hi = self.published
            if lo <= value <= hi:
                return 0.0
            return math.log(value / (lo if value < lo else hi))
        return math.log(value / self.published)


def error_percent(case: Case, value: float) -> float:
    """Signed error in percent (range: distance to the nearer end, 0 inside)."""
    return 100.0 * (math.exp(case.error(value)) - 1.0)


def apply(chips: dict, params: Sequence[Param], values: dict[str, float]) -> dict:
    """Copies of ``chips`` with the fitted values set: RDU chips get the 'rdu' values in their
    ``params`` (``ModelParameters``), GPU chips the 'gpu' values (``GpuParameters``)."""
    out = {}
    for key, chip in chips.items():
        target = "rdu" if isinstance(chip, ChipSpec) else "gpu"
        fields = {p.name: values[p.name] for p in params if p.target == target}
        out[key] = dataclasses.replace(chip, params=dataclasses.replace(chip.params, **fields))
    return out


def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, step: float = 1.0,
                iters: int = 400, tol: float = 1e-7) -> tuple[np.ndarray, float]:
    """Minimise ``f`` from ``x0`` (standard reflection/expansion/contraction/shrink)."""
    n = x0.size
    simplex = np.vstack([x0] + [x0 + step * np.eye(n)[i] for i in range(n)])
    values = np.array([f(x) for x in simplex])
    for _ in range(iters):
        order = np.argsort(values)
        simplex, values = simplex[order], values[order]
        if values[-1] - values[0] < tol:
            break
        centroid = simplex[:-1].mean(axis=0)
        xr = centroid + (centroid - simplex[-1])
        fr = f(xr)
        if fr < values[0]:
            xe = centroid + 2 * (centroid - simplex[-1])
            fe = f(xe)
            simplex[-1], values[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(xc)
            if fc < values[-1]:
                simplex[-1], values[-1] = xc, fc
            else:
                simplex[1:] = simplex[0] + 0.5 * (simplex[1:] - simplex[0])
                values[1:] = [f(x) for x in simplex[1:]]
    best = int(np.argmin(values))
    return simplex[best], float(values[best])


@dataclass
class FitResult:
    """Fitted values, the loss, and every case's estimate and error with those values."""

    values: dict[str, float]
    loss: float
    estimates: dict[str, float]
    errors: dict[str, float]  # percent
    evaluations: int
    at_bound: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> 'low'/'high'


def evaluate(cases: Sequence[Case], chips: dict, params: Sequence[Param],
             values: dict[str, float]) -> dict[str, float]:
    """Every case's estimate with ``values`` applied."""
    fitted = apply(chips, params, values)
    return {c.name: float(c.estimate(fitted)) for c in cases}


def fit(cases: Sequence[Case], chips: dict, params: Sequence[Param],
        starts: Sequence[dict[str, float]], iters: int = 300,
        prior: dict[str, float] | None = None, prior_weight: float = 0.0) -> FitResult:
    """Fit ``params`` to all ``cases`` together (sum of squared log errors), best of ``starts``.

    Args:
        cases: the published measurements.
        chips: name -> chip (RDU ``ChipSpec`` or ``GpuSpec``) the estimates use.
        params: what is fitted.
        starts: initial values (every param named in each).
        iters: Nelder-Mead iterations per start.
        prior, prior_weight: optional assumed values and the weight of
            sum((log(value / assumed) / log(high / low))^2) added to the loss: where the cases
            do not pin a parameter down, it stays near its assumed value instead of drifting.
    """
    by_name = {p.name: p for p in params}
    count = [0]

    def loss_of(x: np.ndarray) -> float:
        count[0] += 1
        values = {p.name: p.from_unit(float(v)) for p, v in zip(params, x)}
        est = evaluate(cases, chips, params, values)
        loss = sum(c.error(est[c.name]) ** 2 for c in cases)
        if prior and prior_weight:
            loss += prior_weight * sum(
                (math.log(values[k] / v) / math.log(by_name[k].high / by_name[k].low)) ** 2
                for k, v in prior.items() if k in by_name)
        return float(loss)

    best_x, best_f = None, math.inf
    for start in starts:
        x0 = np.array([p.to_unit(start[p.name]) for p in params])
        x, fx = nelder_mead(loss_of, x0, iters=iters)
        if fx < best_f:
            best_x, best_f = x, fx
    values = {p.name: p.from_unit(float(v)) for p, v in zip(params, best_x)}
    est = evaluate(cases, chips, params, values)
    errors = {c.name: error_percent(c, est[c.name]) for c in cases}
    bounds = {p.name: p.at_bound(values[p.name]) for p in params if p.at_bound(values[p.name])}
    return FitResult(values, best_f, est, errors, count[0], bounds)
