"""Which kernel a block-sparse matmul or causal-attention call traces: explicit, scoped state.

Three kernels implement the block-sparse product: `ffi` (the compiled float32 CPU library of
`ffi.py`), `pallas` (the Pallas Triton kernels of `pallas_block_sparse.py`, float32 and bfloat16 on
a GPU; forced off a GPU they run in Pallas interpret mode, slow, for tests) and `jax` (pure JAX:
every platform and dtype, and the reference the others are tested against). Causal attention has
`ffi`, cuDNN on a GPU (`attention.attention_kernel`) and `jax`. The choice is a context variable,
read when a call is traced:

    with use_kernel_backend("jax"):      # 'auto' (default), 'ffi', 'jax' or 'pallas'
        jax.jit(step).lower(...)         # calls traced here use the pure-JAX kernels

Its starting value comes from $SPARSETRAIN_KERNEL (default 'auto'). A function traced before keeps
the kernel it was traced with. Nothing here rewrites module state: the choice follows the
`with` block (and the thread or task that entered it).
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import jax
import jax.numpy as jnp

from sparsetrain.kernels import ffi

KERNEL_CHOICES = ("auto", "ffi", "jax", "pallas")
PALLAS_DESCRIPTION = "Pallas Triton kernels (sparsetrain.kernels.pallas_block_sparse)"


def _checked(name: str, what: str) -> str:
    if name not in KERNEL_CHOICES:
        raise ValueError(f"{what}: {name!r} is not allowed; expected one of {list(KERNEL_CHOICES)}")
    if name == "ffi" and not ffi.AVAILABLE:
        raise ValueError(f"{what}: 'ffi' is not allowed here: the compiled kernel is {ffi.DESCRIPTION}")
    return name


_CHOICE: contextvars.ContextVar[str] = contextvars.ContextVar(
    "sparsetrain_kernel", default=_checked(os.environ.get("SPARSETRAIN_KERNEL", "auto"), "SPARSETRAIN_KERNEL"))


@contextlib.contextmanager
def use_kernel_backend(name: str):
    """Trace block_sparse_matmul and causal_attention calls inside with kernel `name`.

    Args:
      name: 'auto', 'ffi', 'jax' or 'pallas'; 'ffi' raises ValueError when the compiled kernel is unavailable.
    """
    token = _CHOICE.set(_checked(name, "kernel backend"))
    try:
        yield
    finally:
        _CHOICE.reset(token)


def kernel_choice() -> str:
    """The choice in force here: 'auto', 'ffi', 'jax' or 'pallas'."""
    return _CHOICE.get()


def kernel_backend(dtype=jnp.float32) -> str:
    """'ffi' (compiled CPU kernel), 'pallas' (GPU kernels) or 'jax' (pure JAX): the kernel a call of
    `dtype` traced now runs.

    'auto' takes the compiled kernel for float32 on a single CPU device and the Pallas kernels on a
    single GPU. With several devices it keeps pure JAX: neither custom call has a partitioning
    rule, so under a mesh XLA would run the whole product replicated on every device (correct, but
    each device does all the work). use_kernel_backend("ffi"/"pallas") takes one anyway.
    """
    choice = _CHOICE.get()
    if choice in ("jax", "pallas"):
        return choice
    if choice == "auto" and jax.default_backend() == "gpu":
        return "pallas" if jax.device_count() == 1 else "jax"
    if not ffi.AVAILABLE:
        return "jax"
    if jnp.dtype(dtype) != jnp.float32 or jax.default_backend() != "cpu":
        return "jax"
    if choice == "auto" and jax.device_count() > 1:
        return "jax"
    return "ffi"


def cpu_float32_kernel() -> str:
    """The kernel of float32 calls on one CPU device under the current choice.

    Unlike `kernel_backend` it does not ask JAX for its backend, which would initialise XLA before
    a program can set its device count.
    """
    choice = _CHOICE.get()
    if choice in ("jax", "pallas"):
        return choice
    return "ffi" if ffi.AVAILABLE else "jax"


def kernel_backend_info() -> str:
    """One line naming the kernel of float32 calls on this backend, and why another is not used.

    On a GPU backend (or with 'pallas' chosen): the Pallas kernels, or why not; elsewhere the CPU
    kernel choice.
    """
    choice = _CHOICE.get()
    if choice == "pallas" or (choice == "auto" and jax.default_backend() == "gpu"):
        if kernel_backend(jnp.float32) == "pallas":
            mode = "Triton" if jax.default_backend() == "gpu" else "interpret mode, no GPU"
            return f"pallas: {PALLAS_DESCRIPTION}, {mode}"
        return f"jax: pure-JAX kernel ({PALLAS_DESCRIPTION} not used on {jax.device_count()} devices)"
    if cpu_float32_kernel() == "ffi":
        return f"ffi: {ffi.DESCRIPTION}"
    why = "disabled by SPARSETRAIN_KERNEL=jax or use_kernel_backend" if ffi.AVAILABLE else ffi.DESCRIPTION
    return f"jax: pure-JAX kernel (compiled kernel {why})"
