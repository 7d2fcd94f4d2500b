"""Causal attention: the compiled CPU kernel equals jax.nn.dot_product_attention, is causal, and
is only chosen where it may run (float32 on one CPU device, not while the RDU backend traces)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsetrain.kernels import ffi
from sparsetrain.kernels.attention import causal_attention, causal_attention_packed, split_qkv
from sparsetrain.kernels.dispatch import kernel_backend, use_kernel_backend
from sparsetrain.rdu.programs import lower_program
from conftest import causal_attention_reference

compiled = pytest.mark.skipif(not ffi.AVAILABLE, reason=f"compiled kernel {ffi.DESCRIPTION}")

# (B, T, heads, head_dim): one token, T and head_dim not multiples of any vector width or of the
# kernel's row block (24 rows; 16 on the generic path), several row blocks, the small-30m layer shape.
SHAPES = [(1, 1, 1, 8), (2, 37, 3, 20), (1, 100, 2, 33), (2, 130, 2, 64), (8, 256, 8, 64)]
# The packed entry: head_dim 32, 64 and 80 (five AVX-512 vectors: a partial column panel), one
# head, T one past a row block (49 = 2 x 24 + 1) and not a multiple of any vector width.
PACKED_SHAPES = [(1, 1, 1, 8), (2, 49, 1, 32), (1, 77, 3, 80), (3, 97, 2, 64), (8, 256, 8, 64)]


def _qkv(shape, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    return [2.0 * jax.random.normal(k, shape, jnp.float32) for k in keys]


def _reference(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)


@compiled
@pytest.mark.parametrize("shape", SHAPES)
def test_compiled_forward_and_gradients_equal_reference(shape):
    q, k, v, do = _qkv(shape)
    with use_kernel_backend("ffi"):
        assert kernel_backend(jnp.float32) == "ffi"
        o, vjp = jax.vjp(causal_attention, q, k, v)
        grads = vjp(do)
    o_ref, vjp_ref = jax.vjp(_reference, q, k, v)
    # float32 sums of up to 256 terms of |v| ~ 2-8: absolute error ~1e-5 on small outputs
    np.testing.assert_allclose(o, causal_attention_reference(q, k, v), rtol=1e-5, atol=4e-5)
    np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=4e-5)
    for g, g_ref in zip(grads, vjp_ref(do)):
        scale = float(jnp.abs(g_ref).max())
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6 + 2e-5 * scale)


def _reference64(q, k, v, do):
    """o, dq, dk, dv of causal attention in float64 numpy (closed-form softmax gradient)."""
    q, k, v, do = (np.float64(np.asarray(a)) for a in (q, k, v, do))
    T, D = q.shape[1], q.shape[3]
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", p, v)
    dp = np.einsum("bqhd,bkhd->bhqk", do, v)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / np.sqrt(D)
    return (o, np.einsum("bhqk,bkhd->bqhd", ds, k), np.einsum("bhqk,bqhd->bkhd", ds, q),
            np.einsum("bhqk,bqhd->bkhd", p, do))


@compiled
@pytest.mark.parametrize("shape", PACKED_SHAPES)
def test_packed_entry_equals_float64_reference(shape):
    """q, k, v read from the packed (B, T, 3, H, hd) array; dqkv written packed."""
    B, T, H, hd = shape
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    qkv = 2.0 * jax.random.normal(keys[0], (B, T, 3, H, hd), jnp.float32)
    do = jax.random.normal(keys[1], shape, jnp.float32)
    with use_kernel_backend("ffi"):
        o, vjp = jax.vjp(jax.jit(causal_attention_packed), qkv)
        (dqkv,) = vjp(do)
    assert o.shape == shape and dqkv.shape == qkv.shape
    refs = _reference64(*split_qkv(qkv), do)
    # float32 sums of up to T products of magnitude ~1-10: relative 1e-5 of the largest value
    for got, ref in zip((o, *split_qkv(dqkv)), refs):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-6 * (1.0 + np.abs(ref).max()))


@compiled
def test_packed_entry_runs_the_kernel_without_split_copies():
    """The compiled step calls the packed targets and neither the split ones nor a concatenate."""
    qkv = jax.random.normal(jax.random.PRNGKey(4), (2, 40, 3, 2, 16), jnp.float32)

    def loss(qkv):
        return jnp.sum(causal_attention_packed(qkv) ** 2)

    with use_kernel_backend("ffi"):
        hlo = jax.jit(jax.grad(loss)).lower(qkv).compile().as_text()
    assert ffi.ATTENTION_PACKED_FORWARD_TARGET in hlo and ffi.ATTENTION_PACKED_BACKWARD_TARGET in hlo
    assert f'"{ffi.ATTENTION_FORWARD_TARGET}"' not in hlo and "concatenate(" not in hlo
    with use_kernel_backend("jax"):  # the pure-JAX path: split + jax.nn.dot_product_attention
        np.testing.assert_allclose(causal_attention_packed(qkv),
                                   causal_attention_reference(*split_qkv(qkv)), rtol=1e-5, atol=1e-5)


@compiled
def test_compiled_kernel_is_causal():
    q, k, v, _ = _qkv((2, 64, 2, 16), seed=1)
    t = 40
    k2 = k.at[:, t + 1:].set(100.0)  # future keys and values change wildly
    v2 = v.at[:, t + 1:].set(-100.0)
    with use_kernel_backend("ffi"):
        o1 = jax.jit(causal_attention)(q, k, v)
        o2 = jax.jit(causal_attention)(q, k2, v2)
    np.testing.assert_array_equal(o1[:, : t + 1], o2[:, : t + 1])
    assert not np.allclose(o1[:, t + 1:], o2[:, t + 1:])


@compiled
def test_extreme_scores_stay_finite():
    q, k, v, do = _qkv((1, 50, 1, 16), seed=2)
    q = q * 300.0  # scores in the thousands: softmax saturates to one-hot rows
    with use_kernel_backend("ffi"):
        o, vjp = jax.vjp(causal_attention, q, k, v)
        grads = vjp(do)
    assert all(bool(jnp.isfinite(a).all()) for a in (o, *grads))
    np.testing.assert_allclose(o, causal_attention_reference(q, k, v), rtol=1e-4, atol=1e-4)


def test_kernel_choice():
    expected = "ffi" if ffi.AVAILABLE and jax.device_count() == 1 else "jax"
    assert kernel_backend(jnp.float32) == expected
    assert kernel_backend(jnp.bfloat16) == "jax"
    with use_kernel_backend("jax"):
        assert kernel_backend(jnp.float32) == "jax"


def test_rdu_lowering_traces_the_pure_jax_attention():
    """While the RDU backend traces, attention is made of dataflow operators (no custom call)."""
    q, k, v, _ = _qkv((1, 16, 2, 8))
    seen = []

    def fn(q, k, v):
        seen.append(kernel_backend(q.dtype))
        return causal_attention(q, k, v)

    graph = lower_program(fn, q, k, v, roles=("activations",) * 3)
    assert seen and all(s == "jax" for s in seen)
    assert kernel_backend(jnp.float32) == ("ffi" if ffi.AVAILABLE and jax.device_count() == 1 else "jax")
    assert graph.kernels


def test_bad_shapes_are_refused():
    q, k, v, _ = _qkv((1, 8, 2, 4))
    with pytest.raises(ValueError, match="q, k, v"):
        causal_attention(q, k[:, :4], v)
    with pytest.raises(ValueError, match="qkv"):
        causal_attention_packed(jnp.stack([q, k], axis=2))


@compiled
def test_gpt_loss_and_gradients_match_with_either_kernel():
    """The tiny GPT gives the same loss and gradients with the compiled or pure-JAX attention."""
    from sparsetrain.config import Config, from_dict
    from sparsetrain.models.gpt import GPTSpec, build_model
    from sparsetrain.training.step import ModelFunctions

    cfg = from_dict(Config, {"model": {"preset": "tiny"},
                             "data": {"vocab_size": 256, "seq_len": 64, "batch_size": 2}})
    fns = ModelFunctions(build_model(GPTSpec.from_config(cfg, 256), 0))
    params, indices = fns.initial()
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 256, (2, 64), dtype=np.int32),
             "targets": rng.integers(0, 256, (2, 64), dtype=np.int32)}
    out = {}
    for backend in ("ffi", "jax"):
        with use_kernel_backend(backend):
            out[backend] = jax.jit(jax.value_and_grad(fns.loss))(params, indices, batch)
    np.testing.assert_allclose(out["ffi"][0], out["jax"][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(out["ffi"][1]), jax.tree.leaves(out["jax"][1])):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6 + 1e-4 * float(jnp.abs(b).max()))
