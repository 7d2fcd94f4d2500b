"""Sampling with the KV cache: prefill the prompt once, then one compiled decode step per token.

    tokens = sample(model, prompt_ids, n_new=64, temperature=0.8, top_k=40, key=jax.random.key(0))

`model` is any model of the decoder protocol (`sparsetrain.models.kv_cache`: GPT dense or
block-sparse, Llama). The prompt runs through `kv_cache.prefill` (one compile per prompt length),
each new token through one jitted `decode_step` + sampling (one compile whatever the position; the
cache buffer is donated, so it is updated in place). `temperature=0` is greedy decoding: the
argmax of the logits, which equals the argmax of the full forward over the whole sequence at every
position (tests/test_hf_gpt2.py checks this).

Learned positions end at the model's context: prompt + new tokens must fit it; a longer prompt
keeps its last `context - n_new` tokens.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from sparsetrain.models.kv_cache import CachedDecoder


def pick(logits: jax.Array, key: jax.Array, temperature: float, top_k: int) -> jax.Array:
    """Next tokens from logits (B, V): int32 (B,). temperature 0: argmax; else softmax sampling
    of logits / temperature among the `top_k` most likely tokens (0 = all)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits).astype(jnp.int32)


class Generator:
    """Compiled prefill and decode-and-pick of one model, for prompts of any length up to max_len.

    Args:
      model: a model of the decoder protocol; its weights are captured once (params/indices).
      max_len: KV-cache positions (default: the model's context).
    """

    def __init__(self, model, max_len: int | None = None):
        self.decoder = CachedDecoder(model)
        self.params, self.indices = self.decoder.initial()
        self.max_len = max_len or model.spec.shape.context
        self._prefill = jax.jit(self.decoder.prefill, static_argnums=(3, 4))
        self._step = jax.jit(self._decode_and_pick, static_argnums=(5, 6), donate_argnums=2)

    def _decode_and_pick(self, params, indices, cache, token, key, temperature, top_k):
        key, sub = jax.random.split(key)
        logits, cache = self.decoder.decode(params, indices, cache, token, cache.length)
        return pick(logits, sub, temperature, top_k), cache, key

    def sample(self, prompt_ids: list[int], n_new: int, temperature: float = 0.8, top_k: int = 0,
               key: jax.Array | None = None, n_samples: int = 1) -> np.ndarray:
        """`n_new` tokens after the prompt for `n_samples` sequences at once: int32 (n_samples, n_new).

        Raises:
          ValueError: empty prompt, negative temperature or top_k, or n_new >= max_len.
        """
        if not prompt_ids:
            raise ValueError("prompt: empty is not allowed; give at least one token")
        if temperature < 0:
            raise ValueError(f"temperature: {temperature} is not allowed; expected >= 0 (0 = greedy)")
        if top_k < 0:
            raise ValueError(f"top_k: {top_k} is not allowed; expected >= 0 (0 = all tokens)")
        if not 1 <= n_new < self.max_len:
            raise ValueError(f"max_new_tokens: {n_new} is not allowed; expected 1..{self.max_len - 1} "
                             f"(the model's context is {self.max_len} positions)")
        key = jax.random.key(0) if key is None else key
        prompt = np.asarray(prompt_ids[-(self.max_len - n_new):], np.int32)
        tokens = jnp.asarray(np.tile(prompt, (n_samples, 1)))
        logits, cache = self._prefill(self.params, self.indices, tokens, self.max_len, True)
        key, sub = jax.random.split(key)
        token = pick(logits, sub, float(temperature), int(top_k))
        out = [token]
        for _ in range(n_new - 1):
            token, cache, key = self._step(self.params, self.indices, cache, token, key,
                                           float(temperature), int(top_k))
            out.append(token)
        return np.stack([np.asarray(t) for t in out], axis=1)


def sample(model, prompt_ids: list[int], n_new: int, temperature: float = 0.8, top_k: int = 0,
           key: jax.Array | None = None, n_samples: int = 1) -> np.ndarray:
    """One-off `Generator(model).sample(...)`: int32 (n_samples, n_new) new tokens."""
    return Generator(model).sample(prompt_ids, n_new, temperature, top_k, key, n_samples)
