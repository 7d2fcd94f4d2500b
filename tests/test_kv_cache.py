"""KV-cache inference: prefill + token-by-token decode equals the full-sequence forward."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsetrain.config import Config, from_dict
from sparsetrain.models.family import build_model, model_spec
from sparsetrain.models.kv_cache import CachedDecoder, abstract_cache, attend_with_cache, empty_cache

VOCAB, CONTEXT, PROMPT = 300, 12, 4

MODELS = {
    "gpt-dense": {"model": {"preset": "tiny", "n_layers": 2, "d_model": 64, "n_heads": 2}},
    # block-sparse qkv (the projection the cache is filled from); the other linears dense to keep
    # the compile short
    "gpt-block-sparse": {"model": {"preset": "tiny", "n_layers": 2, "d_model": 64, "n_heads": 2},
                         "sparsity": {"pattern": "random_balanced", "block": 16,
                                      "qkv": {"density": 0.5}}},
    "llama-gqa": {"model": {"preset": "llama-tiny"}},  # 4 query heads share 2 key/value heads
}


@functools.cache  # each model is built (one jitted init) once for the whole file
def decoder_of(name: str) -> CachedDecoder:
    raw = {**MODELS[name], "data": {"vocab_size": VOCAB, "seq_len": CONTEXT}}
    raw["model"] = {**raw["model"], "context": CONTEXT}
    return CachedDecoder(build_model(model_spec(from_dict(Config, raw)), seed=0))


@pytest.mark.parametrize("name", list(MODELS))
def test_prefill_then_decode_equals_full_forward(name):
    dec = decoder_of(name)
    if name == "llama-gqa":
        assert dec.spec.shape.kv_heads < dec.spec.shape.n_heads
    params, indices = dec.initial()
    tokens = jax.random.randint(jax.random.key(1), (2, CONTEXT), 0, VOCAB)

    @jax.jit  # one program (one compile): the full forward, the prefill and every decode step
    def both(params, indices, tokens):
        full = dec.model(params, indices)(tokens)
        first, cache = dec.prefill(params, indices, tokens[:, :PROMPT], CONTEXT)

        def step(cache, position):
            logits, cache = dec.decode(params, indices, cache, tokens[:, position], position)
            return cache, logits

        cache, later = jax.lax.scan(step, cache, jnp.arange(PROMPT, CONTEXT))
        return full, first, jnp.moveaxis(later, 0, 1), cache

    full, first, later, cache = both(params, indices, tokens)
    assert full.shape == (2, CONTEXT, VOCAB) and int(cache.length) == CONTEXT
    np.testing.assert_allclose(first, full[:, :PROMPT], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(later, full[:, PROMPT:], rtol=1e-5, atol=1e-5)


def test_decode_step_compiles_once_across_positions():
    dec = decoder_of("llama-gqa")
    params, indices = dec.initial()
    cache = empty_cache(dec, 2, CONTEXT)
    traces = []

    def counted(*args):
        traces.append(1)  # runs once per trace (= compile) of the jitted function
        return dec.decode(*args)

    decode = jax.jit(counted, donate_argnums=2)
    for position in range(3):
        logits, cache = decode(params, indices, cache, jnp.full((2,), position, jnp.int32),
                               jnp.int32(position))
    assert logits.shape == (2, VOCAB) and int(cache.length) == 3
    assert len(traces) == 1


def test_cache_shapes_are_fixed_and_prefill_can_return_last_logits_only():
    dec = decoder_of("llama-gqa")
    params, indices = dec.initial()
    s = dec.spec.shape
    tokens = jax.ShapeDtypeStruct((3, 5), jnp.int32)
    logits, cache = jax.eval_shape(lambda p, i, t: dec.prefill(p, i, t, CONTEXT, True),
                                   params, indices, tokens)
    assert logits.shape == (3, VOCAB)
    assert cache.k.shape == (s.n_layers, 3, CONTEXT, s.kv_heads, s.head_dim) == cache.v.shape
    token = jax.ShapeDtypeStruct((3,), jnp.int32)
    position = jax.ShapeDtypeStruct((), jnp.int32)
    _, after = jax.eval_shape(dec.decode, params, indices, cache, token, position)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), after) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), abstract_cache(dec, 3, CONTEXT))


def test_attend_with_cache_matches_grouped_query_attention():
    """One query over cached keys (positions < 5 valid, the rest garbage) and its own key equals
    causal grouped-query attention over the 6 positions."""
    rng = np.random.default_rng(0)
    B, S, H, KV, hd = 2, 8, 4, 2, 16
    q = rng.standard_normal((B, 6, H, hd), np.float32)
    k = rng.standard_normal((B, 6, KV, hd), np.float32)
    v = rng.standard_normal((B, 6, KV, hd), np.float32)
    junk = np.full((B, S - 5, KV, hd), 7.0, np.float32)
    k_cache = np.concatenate([k[:, :5], junk], axis=1)
    v_cache = np.concatenate([v[:, :5], junk], axis=1)

    @jax.jit
    def both(q, k, v, k_cache, v_cache):
        ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)[:, 5:]
        return ref, attend_with_cache(q[:, 5:], k[:, 5:], v[:, 5:], k_cache, v_cache, 5)

    ref, out = both(q, k, v, k_cache, v_cache)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
