"""The glue between sparsetrain and rdu_xla_backend: lowering sparsetrain programs (programs.py)
and running training steps on the emulated RDU (step.py)."""
