"""Calibration: named parameters fitted once, within physical ranges, to published
measurements (``fit``); ``megatron``: Megatron-LM's measured GPU training table as cases.
"""
