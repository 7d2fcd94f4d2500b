"""Kernels: the compiled CPU library (ffi.py, csrc/), the pure-JAX block-sparse product
(block_sparse.py), causal attention (attention.py) and the scoped choice between them (dispatch.py)."""
