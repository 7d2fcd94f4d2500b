"""Calibration: named parameters fitted once, within physical ranges, to published
measurements (``fit``).
"""
