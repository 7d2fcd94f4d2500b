"""The tuned glibc malloc setting: the Makefile uses the same string, `reexec_tuned` restarts a
script under it once, and it stops a worker thread's large allocations from page-faulting anew
on every reuse (the mechanism the CPU train step's speed depends on)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sparsetrain import allocator

ROOT = Path(__file__).resolve().parent.parent

# A worker thread mallocs, touches and frees 64 MiB five times; prints the minor page faults of
# the last four rounds (a buffer reused from the heap faults no page in again).
FAULTS = textwrap.dedent("""
    import ctypes, resource, threading
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    n = 64 << 20
    faults = []
    def work():
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            p = libc.malloc(n)
            ctypes.memset(p, 1, n)
            libc.free(p)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    t = threading.Thread(target=work); t.start(); t.join()
    print(sum(faults[1:]))
""")


def _run(code: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.strip()


def test_makefile_sets_the_tuned_string():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^MALLOC := GLIBC_TUNABLES=(\S+)$", make, re.M).group(1) == allocator.TUNED_GLIBC


@pytest.mark.skipif(sys.platform != "linux", reason="glibc tunables are Linux-only")
def test_worker_thread_reuses_heap_memory_only_when_tuned():
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    default = int(_run(FAULTS, base))
    tuned = int(_run(FAULTS, dict(base, GLIBC_TUNABLES=allocator.TUNED_GLIBC)))
    assert default > 2 * pages  # fresh pages every round: mmap'd and unmapped each time
    assert tuned < pages // 10  # the same heap pages every round


@pytest.mark.skipif(sys.platform != "linux", reason="glibc tunables are Linux-only")
def test_reexec_restarts_once_under_the_tuned_setting(tmp_path):
    script = tmp_path / "child.py"
    script.write_text("import os, sys\nsys.path.insert(0, %r)\n" % str(ROOT) + textwrap.dedent("""
        print("start", flush=True)
        from sparsetrain import allocator
        allocator.reexec_tuned({"EXTRA": "x"})
        print(os.environ.get("GLIBC_TUNABLES"), os.environ.get("EXTRA"), sys.argv[1:])
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    env.pop("SPARSETRAIN_ALLOCATOR_SET", None)
    out = subprocess.run([sys.executable, str(script), "--flag"], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split("\n")
    assert out[:3] == ["start", "start", f"{allocator.TUNED_GLIBC} x ['--flag']"]
