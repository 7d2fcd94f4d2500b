"""Every instruction-set path of the compiled CPU kernels that this CPU runs gives the results of
the references (block-sparse forward, dx, dvalues against the masked dense product in float64;
causal attention and its gradients against jax.nn.dot_product_attention; LayerNorm, add +
LayerNorm and bias-GELU with their gradients against autodiff of the formulas); forcing a path the CPU
lacks or that was not built is refused; a compiler that rejects a path's flags only skips it.

One subprocess per path: a process registers one library's handlers (SPARSETRAIN_KERNEL_ISA picks
it when sparsetrain.kernels.ffi is imported).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import Distribution

from sparsetrain.errors import ConfigError
from sparsetrain.kernels import ffi

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not ffi.AVAILABLE, reason=f"compiled kernel {ffi.DESCRIPTION}")

# 64 x 64 blocks (the models'), and 24 x 40 blocks: widths not multiples of 16 (avx512) or of 8
# (avx2) and rows not multiples of the row tile; attention with T and head_dim of no vector width.
CHECK = r"""
import jax, jax.numpy as jnp, numpy as np
from sparsetrain.kernels import ffi
from sparsetrain.kernels.attention import causal_attention, causal_attention_packed, split_qkv
from sparsetrain.kernels.dispatch import use_kernel_backend
from sparsetrain.sparsity import block_sparse_matmul, dense_to_values, layout_from_mask, values_to_dense

rng = np.random.default_rng(0)
for tokens, nr, nc, block, k in [(50, 4, 3, (64, 64), 2), (21, 2, 2, (24, 40), 1)]:
    mask = np.zeros((nr, nc), bool)
    for j in range(nc):
        mask[rng.choice(nr, k, replace=False), j] = True
    layout = layout_from_mask(mask, block)
    shape = (nr * block[0], nc * block[1])
    x = rng.standard_normal((tokens, shape[0]), np.float32)
    values = dense_to_values(jnp.asarray(rng.standard_normal(shape, np.float32)), layout)
    dy = rng.standard_normal((tokens, shape[1]), np.float32)

    @jax.jit
    def fwd_bwd(x, v, dy):
        y, vjp = jax.vjp(lambda x, v: block_sparse_matmul(x, v, layout), x, v)
        return (y, *vjp(dy))

    with use_kernel_backend("ffi"):
        got = fwd_bwd(x, values, dy)
    x64, dy64 = np.float64(x), np.float64(dy)
    w64 = np.float64(values_to_dense(values, layout))
    m64 = np.kron(mask, np.ones(block))
    dv = np.asarray(dense_to_values(jnp.asarray((x64.T @ dy64) * m64, jnp.float32), layout))
    for a, ref, fan_in in zip(got, (x64 @ w64, dy64 @ w64.T, dv), (shape[0], shape[1], tokens)):
        np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-5 * np.sqrt(fan_in))

q, kk, v, do = (2.0 * rng.standard_normal((2, 37, 3, 20), np.float32) for _ in range(4))


def attention_vjp(attention):
    o, vjp = jax.vjp(attention, q, kk, v)
    return (o, *vjp(do))


with use_kernel_backend("ffi"):
    got = jax.jit(lambda: attention_vjp(causal_attention))()
refs = jax.jit(lambda: attention_vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)))()
np.testing.assert_allclose(got[0], refs[0], rtol=1e-5, atol=4e-5)
for g, g_ref in zip(got[1:], refs[1:]):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6 + 2e-5 * float(np.abs(g_ref).max()))

# the packed entry (q, k, v read from one (B, T, 3, H, hd) array), head_dim 80, T past a row block
qkv, do = 2.0 * rng.standard_normal((2, 53, 3, 2, 80), np.float32), rng.standard_normal((2, 53, 2, 80), np.float32)
with use_kernel_backend("ffi"):
    o, vjp = jax.vjp(causal_attention_packed, qkv)
    got = (o, *split_qkv(vjp(do)[0]))
o, vjp = jax.vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True), *split_qkv(qkv))
for g, g_ref in zip(got, (o, *vjp(do))):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6 + 2e-5 * float(np.abs(g_ref).max()))

from sparsetrain.kernels import norm_gelu  # LayerNorm (+ residual add) and bias-GELU, 37 x 83
x, a, dy, ds = (rng.standard_normal((37, 83), np.float32) for _ in range(4))
sc, b = rng.standard_normal(83, np.float32), rng.standard_normal(83, np.float32)
ref_ln = lambda x, s, b: (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5) * s + b
pairs = [(lambda x, a, s, b: norm_gelu.add_layer_norm(x, a, s, b, a_bias=2 * b),
          lambda x, a, s, b: (x + (a + 2 * b), ref_ln(x + (a + 2 * b), s, b)), (x, a, sc, b), (ds, dy)),
         (norm_gelu.layer_norm, ref_ln, (x, sc, b), dy),
         (norm_gelu.bias_gelu, lambda u, b: jax.nn.gelu(u + b, approximate=True), (3 * x, b), dy)]
for f, ref, args, ct in pairs:
    got, want = (jax.jit(lambda: (lambda o, vjp: (o, vjp(ct)))(*jax.vjp(g, *args)))() for g in (f, ref))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.abs(w).max()))
print("checked", ffi.ISA)
"""
EXPECTED_ISA = {"avx512": "avx512", "avx2": "avx2+fma", "generic": "generic"}


def _run(isa: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPARSETRAIN_KERNEL_ISA=isa, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("isa", ffi.ISAS)
def test_every_isa_path_equals_references(isa):
    if isa not in ffi.cpu_isas():
        pytest.skip(f"this CPU lacks {isa}")
    if ffi.library_path(isa) is None:
        pytest.skip(f"{isa} library not built")
    done = _run(isa)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"checked {EXPECTED_ISA[isa]}" in done.stdout


def test_default_path_is_the_widest_the_cpu_runs():
    built = [isa for isa in ffi.cpu_isas() if ffi.library_path(isa) is not None]
    if os.environ.get(ffi.ISA_ENV):
        pytest.skip(f"{ffi.ISA_ENV} is set")
    assert ffi.ISA.startswith(EXPECTED_ISA[built[0]])
    assert f"({ffi.ISA}, {ffi.THREADS} threads)" in ffi.DESCRIPTION


def test_forcing_an_isa_the_cpu_lacks_or_an_unknown_one_is_refused(monkeypatch):
    monkeypatch.setattr(ffi, "cpu_isas", lambda: ("avx2", "generic"))
    monkeypatch.setenv(ffi.ISA_ENV, "avx512")
    with pytest.raises(ConfigError, match="avx512: this CPU lacks it"):
        ffi._choose()
    monkeypatch.setenv(ffi.ISA_ENV, "sse9")
    with pytest.raises(ConfigError, match="expected one of"):
        ffi._choose()
    monkeypatch.setenv(ffi.ISA_ENV, "avx2")
    assert ffi._choose() == ("avx2", None)
    monkeypatch.delenv(ffi.ISA_ENV)
    assert ffi._choose() == ("avx2", None)  # the widest one the (pretended) CPU runs


def test_build_skips_an_isa_whose_flags_the_compiler_rejects(capsys):
    spec = importlib.util.spec_from_file_location("sparsetrain_setup", ROOT / "setup.py")
    setup_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_py)  # defines the build command; setup() runs only as a script

    class NoAvx512Compiler:
        def compile(self, sources, output_dir=None, extra_postargs=()):
            if any(flag.startswith("-mavx512") for flag in extra_postargs):
                raise RuntimeError("unrecognized command-line option '-mavx512f'")
            return []

    cmd = setup_py.OptionalBuildExt(Distribution())
    cmd.compiler = NoAvx512Compiler()
    ext = setup_py.Extension("sparsetrain.kernels._block_sparse_cpu_avx512", sources=[])
    cmd.build_extension(ext)  # returns without raising: only this path is skipped
    err = capsys.readouterr().err
    assert "avx512 CPU kernels not built (the compiler rejects -mavx512f" in err
    assert cmd._compiles(setup_py.ISA_FLAGS["avx2"]) and cmd._compiles([])
