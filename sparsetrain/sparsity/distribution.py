"""How a global density is spread over the linears of a model by ERK (the uniform spread needs no
function: every kind gets the density; see resolve.py).

ERK (Erdos-Renyi-Kernel; Mocanu et al. 2018, Evci et al. 2020 "RigL") gives a weight of shape
(n_in, n_out) a density proportional to (n_in + n_out) / (n_in * n_out): small, square weights
keep more of their blocks than wide ones. The scale is chosen so that the parameter-weighted mean
density equals the requested global density; kinds that would exceed 1 are made dense and the
scale is solved again for the rest. All layers of one kind share a shape (they are stacked), so
the distribution is per linear kind.
"""

from __future__ import annotations


def erk_densities(shapes: dict[str, tuple[int, int]], density: float) -> dict[str, float]:
    """ERK densities per linear kind whose parameter-weighted mean is exactly `density`.

    Args:
      shapes: kind -> (n_in, n_out) of one weight of that kind.
      density: global fraction of weights to keep, in (0, 1].

    Returns:
      kind -> density in (0, 1] (before rounding to whole blocks per column).
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density: {density} is not allowed; expected 0 < density <= 1")
    sizes = {k: n_in * n_out for k, (n_in, n_out) in shapes.items()}
    raw = {k: (n_in + n_out) / (n_in * n_out) for k, (n_in, n_out) in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[k] for k in dense)
        free = [k for k in shapes if k not in dense]
        scale = budget / sum(raw[k] * sizes[k] for k in free)
        over = [k for k in free if scale * raw[k] > 1.0]
        if not over:
            return {k: 1.0 if k in dense else scale * raw[k] for k in shapes}
        dense.update(over)
