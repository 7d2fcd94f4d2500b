"""The compiled float32 CPU kernels (XLA FFI), when they were built: block_sparse_matmul's,
causal attention's (used by sparsetrain.kernels.attention), LayerNorm's and bias-GELU's (used by
sparsetrain.kernels.norm_gelu).

`pip install` compiles every `csrc/*.cc` once per instruction set into
`_block_sparse_cpu_{avx512,avx2,generic}<suffix>.so` next to this module (setup.py; optional: an
instruction set the compiler lacks is skipped, and if every compile fails the package still
installs and setup prints why). Importing this module picks the library: the widest one built
that this CPU runs (avx512 > avx2 > generic, the CPU asked through the generic library's
`__builtin_cpu_supports`), or the one $SPARSETRAIN_KERNEL_ISA names (avx2, avx512 or generic;
for tests and benchmarks: ConfigError if this CPU lacks it or it was not built). It loads that
library with ctypes and registers its handlers with XLA for the CPU platform. If no library
loads or registers, `AVAILABLE` is False and `REASON` says why; `dispatch.py` then picks the
pure-JAX kernels. `ISA` names the path in use ("avx512", "avx2+fma", "generic (sse2)").

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

from sparsetrain.errors import ConfigError

FORWARD_TARGET = "sparsetrain_bsmm_forward"
BACKWARD_TARGET = "sparsetrain_bsmm_backward"
ATTENTION_FORWARD_TARGET = "sparsetrain_attention_forward"
ATTENTION_BACKWARD_TARGET = "sparsetrain_attention_backward"
ATTENTION_PACKED_FORWARD_TARGET = "sparsetrain_attention_packed_forward"
ATTENTION_PACKED_BACKWARD_TARGET = "sparsetrain_attention_packed_backward"
# LayerNorm and bias-GELU (csrc/elementwise.cc, used by sparsetrain.kernels.norm_gelu):
# target name -> handler symbol.
ELEMENTWISE_TARGETS = {
    "sparsetrain_layer_norm_forward": "SparsetrainLayerNormForward",
    "sparsetrain_add_layer_norm_forward": "SparsetrainAddLayerNormForward",
    "sparsetrain_layer_norm_backward": "SparsetrainLayerNormBackward",
    "sparsetrain_add_layer_norm_backward": "SparsetrainAddLayerNormBackward",
    "sparsetrain_bias_gelu_forward": "SparsetrainBiasGeluForward",
    "sparsetrain_bias_gelu_backward": "SparsetrainBiasGeluBackward",
}
LIBRARY_STEM = "_block_sparse_cpu"
ISAS = ("avx512", "avx2", "generic")  # the libraries setup.py builds, widest first
ISA_ENV = "SPARSETRAIN_KERNEL_ISA"


def _threads() -> int:
    env = os.environ.get("SPARSETRAIN_KERNEL_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


THREADS = _threads()


def library_path(isa: str) -> str | None:
    """The built library of instruction set `isa` (one of ISAS), or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        hits = sorted(glob.glob(os.path.join(here, f"{LIBRARY_STEM}_{isa}{suffix}")))
        if hits:
            return hits[0]
    return None


def cpu_isas() -> tuple[str, ...]:
    """The instruction sets of ISAS this CPU runs, widest first (asked of the generic library,
    which loads on any CPU); ('generic',) when that library is missing."""
    path = library_path("generic")
    if path is None:
        return ("generic",)
    probe = ctypes.cdll.LoadLibrary(path).sparsetrain_cpu_supports
    probe.argtypes, probe.restype = [ctypes.c_char_p], ctypes.c_int
    return tuple(isa for isa in ISAS if probe(isa.encode()))


def _choose() -> tuple[str | None, str | None]:
    """(instruction set to load, None) or (None, reason). ConfigError for an impossible force."""
    runs = cpu_isas()
    forced = os.environ.get(ISA_ENV)
    if forced:
        if forced not in ISAS:
            raise ConfigError(f"{ISA_ENV}={forced!r}: expected one of {list(ISAS)}")
        if forced not in runs:
            raise ConfigError(f"{ISA_ENV}={forced}: this CPU lacks it (it runs {', '.join(runs)})")
        if library_path(forced) is None:
            raise ConfigError(f"{ISA_ENV}={forced}: {LIBRARY_STEM}_{forced} was not built "
                              "(its compiler flags failed at install; see setup.py's warnings)")
        return forced, None
    for isa in runs:
        if library_path(isa) is not None:
            return isa, None
    return None, (f"no {LIBRARY_STEM}_<isa>*.so next to {__name__} (not built at install; "
                  "reinstall with a C++17 compiler to build it)")


def _load():
    """(library path, instruction set, None) or (None, None, reason)."""
    choice, reason = _choose()
    if choice is None:
        return None, None, reason
    path = library_path(choice)
    try:
        lib = ctypes.cdll.LoadLibrary(path)
        lib.sparsetrain_bsmm_isa.restype = ctypes.c_char_p
        isa = lib.sparsetrain_bsmm_isa().decode()
        for target, symbol in ((FORWARD_TARGET, lib.SparsetrainBsmmForward),
                               (BACKWARD_TARGET, lib.SparsetrainBsmmBackward),
                               (ATTENTION_FORWARD_TARGET, lib.SparsetrainAttentionForward),
                               (ATTENTION_BACKWARD_TARGET, lib.SparsetrainAttentionBackward),
                               (ATTENTION_PACKED_FORWARD_TARGET, lib.SparsetrainAttentionPackedForward),
                               (ATTENTION_PACKED_BACKWARD_TARGET, lib.SparsetrainAttentionPackedBackward),
                               *((t, getattr(lib, sym)) for t, sym in ELEMENTWISE_TARGETS.items())):
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
    except Exception as err:  # noqa: BLE001 - any failure means: use the pure-JAX kernel
        return None, None, f"{path} failed to load or register: {err!r}"
    return path, isa, None


LIBRARY, ISA, REASON = _load()
AVAILABLE = LIBRARY is not None
DESCRIPTION = (f"compiled CPU kernel ({ISA}, {THREADS} threads"
               f"{', forced by ' + ISA_ENV if os.environ.get(ISA_ENV) else ''}) via XLA FFI"
               if AVAILABLE else f"unavailable: {REASON}")


def call(target: str, outs, *args, **attrs):
    """Run the registered handler `target` on float32 args with the `threads` attribute every
    handler takes (plus `attrs`); `outs`: the result's ShapeDtypeStruct(s)."""
    return jax.ffi.ffi_call(target, outs, vmap_method="sequential")(
        *args, threads=np.int64(THREADS), **attrs)


def forward(x2, values, rows):
    """y (T, out) = x2 (T, in) @ W for float32 operands (rows int32)."""
    nc, _, _, bn = values.shape
    out = jax.ShapeDtypeStruct((x2.shape[0], nc * bn), jnp.float32)
    return call(FORWARD_TARGET, out, x2, values, rows.astype(jnp.int32))


def backward(x2, values, rows, dy):
    """(dx (T, in), dvalues like values) of y = x2 @ W for cotangent dy (T, out)."""
    outs = (jax.ShapeDtypeStruct(x2.shape, jnp.float32), jax.ShapeDtypeStruct(values.shape, jnp.float32))
    return call(BACKWARD_TARGET, outs, x2, values, rows.astype(jnp.int32), dy.astype(jnp.float32))


def attention_forward(q, k, v):
    """(o (B, T, H, D), lse (B, H, T)) of causal softmax attention, float32 q, k, v (B, T, H, D)."""
    b, t, h, _ = q.shape
    outs = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((b, h, t), jnp.float32))
    return call(ATTENTION_FORWARD_TARGET, outs, q, k, v)


def attention_backward(q, k, v, o, lse, do):
    """(dq, dk, dv), each (B, T, H, D), of causal attention for cotangent do of o."""
    outs = tuple(jax.ShapeDtypeStruct(q.shape, jnp.float32) for _ in range(3))
    return call(ATTENTION_BACKWARD_TARGET, outs, q, k, v, o, lse, do)


def attention_packed_forward(qkv):
    """(o (B, T, H, D), lse (B, H, T)) of causal attention reading q, k, v in place from the
    float32 qkv projection output (B, T, 3, H, D) (no split copies)."""
    b, t, _, h, d = qkv.shape
    outs = (jax.ShapeDtypeStruct((b, t, h, d), jnp.float32), jax.ShapeDtypeStruct((b, h, t), jnp.float32))
    return call(ATTENTION_PACKED_FORWARD_TARGET, outs, qkv)


def attention_packed_backward(qkv, o, lse, do):
    """dqkv (B, T, 3, H, D), written packed, of causal attention for cotangent do (B, T, H, D)."""
    out = jax.ShapeDtypeStruct(qkv.shape, jnp.float32)
    return call(ATTENTION_PACKED_BACKWARD_TARGET, out, qkv, o, lse, do)
