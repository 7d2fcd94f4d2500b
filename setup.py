"""Builds the optional compiled CPU kernel `sparsetrain/kernels/_block_sparse_cpu` (XLA FFI).

Package metadata lives in pyproject.toml; this file only adds the C++ extension. It is optional:
without a C++17 compiler or the XLA FFI headers (from jaxlib, a build requirement), or if the
compile fails, the package still installs, prints why, and block_sparse_matmul runs its pure-JAX
kernel (`sparsetrain.kernels.dispatch.kernel_backend_info()` says which kernel runs).

Environment:
  SPARSETRAIN_BUILD_KERNEL=0        skip the compiled kernel
  SPARSETRAIN_KERNEL_CFLAGS="..."   target flags instead of the first that compiles of
                                    -march=native, -mcpu=native, -mavx2 -mfma, (none)
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = "sparsetrain/kernels/csrc"
BASE_FLAGS = ["-std=c++17", "-O3", "-ffp-contract=fast", "-fPIC", "-pthread", "-w"]
TARGET_FLAGS = [["-march=native"], ["-mcpu=native"], ["-mavx2", "-mfma"], []]


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
    """build_ext whose failure only skips the compiled kernel, with the reason printed."""

    def run(self):
        if os.environ.get("SPARSETRAIN_BUILD_KERNEL", "1") == "0":
            self._skip("SPARSETRAIN_BUILD_KERNEL=0")
            return
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - e.g. no compiler at all
            self._skip(repr(err))

    def build_extension(self, ext):
        include = _ffi_include_dir()
        if include is None:
            self._skip("XLA FFI headers not found (jax/jaxlib not importable at build time)")
            return
        ext.include_dirs = [*ext.include_dirs, include, CSRC]
        ext.extra_compile_args = BASE_FLAGS + self._target_flags()
        ext.extra_link_args = ["-pthread"]
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001 - CompileError, LinkError, ...
            self._skip(repr(err))
            return
        print(f"sparsetrain: built the compiled CPU kernel with {' '.join(ext.extra_compile_args)}")

    def _target_flags(self) -> list[str]:
        env = os.environ.get("SPARSETRAIN_KERNEL_CFLAGS")
        if env is not None:
            return shlex.split(env)
        for flags in TARGET_FLAGS:
            if self._compiles(flags):
                return flags
        return []

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
    def _skip(reason: str) -> None:
        print(f"WARNING sparsetrain: compiled CPU kernel not built ({reason}); "
              "block_sparse_matmul will use its pure-JAX kernel", file=sys.stderr)


setup(
    ext_modules=[Extension(
        "sparsetrain.kernels._block_sparse_cpu",
        sources=[f"{CSRC}/kernels.cc", f"{CSRC}/block_sparse.cc", f"{CSRC}/attention.cc"],
        depends=[f"{CSRC}/kernels.h", f"{CSRC}/tiles.h", f"{CSRC}/parallel.h"],
        language="c++",
        optional=True,
    )],
    cmdclass={"build_ext": OptionalBuildExt},
)
