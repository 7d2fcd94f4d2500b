"""Llama-style decoder in Flax NNX: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention.

The architecture of Llama 2 / Llama 3.1 and Mistral 7B (Touvron et al. 2023; Llama Team 2024;
Jiang et al. 2023): pre-RMSNorm layers, no biases, rotary position embeddings (RoPE, base
`rope_theta`) on queries and keys, `n_kv_heads` key/value heads shared by groups of query heads,
a SwiGLU MLP (`silu(x W_gate) * (x W_up)`, then `W_down`), and an output head not tied to the
token embeddings.

Like the GPT, the layers are stored stacked on a leading layer axis and run with one
`jax.lax.scan`, and each of the four linear kinds can be block-sparse (`StackedLinear` without
bias). Linear kinds hold fused projections: `qkv` is (d, (heads + 2 kv_heads) * head_dim) with
the query heads first, then keys, then values; `mlp_up` is (d, 2 * ffn) with the gate first,
then the up projection. The parameter count is that of the separate projections.

Not modelled: Llama 3.1's long-context RoPE frequency rescaling (it changes values, not shapes or
costs) and Mistral's sliding attention window (identical for sequences up to its 4096 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from sparsetrain.config import Config, ConfigError, ModelShape, linear_shapes
from sparsetrain.models.gpt import (
    LinearSpec, add_stacked_linears, linear_apply, make_layouts, placeholder_layouts,
)
from sparsetrain.sparsity import BlockLayout
from sparsetrain.sparsity.resolve import resolve_sparsity

RMS_NORM_EPS = 1e-5  # rms_norm_eps of the released Llama 2, Llama 3.1 and Mistral 7B configs


@dataclass(frozen=True)
class LlamaSpec:
    """Everything static about a Llama-style model: shape (with kv heads, SwiGLU width, RoPE
    base), vocabulary, numerics and each linear's sparsity (no biases)."""

    shape: ModelShape
    vocab_size: int
    linears: tuple[tuple[str, LinearSpec], ...]
    pattern: str = "dense"
    pattern_seed: int = 0
    dtype: str = "float32"
    remat: bool = False

    @classmethod
    def from_config(cls, cfg: Config, vocab_size: int | None = None) -> "LlamaSpec":
        shape = cfg.shape()
        if shape.family != "llama":
            raise ConfigError(f"model.preset: {cfg.model.preset!r} is not allowed here; allowed: a "
                              f"llama preset (this one is a {shape.family} model)")
        linears = tuple((kind, LinearSpec(k.n_in, k.n_out, k.density, k.block, k.final_density, bias=False))
                        for kind, k in resolve_sparsity(cfg.sparsity, linear_shapes(shape), stored=False).items())
        return cls(shape=shape, vocab_size=vocab_size or shape.vocab or cfg.data.vocab_size,
                   linears=linears, pattern=cfg.sparsity.pattern,
                   pattern_seed=cfg.sparsity.seed, dtype=cfg.model.dtype, remat=cfg.model.remat)

    def linear(self, kind: str) -> LinearSpec:
        return dict(self.linears)[kind]


def rms_norm(x: jax.Array, scale: jax.Array, eps: float = RMS_NORM_EPS) -> jax.Array:
    """x / rms(x) * scale over the last axis, computed in float32, returned in x's dtype."""
    xf = x.astype(jnp.float32)
    ms = jnp.square(xf).mean(-1, keepdims=True)
    return (xf * jax.lax.rsqrt(ms + eps) * scale).astype(x.dtype)


def rotary_angles(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotary angles, float32 (T, head_dim // 2).

    Pair i of a head rotates by position * theta^(-2i / head_dim) radians.
    """
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the feature pairs (i, i + head_dim/2) of x (B, T, heads, head_dim) by the angles
    (T, head_dim/2) (the "rotate half" layout of the released Llama weights); x's dtype."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def attention_inputs(p: dict, x: jax.Array, start, spec: LlamaSpec):
    """One layer's rotated queries (B, T, heads, hd) and keys, and values (B, T, kv_heads, hd).

    x: (B, T, d) at positions start .. start+T-1 (`start`: int or int32 scalar array).
    """
    B, T, _ = x.shape
    H, KV, hd = spec.shape.n_heads, spec.shape.kv_heads, spec.shape.head_dim
    h = rms_norm(x, p["attn_norm"])
    qkv = linear_apply(p["qkv"], spec.linear("qkv"), h)
    q = qkv[..., :H * hd].reshape(B, T, H, hd)
    k = qkv[..., H * hd:(H + KV) * hd].reshape(B, T, KV, hd)
    v = qkv[..., (H + KV) * hd:].reshape(B, T, KV, hd)
    cos, sin = rotary_angles(start + jnp.arange(T), hd, spec.shape.rope_theta)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


def layer_output(p: dict, x: jax.Array, att: jax.Array, spec: LlamaSpec) -> jax.Array:
    """Attention output projection, residual, SwiGLU MLP, residual: (B, T, d) -> (B, T, d)."""
    B, T, d = x.shape
    x = x + linear_apply(p["attn_out"], spec.linear("attn_out"), att.reshape(B, T, d))
    h = rms_norm(x, p["mlp_norm"])
    gate, up = jnp.split(linear_apply(p["mlp_up"], spec.linear("mlp_up"), h), 2, axis=-1)
    return x + linear_apply(p["mlp_down"], spec.linear("mlp_down"), jax.nn.silu(gate) * up)


def decoder_layer(p: dict, x: jax.Array, spec: LlamaSpec) -> jax.Array:
    """One Llama layer over a whole sequence from position 0, causal: (B, T, d) -> (B, T, d)."""
    q, k, v = attention_inputs(p, x, 0, spec)
    att = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # grouped-query: kv heads shared
    return layer_output(p, x, att, spec)


class LlamaLayers(nnx.Module):
    """All layers, parameters stacked on a leading layer axis, run with one scan."""

    def __init__(self, spec: LlamaSpec, layouts: dict[str, list[BlockLayout]], *, rngs: nnx.Rngs):
        L, d = spec.shape.n_layers, spec.shape.d_model
        add_stacked_linears(self, spec, layouts, rngs)
        self.attn_norm = nnx.Param(jnp.ones((L, d)))
        self.mlp_norm = nnx.Param(jnp.ones((L, d)))

    def __call__(self, x: jax.Array, spec: LlamaSpec) -> jax.Array:
        stacked = nnx.to_pure_dict(nnx.state(self))
        body = lambda x, p: (decoder_layer(p, x, spec), None)
        if spec.remat:
            body = jax.checkpoint(body)
        x, _ = jax.lax.scan(body, x, stacked)
        return x


class Llama(nnx.Module):
    """Llama-style decoder. tokens int32 (B, T) -> logits float32 (B, T, vocab).

    Implements the decoder protocol of `sparsetrain.models.kv_cache`.
    """

    def __init__(self, spec: LlamaSpec, layouts: dict[str, list[BlockLayout]] | None = None,
                 *, rngs: nnx.Rngs):
        if layouts is None:
            layouts = make_layouts(spec)
        self.spec = spec
        d, V = spec.shape.d_model, spec.vocab_size
        self.embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (V, d)))
        self.layers = LlamaLayers(spec, layouts, rngs=rngs)
        self.norm = nnx.Param(jnp.ones((d,)))
        self.head = nnx.Param(0.02 * jax.random.normal(rngs.params(), (d, V)))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.logits(self.layers(self.embed_tokens(tokens, 0), self.spec))

    # The decoder protocol of sparsetrain.models.kv_cache ---------------------------------------
    def embed_tokens(self, tokens: jax.Array, start) -> jax.Array:
        """tokens int32 (B, T) -> (B, T, d) in the compute dtype (positions enter through RoPE)."""
        return self.embed[...][tokens].astype(jnp.dtype(self.spec.dtype))

    def attention_inputs(self, p: dict, x: jax.Array, start):
        return attention_inputs(p, x, start, self.spec)

    def layer_output(self, p: dict, x: jax.Array, att: jax.Array) -> jax.Array:
        return layer_output(p, x, att, self.spec)

    def logits(self, x: jax.Array) -> jax.Array:
        """Final RMSNorm and the untied head: (..., d) -> float32 (..., vocab)."""
        x = rms_norm(x, self.norm[...])
        return jnp.dot(x, self.head[...].astype(x.dtype), preferred_element_type=jnp.float32)


def build_llama(spec: LlamaSpec, seed: int) -> Llama:
    """A freshly initialised Llama (one jitted init program, like `gpt.build_model`)."""
    layouts = make_layouts(spec)
    key = jax.random.key(seed, impl="rbg")
    return nnx.jit(lambda: Llama(spec, layouts, rngs=nnx.Rngs(params=key)))()


def abstract_llama(spec: LlamaSpec) -> Llama:
    """A Llama whose parameters are ShapeDtypeStructs: no weights allocated (405B in seconds)."""
    layouts = placeholder_layouts(spec)
    return nnx.eval_shape(lambda: Llama(spec, layouts, rngs=nnx.Rngs(params=0)))


def dense_param_count(spec: LlamaSpec) -> int:
    """Parameters with every linear dense: embeddings, head, layers (linears + 2 norms), final norm."""
    L, d, V = spec.shape.n_layers, spec.shape.d_model, spec.vocab_size
    per_layer = sum(lin.n_in * lin.n_out for _, lin in spec.linears) + 2 * d
    return 2 * V * d + L * per_layer + d
