"""Scoring trained runs: a checkpoint's val loss, bits per byte and samples (evaluate.py), and
several runs against a dense baseline (compare.py)."""
