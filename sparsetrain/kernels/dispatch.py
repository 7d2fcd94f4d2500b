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

A mesh in force when a call is traced (`with jax.set_mesh(mesh):`) is the other input: the
compiled kernels then run on every device's shard (mesh.py), and `kernel_backend_info()` says so.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import jax
import jax.numpy as jnp

from sparsetrain.kernels import ffi
from sparsetrain.kernels.mesh import describe, mesh_axes

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

    'auto' takes the compiled kernel for float32 on CPU devices and the Pallas kernels on a single
    GPU. With several CPU devices it takes the compiled kernel only under a mesh in force
    (`jax.set_mesh(mesh)`): each call then runs on every device's shard inside a shard_map
    (mesh.py). Several devices and no mesh in force: pure JAX, since XLA cannot split a custom call
    over arrays placed on several devices (it would run it whole on each). Several GPUs: pure JAX
    (the Pallas kernels are not yet run under a mesh by 'auto'). use_kernel_backend("ffi"/"pallas")
    takes one anyway.
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
    if choice == "auto" and jax.device_count() > 1 and not mesh_axes():
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
    """One line naming the kernel of float32 calls traced now, and why another is not used; it
    names what `kernel_backend(float32)` returns (and so what the compiled program holds).

    On a GPU backend (or with 'pallas' chosen): the Pallas kernels, or why not; elsewhere the CPU
    kernel, under a mesh in force 'ffi: ... on each of 8 devices (shard_map over data x fsdp x
    tensor)'.
    """
    choice = _CHOICE.get()
    if choice == "pallas" or (choice == "auto" and jax.default_backend() == "gpu"):
        if kernel_backend(jnp.float32) == "pallas":
            mode = "Triton" if jax.default_backend() == "gpu" else "interpret mode, no GPU"
            return f"pallas: {PALLAS_DESCRIPTION}, {mode}"
        return f"jax: pure-JAX kernel ({PALLAS_DESCRIPTION} not used on {jax.device_count()} devices)"
    if kernel_backend(jnp.float32) == "ffi":
        axes = mesh_axes()
        return f"ffi: {ffi.DESCRIPTION}" + (f" {describe(axes)}" if axes else "")
    if choice == "jax":
        why = "disabled by SPARSETRAIN_KERNEL=jax or use_kernel_backend"
    elif not ffi.AVAILABLE:
        why = ffi.DESCRIPTION
    elif jax.default_backend() != "cpu":
        why = f"is a CPU kernel and the backend is {jax.default_backend()}"
    else:
        why = (f"not used on {jax.device_count()} devices with no mesh in force; "
               "jax.set_mesh(mesh) runs it on each device's shard")
    return f"jax: pure-JAX kernel (compiled kernel {why})"
