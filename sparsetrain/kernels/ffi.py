"""The compiled float32 CPU kernels (XLA FFI), when they were built: block_sparse_matmul's and
causal attention's (used by sparsetrain.kernels.attention).

`pip install` compiles `csrc/{kernels,block_sparse,attention}.cc` into `_block_sparse_cpu<suffix>.so`
next to this module (setup.py; optional: if the compiler fails the package still installs and
setup prints why). Importing this module loads that library with ctypes and registers its four
handlers with XLA for the CPU platform. If the library is missing or fails to load or register,
`AVAILABLE` is False and `REASON` says why; `dispatch.py` then picks the pure-JAX kernels.

Operands (as in layout.py): x2 (T, in) float32, values (nc, k, bk, bn) float32, rows (nc, k)
int32, dy (T, out); every product touches stored blocks only (2 * T * nnz FLOPs per product).
Threads: $SPARSETRAIN_KERNEL_THREADS, else the CPUs this process may run on.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.machinery
import os

import jax
import jax.numpy as jnp
import numpy as np

FORWARD_TARGET = "sparsetrain_bsmm_forward"
BACKWARD_TARGET = "sparsetrain_bsmm_backward"
ATTENTION_FORWARD_TARGET = "sparsetrain_attention_forward"
ATTENTION_BACKWARD_TARGET = "sparsetrain_attention_backward"
LIBRARY_STEM = "_block_sparse_cpu"


def _threads() -> int:
    env = os.environ.get("SPARSETRAIN_KERNEL_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


THREADS = _threads()


def _find_library() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        hits = sorted(glob.glob(os.path.join(here, LIBRARY_STEM + suffix)))
        if hits:
            return hits[0]
    return None


def _load():
    """(library path, instruction set, None) or (None, None, reason)."""
    path = _find_library()
    if path is None:
        return None, None, (f"{LIBRARY_STEM}*.so not found next to {__name__} (not built at install; "
                            "reinstall with a C++17 compiler to build it)")
    try:
        lib = ctypes.cdll.LoadLibrary(path)
        lib.sparsetrain_bsmm_isa.restype = ctypes.c_char_p
        isa = lib.sparsetrain_bsmm_isa().decode()
        jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(lib.SparsetrainBsmmForward),
                                    platform="cpu")
        jax.ffi.register_ffi_target(BACKWARD_TARGET, jax.ffi.pycapsule(lib.SparsetrainBsmmBackward),
                                    platform="cpu")
        jax.ffi.register_ffi_target(ATTENTION_FORWARD_TARGET,
                                    jax.ffi.pycapsule(lib.SparsetrainAttentionForward), platform="cpu")
        jax.ffi.register_ffi_target(ATTENTION_BACKWARD_TARGET,
                                    jax.ffi.pycapsule(lib.SparsetrainAttentionBackward), platform="cpu")
    except Exception as err:  # noqa: BLE001 - any failure means: use the pure-JAX kernel
        return None, None, f"{path} failed to load or register: {err!r}"
    return path, isa, None


LIBRARY, ISA, REASON = _load()
AVAILABLE = LIBRARY is not None
DESCRIPTION = (f"compiled CPU kernel ({ISA}, {THREADS} threads) via XLA FFI" if AVAILABLE
               else f"unavailable: {REASON}")


def forward(x2, values, rows):
    """y (T, out) = x2 (T, in) @ W for float32 operands (rows int32)."""
    nc, _, _, bn = values.shape
    out = jax.ShapeDtypeStruct((x2.shape[0], nc * bn), jnp.float32)
    return jax.ffi.ffi_call(FORWARD_TARGET, out, vmap_method="sequential")(
        x2, values, rows.astype(jnp.int32), threads=np.int64(THREADS))


def backward(x2, values, rows, dy):
    """(dx (T, in), dvalues like values) of y = x2 @ W for cotangent dy (T, out)."""
    outs = (jax.ShapeDtypeStruct(x2.shape, jnp.float32), jax.ShapeDtypeStruct(values.shape, jnp.float32))
    return jax.ffi.ffi_call(BACKWARD_TARGET, outs, vmap_method="sequential")(
        x2, values, rows.astype(jnp.int32), dy.astype(jnp.float32), threads=np.int64(THREADS))


def attention_forward(q, k, v):
    """(o (B, T, H, D), lse (B, H, T)) of causal softmax attention, float32 q, k, v (B, T, H, D)."""
    b, t, h, _ = q.shape
    outs = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((b, h, t), jnp.float32))
    return jax.ffi.ffi_call(ATTENTION_FORWARD_TARGET, outs, vmap_method="sequential")(
        q, k, v, threads=np.int64(THREADS))


def attention_backward(q, k, v, o, lse, do):
    """(dq, dk, dv), each (B, T, H, D), of causal attention for cotangent do of o."""
    outs = tuple(jax.ShapeDtypeStruct(q.shape, jnp.float32) for _ in range(3))
    return jax.ffi.ffi_call(ATTENTION_BACKWARD_TARGET, outs, vmap_method="sequential")(
        q, k, v, o, lse, do, threads=np.int64(THREADS))
