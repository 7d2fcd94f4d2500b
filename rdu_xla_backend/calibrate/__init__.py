"""Calibration: named parameters fitted once, within physically plausible ranges with public
sources (``ranges.RANGES``), to published measurements.

- ``fit``: cases, bounded parameters, the Nelder-Mead fit, bound reporting.
- ``programs``: the programs the cases time (lowered once through a builder passed in), systems.
- ``cases``: the published measurements that are fitted, as data, and their estimates.
- ``validation``: published measurements that are never fitted.
- ``suite``: groups of cases, one joint fit, leave-one-out over the point cases, validation.
- ``tables``: markdown and JSON of a suite's result.
- ``megatron``: Megatron-LM's measured GPU training table (A100) as a group of cases.
"""
