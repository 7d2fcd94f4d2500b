"""The glibc malloc setting the CPU train step runs fastest with, and a way to run under it.

XLA:CPU allocates each step's buffers with malloc (for small-30m a ~590 MB temporary buffer per
step, and the outputs of every kernel call). With glibc's defaults those come from `mmap` and go
back to the OS when freed, so every step page-faults all of them in again. `TUNED_GLIBC`:

- `mmap_max=0`, a huge `trim_threshold` and a 256 MiB `top_pad`: freed memory stays in the heap;
- `arena_max=1`: every thread allocates from the main heap. A large allocation from a worker
  thread's own arena is served by `mmap` whatever `mmap_max` says (glibc grows a secondary arena
  by mapping a new heap), and XLA allocates the step's temporary buffer from a worker thread:
  ~145,000 minor page faults per small-30m step without it, none with it.

GLIBC_TUNABLES is read when a process starts, so `reexec_tuned()` restarts the running script
with it (benchmarks call it before importing jax); `make demo` and `make bench` set it the same
way. Other allocators (an `LD_PRELOAD`ed tcmalloc or jemalloc) are left alone.
"""

from __future__ import annotations

import os
import sys

TUNED_GLIBC = ("glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736:"
               "glibc.malloc.top_pad=268435456:glibc.malloc.arena_max=1")
_MARKER = "SPARSETRAIN_ALLOCATOR_SET"


def describe() -> str:
    """The allocator setting of this process, e.g. 'GLIBC_TUNABLES=...' (for benchmark headers)."""
    parts = [f"{name}={os.environ[name]}" for name in ("LD_PRELOAD", "GLIBC_TUNABLES")
             if os.environ.get(name)]
    return " ".join(parts) or "glibc malloc, default settings"


def reexec_tuned(extra_env: dict[str, str] | None = None) -> None:
    """Restart this script (same interpreter and arguments) with GLIBC_TUNABLES=TUNED_GLIBC and
    `extra_env`, once. No-op on a platform other than Linux, when the restart already happened,
    when GLIBC_TUNABLES already is TUNED_GLIBC, or under an LD_PRELOADed allocator."""
    if (sys.platform != "linux" or os.environ.get(_MARKER) or os.environ.get("LD_PRELOAD")
            or os.environ.get("GLIBC_TUNABLES") == TUNED_GLIBC):
        return
    env = dict(os.environ, **(extra_env or {}), GLIBC_TUNABLES=TUNED_GLIBC)
    env[_MARKER] = "1"
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
