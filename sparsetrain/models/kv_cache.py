"""KV-cache inference for decoder models: prefill a prompt, then decode one token at a time.

Works for any model implementing the decoder protocol (`GPT`, `Llama`):

- `model.spec.shape`: n_layers, kv_heads, head_dim, context; `model.spec.dtype`: compute dtype
- `model.layers`: an nnx module whose state is the layer parameters stacked on axis 0
- `model.embed_tokens(tokens (B, T), start) -> x (B, T, d)`: tokens at positions start..start+T-1
- `model.attention_inputs(p, x, start) -> q (B, T, H, hd), k, v (B, T, KV, hd)`: one layer
- `model.layer_output(p, x, att (B, T, H, hd)) -> x`: the rest of that layer
- `model.logits(x (..., d)) -> float32 (..., vocab)`

The cache has a fixed length `max_len`, so its shapes never change and a jitted `decode_step`
compiles once whatever the position. All sequences of a batch share the same position.

A decode step reads the cache without writing it inside the layer loop: each layer attends over
the cached positions < `position` and over its own new key/value, with one softmax over both
(`attend_with_cache`); the new keys/values of all layers are written into the cache after the
loop with one `dynamic_update_slice`, which updates in place when the cache buffer is donated.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class KVCache(NamedTuple):
    """Keys and values of every layer for `max_len` positions (a pytree).

    k, v: (n_layers, batch, max_len, kv_heads, head_dim) in the compute dtype;
    length: int32 () positions filled (the next token's position).
    """

    k: jax.Array
    v: jax.Array
    length: jax.Array


def cache_shape(model, batch: int, max_len: int) -> jax.ShapeDtypeStruct:
    """Shape and dtype of `KVCache.k` (and `.v`) for `model`."""
    s = model.spec.shape
    return jax.ShapeDtypeStruct((s.n_layers, batch, max_len, s.kv_heads, s.head_dim),
                                jnp.dtype(model.spec.dtype))


def empty_cache(model, batch: int, max_len: int) -> KVCache:
    """An all-zero cache holding no positions."""
    sd = cache_shape(model, batch, max_len)
    return KVCache(jnp.zeros(sd.shape, sd.dtype), jnp.zeros(sd.shape, sd.dtype),
                   jnp.zeros((), jnp.int32))


def abstract_cache(model, batch: int, max_len: int) -> KVCache:
    """ShapeDtypeStructs of a cache (nothing allocated)."""
    sd = cache_shape(model, batch, max_len)
    return KVCache(sd, sd, jax.ShapeDtypeStruct((), jnp.int32))


def _stacked_layers(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model.layers))


def prefill(model, tokens: jax.Array, max_len: int | None = None,
            last_logits_only: bool = False) -> tuple[jax.Array, KVCache]:
    """Run the prompt through the model, filling a cache of `max_len` positions.

    Args:
      model: a model implementing the decoder protocol.
      tokens: int32 (B, T), positions 0..T-1.
      max_len: cache length (default: the model's context); T <= max_len.
      last_logits_only: return only the last position's logits (what generation needs).
    Returns:
      logits float32 (B, T, vocab) (or (B, vocab)), and the cache with length T.
    """
    B, T = tokens.shape
    max_len = model.spec.shape.context if max_len is None else max_len
    if T > max_len:
        raise ValueError(f"prefill: {T} tokens do not fit a cache of max_len={max_len}")

    def body(x, p):
        q, k, v = model.attention_inputs(p, x, 0)
        att = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return model.layer_output(p, x, att), (k, v)

    x, (k, v) = jax.lax.scan(body, model.embed_tokens(tokens, 0), _stacked_layers(model))
    if max_len > T:  # (L, B, T, KV, hd) -> (L, B, max_len, KV, hd), zeros after the prompt
        pad = ((0, 0), (0, 0), (0, max_len - T), (0, 0), (0, 0))
        k, v = jnp.pad(k, pad), jnp.pad(v, pad)
    logits = model.logits(x[:, -1] if last_logits_only else x)
    return logits, KVCache(k, v, jnp.asarray(T, jnp.int32))


def attend_with_cache(q: jax.Array, k_new: jax.Array, v_new: jax.Array, k_cache: jax.Array,
                      v_cache: jax.Array, position: jax.Array) -> jax.Array:
    """Attention of one new token over the cached positions < `position` and itself.

    q: (B, 1, H, hd); k_new, v_new: (B, 1, KV, hd); k_cache, v_cache: (B, S, KV, hd), H a
    multiple of KV (query head h reads key/value head h // (H / KV)). Scores and softmax in
    float32; returns (B, 1, H, hd) in q's dtype.
    """
    B, _, H, hd = q.shape
    S, KV = k_cache.shape[1], k_cache.shape[2]
    qg = q.reshape(B, KV, H // KV, hd)
    scale = 1.0 / jnp.sqrt(jnp.float32(hd))
    f32 = jnp.float32
    s_cache = jnp.einsum("bkgd,bskd->bkgs", qg, k_cache, preferred_element_type=f32) * scale
    s_cache = jnp.where(jnp.arange(S) < position, s_cache, jnp.finfo(f32).min)
    s_self = jnp.einsum("bkgd,bkd->bkg", qg, k_new[:, 0], preferred_element_type=f32)[..., None] * scale
    m = jnp.maximum(s_cache.max(-1, keepdims=True), s_self)
    p_cache, p_self = jnp.exp(s_cache - m), jnp.exp(s_self - m)
    denom = p_cache.sum(-1, keepdims=True) + p_self
    out = jnp.einsum("bkgs,bskd->bkgd", p_cache.astype(v_cache.dtype), v_cache,
                     preferred_element_type=f32)
    out = (out + p_self * v_new[:, 0, :, None, :].astype(f32)) / denom
    return out.reshape(B, 1, H, hd).astype(q.dtype)


def decode_step(model, cache: KVCache, token: jax.Array,
                position: jax.Array) -> tuple[jax.Array, KVCache]:
    """One new token per sequence: its logits, and the cache with its keys/values added.

    Args:
      model: a model implementing the decoder protocol.
      cache: keys/values of positions < `position` (from `prefill` or earlier steps).
      token: int32 (B,) the token at `position`.
      position: int32 scalar (traced: one compile for every position), < the cache's max_len
        (a larger one would be clamped by `dynamic_update_slice`, overwriting the last slot).
    Returns:
      logits float32 (B, vocab), and the cache with length position + 1.
    """
    position = jnp.asarray(position, jnp.int32)

    def body(x, layer):
        p, k_cache, v_cache = layer
        q, k, v = model.attention_inputs(p, x, position)
        att = attend_with_cache(q, k, v, k_cache, v_cache, position)
        return model.layer_output(p, x, att), (k, v)

    x = model.embed_tokens(token[:, None], position)
    x, (k_new, v_new) = jax.lax.scan(body, x, (_stacked_layers(model), cache.k, cache.v))
    at = (0, 0, position, 0, 0)
    k = jax.lax.dynamic_update_slice(cache.k, k_new.astype(cache.k.dtype), at)
    v = jax.lax.dynamic_update_slice(cache.v, v_new.astype(cache.v.dtype), at)
    return model.logits(x[:, 0]), KVCache(k, v, position + 1)


class CachedDecoder:
    """`prefill` and `decode_step` as pure functions of (params, indices, ...) pytrees of arrays,
    for `jax.jit` and for lowering with abstract (ShapeDtypeStruct) arguments.

    params: the model's `nnx.Param` state as a nested dict; indices: every other variable (the
    block indices of sparse linears), also a nested dict.
    """

    def __init__(self, model):
        self.spec = model.spec
        self.graphdef, self._params, self._rest = nnx.split(model, nnx.Param, ...)

    def initial(self) -> tuple[dict, dict]:
        """(params, indices) of the model this was made from."""
        return nnx.to_pure_dict(self._params), nnx.to_pure_dict(self._rest)

    def model(self, params: dict, indices: dict):
        p = jax.tree.map(lambda x: x, self._params)
        nnx.replace_by_pure_dict(p, params)
        r = jax.tree.map(lambda x: x, self._rest)
        nnx.replace_by_pure_dict(r, indices)
        return nnx.merge(self.graphdef, p, r)

    def prefill(self, params: dict, indices: dict, tokens: jax.Array, max_len: int | None = None,
                last_logits_only: bool = False) -> tuple[jax.Array, KVCache]:
        return prefill(self.model(params, indices), tokens, max_len, last_logits_only)

    def decode(self, params: dict, indices: dict, cache: KVCache, token: jax.Array,
               position: jax.Array) -> tuple[jax.Array, KVCache]:
        return decode_step(self.model(params, indices), cache, token, position)
