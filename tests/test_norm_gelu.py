"""The compiled LayerNorm and bias-GELU kernels (kernels/norm_gelu.py, csrc/elementwise.cc) against
the plain jnp formulas and their autodiff gradients. The GPT's loss and gradients with and without
them: tests/test_fused_ops.py (the plain path there is every fused piece off)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsetrain.kernels import ffi, norm_gelu
from sparsetrain.kernels.dispatch import use_kernel_backend
from sparsetrain.models import gpt
from sparsetrain.models.gpt import GPTSpec, LinearSpec

pytestmark = pytest.mark.skipif(not ffi.AVAILABLE, reason=f"compiled kernel {ffi.DESCRIPTION}")

# Rows not a multiple of the 64-row chunks of the column sums nor of the thread split; features
# not a multiple of any vector width (83), a multiple of 16 but not 32 (80), and the model's 512.
SHAPES = [(2047, 83), (3, 5, 80), (130, 512)]


def _normal(seed, shape, scale=1.0, shift=0.0):
    return jnp.asarray(shift + scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def ref_layer_norm(x, scale, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def ref_bias_gelu(u, bias):
    return jax.nn.gelu(u + bias, approximate=True)


def _close(got, want, rtol, atol_frac):
    """Equal within rtol and an absolute slack relative to the reference's largest entry."""
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol_frac * float(np.abs(w).max()))


def _vjp(f, args, cts):
    out, pull = jax.vjp(f, *args)
    return out, pull(cts)


@pytest.mark.parametrize("shape", SHAPES)
def test_layer_norm_and_its_gradients_equal_autodiff_of_the_formula(shape):
    d = shape[-1]
    x, dy = _normal(0, shape, 2.0, 0.7), _normal(1, shape)
    scale, bias = _normal(2, (d,)), _normal(3, (d,))
    y, grads = jax.jit(lambda *a: _vjp(norm_gelu.layer_norm, a, dy))(x, scale, bias)
    y_ref, grads_ref = jax.jit(lambda *a: _vjp(ref_layer_norm, a, dy))(x, scale, bias)
    assert y.shape == shape and [g.shape for g in grads] == [shape, (d,), (d,)]
    _close([y], [y_ref], 1e-5, 1e-6)
    _close(grads, grads_ref, 1e-4, 1e-5)  # dscale, dbias: sums over up to 2047 rows


@pytest.mark.parametrize("shape", SHAPES)
def test_add_layer_norm_returns_the_sum_and_adds_its_cotangent(shape):
    """s = x + a + a_bias and LayerNorm(s); gradients of x, a, a_bias, scale, bias."""
    d = shape[-1]
    x, a, ds, dy = (_normal(i, shape) for i in range(4))
    scale, bias, a_bias = _normal(4, (d,)), _normal(5, (d,)), _normal(14, (d,))
    fused = lambda x, a, ab, scale, bias: norm_gelu.add_layer_norm(x, a, scale, bias, a_bias=ab)
    ref = lambda x, a, ab, scale, bias: (x + (a + ab), ref_layer_norm(x + (a + ab), scale, bias))
    args = (x, a, a_bias, scale, bias)
    out, grads = jax.jit(lambda *p: _vjp(fused, p, (ds, dy)))(*args)
    out_ref, grads_ref = jax.jit(lambda *p: _vjp(ref, p, (ds, dy)))(*args)
    np.testing.assert_array_equal(out[0], out_ref[0])  # s exactly
    _close(out[1:], out_ref[1:], 1e-5, 1e-6)
    _close(grads, grads_ref, 1e-4, 1e-5)
    # without a bias: s = x + a
    s, _ = norm_gelu.add_layer_norm(x, a, scale, bias)
    np.testing.assert_array_equal(s, x + a)


@pytest.mark.parametrize("shape", SHAPES)
def test_bias_gelu_and_its_gradients_equal_autodiff_of_jax_gelu(shape):
    n = shape[-1]
    u, g, b = _normal(6, shape, 3.0), _normal(7, shape), _normal(8, (n,))
    out, grads = jax.jit(lambda *p: _vjp(norm_gelu.bias_gelu, p, g))(u, b)
    out_ref, grads_ref = jax.jit(lambda *p: _vjp(ref_bias_gelu, p, g))(u, b)
    _close([out], [out_ref], 1e-5, 1e-6)
    _close(grads, grads_ref, 1e-4, 1e-5)


def test_gelu_is_accurate_over_its_whole_range():
    """Against float64 tanh-GELU and its closed-form slope, u from -30 to 30: within the error of
    jax.nn.gelu's own float32 tanh (its autodiff slope is off by up to 3.6e-6 near the tails,
    where 1 - tanh^2 is a difference of nearly equal numbers)."""
    u = np.linspace(-30.0, 30.0, 12_001).reshape(-1, 1) * np.ones((1, 17))
    y, (du, _) = jax.jit(lambda u: _vjp(norm_gelu.bias_gelu, (u, jnp.zeros(17)), jnp.ones_like(u)))(
        jnp.asarray(u, jnp.float32))
    x = np.float32(u).astype(np.float64)
    c, k = np.sqrt(2.0 / np.pi), 0.044715
    t = np.tanh(c * (x + k * x ** 3))
    slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * k * x * x)
    np.testing.assert_allclose(y, 0.5 * x * (1 + t), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(du, slope, rtol=2e-6, atol=5e-6)
    assert np.all(np.asarray(y)[x < -10] == 0.0) and np.all(np.asarray(du)[np.abs(x) > 10] == (x[np.abs(x) > 10] > 0))


def test_column_sums_do_not_depend_on_the_thread_count():
    """dscale, dbias and the GELU's dbias are summed per fixed chunk of rows: bit-identical with
    1, 2 or 5 threads (the partial sums never depend on which thread took which rows)."""
    x, dy = _normal(9, (1000, 96)), _normal(10, (1000, 96))
    scale, bias = _normal(11, (96,)), _normal(12, (96,))
    _, mean, rstd = norm_gelu.layer_norm_forward(x, scale, bias, 1e-5)

    def sums(threads):
        out = []
        for target, args, widths in [
                ("sparsetrain_layer_norm_backward", (x, mean, rstd, scale, dy), (96, 96)),
                ("sparsetrain_bias_gelu_backward", (x, bias, dy), (96,))]:
            outs = (jax.ShapeDtypeStruct(x.shape, jnp.float32),) + tuple(
                jax.ShapeDtypeStruct((w,), jnp.float32) for w in widths)
            out += jax.ffi.ffi_call(target, outs)(*args, threads=np.int64(threads))
        return [np.asarray(o) for o in out]

    one = sums(1)
    for threads in (2, 5):
        for a, b in zip(sums(threads), one):
            np.testing.assert_array_equal(a, b)


def test_compiled_only_for_float32_on_cpu_with_the_compiled_kernels_chosen():
    assert norm_gelu.compiled_elementwise(jnp.float32)
    assert not norm_gelu.compiled_elementwise(jnp.bfloat16)
    with use_kernel_backend("jax"):  # the RDU lowering: plain ops it can cost
        assert not norm_gelu.compiled_elementwise(jnp.float32)


@pytest.mark.parametrize("dropout_key", [None, 0])
def test_layer_output_equals_the_plain_one_with_and_without_residual_dropout(monkeypatch, dropout_key):
    """gpt.layer_output (attn_out bias folded into the compiled add + LayerNorm unless dropout
    comes between them): output and gradients equal those of the plain jnp path, same key."""
    d = 40
    linears = (("attn_out", LinearSpec(d, d)), ("mlp_up", LinearSpec(d, 4 * d)),
               ("mlp_down", LinearSpec(4 * d, d)))
    spec = GPTSpec(shape=None, vocab_size=1, linears=linears, resid_dropout=0.25)
    p = {kind: {"kernel": _normal(20 + i, (lin.n_in, lin.n_out), 0.2), "bias": _normal(30 + i, (lin.n_out,))}
         for i, (kind, lin) in enumerate(linears)}
    p.update(ln2_scale=_normal(40, (d,), 0.5, 1.0), ln2_bias=_normal(41, (d,)))
    x, att, w = _normal(42, (2, 9, d)), _normal(43, (2, 9, 4, d // 4)), _normal(44, (2, 9, d))
    key = None if dropout_key is None else jax.random.key(dropout_key)
    f = lambda p, x, att: jnp.sum(gpt.layer_output(p, x, att, spec, key) * w)
    got = jax.jit(jax.value_and_grad(f, (0, 1, 2)))(p, x, att)
    monkeypatch.setattr(norm_gelu, "compiled_elementwise", lambda dtype: False)
    want = jax.jit(jax.value_and_grad(f, (0, 1, 2)))(p, x, att)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, r in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * float(np.abs(r).max()))
