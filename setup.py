"""Builds the optional compiled CPU kernels `sparsetrain/kernels/_block_sparse_cpu_<isa>` (XLA FFI).

Package metadata lives in pyproject.toml; this file only adds the C++ extensions. Every
`sparsetrain/kernels/csrc/*.cc` is compiled once per instruction set into its own library:

  _block_sparse_cpu_avx512   -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma (16-wide)
  _block_sparse_cpu_avx2     -mavx2 -mfma                                          (8-wide)
  _block_sparse_cpu_generic  the compiler's baseline target (x86-64: SSE2; aarch64: NEON)

`sparsetrain.kernels.ffi` loads the best one this CPU runs when it is imported (never
-march=native: one build runs on AVX2 and AVX-512 machines alike). One library per instruction
set, not one library with per-ISA objects: inline functions and templates (ours and the standard
library's) compiled with AVX-512 flags would otherwise be merged by the linker with their AVX2
copies, and the AVX2 path could end up executing AVX-512 instructions.

Optional: an instruction set whose flags the compiler rejects is skipped; without a C++17 compiler
or the XLA FFI headers (from jaxlib, a build requirement), or if a compile fails, the package still
installs, prints why, and block_sparse_matmul runs its pure-JAX kernel
(`sparsetrain.kernels.dispatch.kernel_backend_info()` says which kernel runs).

Environment:
  SPARSETRAIN_BUILD_KERNEL=0        skip the compiled kernels
  SPARSETRAIN_KERNEL_CFLAGS="..."   extra flags for every library, after the ISA's own (an expert
                                    override, e.g. -mtune=znver3; -march=native here makes the
                                    libraries run only on CPUs like this one)
"""

from __future__ import annotations

import glob
import os
import shlex
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = "sparsetrain/kernels/csrc"
BASE_FLAGS = ["-std=c++17", "-O3", "-ffp-contract=fast", "-fPIC", "-pthread", "-w"]
# Instruction set -> target flags; ffi.py checks the CPU for the same features before loading.
ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma"],
    "avx2": ["-mavx2", "-mfma"],
    "generic": [],
}


def _ffi_include_dir() -> str | None:
    """jaxlib's XLA FFI headers (xla/ffi/api/ffi.h), or None."""
    try:
        import jax.ffi

        path = jax.ffi.include_dir()
    except Exception:  # noqa: BLE001 - jax missing or too old: try jaxlib directly
        try:
            import jaxlib

            path = os.path.join(os.path.dirname(jaxlib.__file__), "include")
        except Exception:  # noqa: BLE001
            return None
    return path if os.path.exists(os.path.join(path, "xla", "ffi", "api", "ffi.h")) else None


class OptionalBuildExt(build_ext):
    """build_ext whose failures only skip a compiled library, with the reason printed."""

    def run(self):
        if os.environ.get("SPARSETRAIN_BUILD_KERNEL", "1") == "0":
            self._skip("all", "SPARSETRAIN_BUILD_KERNEL=0")
            return
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - e.g. no compiler at all
            self._skip("all", repr(err))

    def build_extension(self, ext):
        isa = ext.name.rsplit("_", 1)[1]
        include = _ffi_include_dir()
        if include is None:
            self._skip(isa, "XLA FFI headers not found (jax/jaxlib not importable at build time)")
            return
        if not self._compiles(ISA_FLAGS[isa]):
            self._skip(isa, f"the compiler rejects {' '.join(ISA_FLAGS[isa])}")
            return
        extra = shlex.split(os.environ.get("SPARSETRAIN_KERNEL_CFLAGS", ""))
        ext.include_dirs = [*ext.include_dirs, include, CSRC]
        ext.extra_compile_args = BASE_FLAGS + ISA_FLAGS[isa] + extra
        ext.extra_link_args = ["-pthread"]
        # Objects of each ISA in their own folder: the same sources compile once per library.
        build_temp, self.build_temp = self.build_temp, os.path.join(self.build_temp, isa)
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001 - CompileError, LinkError, ...
            self._skip(isa, repr(err))
            return
        finally:
            self.build_temp = build_temp
        print(f"sparsetrain: built the {isa} CPU kernels with {' '.join(ext.extra_compile_args)}")

    def _compiles(self, flags: list[str]) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.cc")
            with open(src, "w") as f:
                f.write("int main() { return 0; }\n")
            try:
                self.compiler.compile([src], output_dir=tmp, extra_postargs=["-std=c++17", *flags])
            except Exception:  # noqa: BLE001
                return False
        return True

    @staticmethod
    def _skip(isa: str, reason: str) -> None:
        what = "compiled CPU kernels" if isa == "all" else f"{isa} CPU kernels"
        print(f"WARNING sparsetrain: {what} not built ({reason}); ffi.py loads the best library "
              "that was built, else block_sparse_matmul uses its pure-JAX kernel", file=sys.stderr)


SOURCES = sorted(glob.glob(f"{CSRC}/*.cc"))  # every kernel file, in every ISA's library
HEADERS = sorted(glob.glob(f"{CSRC}/*.h"))

if __name__ == "__main__":  # pip's build backend runs this file as __main__; tests import it
    setup(
        ext_modules=[Extension(f"sparsetrain.kernels._block_sparse_cpu_{isa}", sources=SOURCES,
                               depends=HEADERS, language="c++", optional=True)
                     for isa in ISA_FLAGS],
        cmdclass={"build_ext": OptionalBuildExt},
    )
