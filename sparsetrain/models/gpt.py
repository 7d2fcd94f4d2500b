"""GPT in Flax NNX: learned positions, pre-LayerNorm, GELU MLP, tied embeddings, causal attention.

The decoder layers are stored stacked (every parameter has a leading layer axis) and run with
`jax.lax.scan`, so one layer body is traced whatever the depth; `remat` wraps that body in
`jax.checkpoint`; `unroll_layers` (default) has XLA unroll the scan when it compiles (on XLA:CPU a
rolled loop copies every layer's residuals into stacked buffers: ~0.4 s of a 2 s small-30m step).
Any of the four linear kinds (qkv, attn_out, mlp_up, mlp_down) can be block-sparse: it then stores only its nonzero blocks (`values`) and their block-row indices
(`row_indices`, a `BlockIndices` variable: integer, not trained, checkpointed) and multiplies with
`block_sparse_matmul`. Embeddings and the tied output head stay dense.

Besides `__call__` (a whole sequence), a GPT exposes the decoder protocol of
`sparsetrain.models.kv_cache` (`embed_tokens`, `attention_inputs`, `layer_output`, `logits`), so
`kv_cache.prefill` / `kv_cache.decode_step` run it with a KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sparsetrain.config import Config, ConfigError, ModelShape, linear_shapes
from sparsetrain.kernels.attention import causal_attention_dropout, causal_attention_packed, split_qkv
from sparsetrain.kernels import norm_gelu
from sparsetrain.kernels.fused_ops import (bias_gelu, cpu_fusions, head_cross_entropy,
                                           residual_gradient_barrier)
from sparsetrain.sparsity import BlockLayout, block_sparse_matmul, make_layout
from sparsetrain.sparsity.resolve import KindSparsity, resolve_sparsity


class BlockIndices(nnx.Variable):
    """Block-row indices of a sparse linear's stored blocks: int32, not trained, checkpointed."""


@dataclass(frozen=True)
class LinearSpec(KindSparsity):
    """One linear kind: (in, out) features, its resolved sparsity (fraction of blocks stored, square
    block size, final density; see sparsity/resolve.py) and whether it has a bias."""

    bias: bool = True


@dataclass(frozen=True)
class GPTSpec:
    """Everything static about a GPT: shape, vocabulary, numerics and each linear's sparsity."""

    shape: ModelShape
    vocab_size: int
    linears: tuple[tuple[str, LinearSpec], ...]
    pattern: str = "dense"
    pattern_seed: int = 0
    dtype: str = "float32"
    remat: bool = False
    unroll_layers: bool = True
    embd_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0

    @property
    def has_dropout(self) -> bool:
        return max(self.embd_dropout, self.attn_dropout, self.resid_dropout) > 0.0

    @classmethod
    def from_config(cls, cfg: Config, vocab_size: int | None = None, stored: bool = False) -> "GPTSpec":
        """The recipe's GPT. `stored`: linears store what training stores (a gradual flow's initial
        density), else the final density (`resolve_sparsity`)."""
        shape = cfg.shape()
        if shape.family != "gpt":
            raise ConfigError(f"model.preset: {cfg.model.preset!r} is not allowed here; allowed: a "
                              f"GPT preset ({shape.family} presets work with `sparsetrain info` "
                              "without --mesh and with `sparsetrain emulate`)")
        linears = tuple((kind, LinearSpec(k.n_in, k.n_out, k.density, k.block, k.final_density))
                        for kind, k in resolve_sparsity(cfg.sparsity, linear_shapes(shape), stored).items())
        return cls(shape=shape, vocab_size=vocab_size or cfg.data.vocab_size, linears=linears,
                   pattern=cfg.sparsity.pattern, pattern_seed=cfg.sparsity.seed,
                   dtype=cfg.model.dtype, remat=cfg.model.remat,
                   unroll_layers=cfg.model.unroll_layers, embd_dropout=cfg.model.embd_dropout,
                   attn_dropout=cfg.model.attn_dropout, resid_dropout=cfg.model.resid_dropout)

    def linear(self, kind: str) -> LinearSpec:
        return dict(self.linears)[kind]


def make_layouts(spec: GPTSpec) -> dict[str, list[BlockLayout]]:
    """The block layout of every sparse linear, one per layer (computed eagerly, outside jit)."""
    layouts = {}
    for i, (kind, lin) in enumerate(spec.linears):
        if not lin.sparse:
            continue
        keys = jax.random.split(jax.random.key(spec.pattern_seed * 7919 + i), spec.shape.n_layers)
        layouts[kind] = [
            make_layout(spec.pattern, (lin.n_in, lin.n_out), (lin.block, lin.block), lin.density, key=k)
            for k in keys
        ]
    return layouts


class StackedLinear(nnx.Module):
    """`n_layers` linears (n_in -> n_out), dense or block-sparse, stacked on axis 0.

    Dense: `kernel` (L, n_in, n_out). Sparse: `values` (L, n_col_blocks, k, bk, bn) and
    `row_indices` (L, n_col_blocks, k). Bias (when `lin.bias`): (L, n_out), zeros at init.
    """

    def __init__(self, n_layers: int, lin: LinearSpec, std: float, layouts, *, rngs: nnx.Rngs):
        self.spec = lin
        key = rngs.params()
        if lin.sparse:
            idx = jnp.stack([jnp.asarray(l.row_indices, jnp.int32) for l in layouts])
            n_col_blocks, k = idx.shape[1:]
            # Keep the output variance of a dense init: each output sees density * n_in inputs.
            scale = std / math.sqrt(lin.density)
            self.values = nnx.Param(
                scale * jax.random.normal(key, (n_layers, n_col_blocks, k, lin.block, lin.block)))
            self.row_indices = BlockIndices(idx)
        else:
            self.kernel = nnx.Param(std * jax.random.normal(key, (n_layers, lin.n_in, lin.n_out)))
        if lin.bias:
            self.bias = nnx.Param(jnp.zeros((n_layers, lin.n_out)))


def add_stacked_linears(module: nnx.Module, spec, layouts: dict[str, list[BlockLayout]],
                        rngs: nnx.Rngs) -> None:
    """One StackedLinear attribute per linear kind of `spec` (a GPTSpec or LlamaSpec), GPT-2 init:
    std 0.02, residual projections (attn_out, mlp_down) scaled by 1/sqrt(2 * n_layers)."""
    L = spec.shape.n_layers
    std, resid_std = 0.02, 0.02 / math.sqrt(2 * L)
    for kind, lin in spec.linears:
        s = resid_std if kind in ("attn_out", "mlp_down") else std
        setattr(module, kind, StackedLinear(L, lin, s, layouts.get(kind), rngs=rngs))


def linear_apply(p: dict, lin: LinearSpec, x: jax.Array, add_bias: bool = True) -> jax.Array:
    """Apply one layer's slice of a StackedLinear. x: (..., n_in) -> (..., n_out), x's dtype.

    `add_bias=False`: the product only (the caller fuses the bias into what follows).
    """
    with jax.named_scope("linear"):  # the scopes name the step's parts in profiles
        y = _product(p, lin, x)
    if not (lin.bias and add_bias):
        return y
    with jax.named_scope("bias"):
        return y + p["bias"].astype(x.dtype)


def _product(p: dict, lin: LinearSpec, x: jax.Array) -> jax.Array:
    if lin.sparse:
        layout = BlockLayout(row_indices=p["row_indices"], shape=(lin.n_in, lin.n_out),
                             block=(lin.block, lin.block))
        return block_sparse_matmul(x, p["values"].astype(x.dtype), layout)
    # Tokens flattened to one axis: XLA:CPU runs the backward's transposed dots ~1.4x faster
    # on 2-D operands than on (B, T, d) ones (measured on the tiny MLP).
    x2 = x.reshape(-1, lin.n_in)
    w = p["kernel"].astype(x.dtype)
    if x.dtype == jnp.float32:
        y2 = jnp.dot(x2, w)
    else:
        y2 = jnp.dot(x2, w, preferred_element_type=jnp.float32).astype(x.dtype)
    return y2.reshape(*x.shape[:-1], lin.n_out)


@jax.named_scope("layer_norm")
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the last axis, computed in float32, returned in x's dtype.

    For float32 on XLA:CPU: the compiled kernel (`norm_gelu.compiled_elementwise`), one pass each way.
    """
    if norm_gelu.compiled_elementwise(x.dtype):
        return norm_gelu.layer_norm(x, scale, bias, eps)
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps) * scale + bias).astype(x.dtype)


def attention_qkv(p: dict, x: jax.Array, spec: GPTSpec) -> jax.Array:
    """Queries, keys and values of one layer, packed as the qkv projection writes them:
    x (B, T, d) -> (B, T, 3, heads, head_dim)."""
    B, T, d = x.shape
    n_heads = spec.shape.n_heads
    h = layer_norm(x, p["ln1_scale"], p["ln1_bias"])
    qkv = linear_apply(p["qkv"], spec.linear("qkv"), h)
    return qkv.reshape(B, T, 3, n_heads, d // n_heads)


def attention_inputs(p: dict, x: jax.Array, spec: GPTSpec) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries, keys and values of one layer: x (B, T, d) -> three (B, T, heads, head_dim)."""
    return split_qkv(attention_qkv(p, x, spec))


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero each element with probability `rate`, scale the rest by 1/(1-rate).
    Identity when `key` is None or `rate` is 0 (evaluation, generation)."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def layer_output(p: dict, x: jax.Array, att: jax.Array, spec: GPTSpec,
                 key: jax.Array | None = None) -> jax.Array:
    """The rest of a layer after attention: x (B, T, d), att (B, T, heads, head_dim) -> (B, T, d).

    `key` (training only): residual dropout on the attention and MLP outputs, as GPT-2 does.
    """
    B, T, d = x.shape
    k1, k2 = jax.random.split(key) if key is not None else (None, None)
    compiled = norm_gelu.compiled_elementwise(x.dtype)
    out = spec.linear("attn_out")
    # attn_out's bias joins the residual add and ln2 in one compiled pass each way (when no
    # dropout comes between the bias and the add)
    fold = compiled and out.bias and (k1 is None or spec.resid_dropout == 0.0)
    a = dropout(linear_apply(p["attn_out"], out, att.reshape(B, T, d), add_bias=not fold),
                spec.resid_dropout, k1)
    if compiled:
        with jax.named_scope("layer_norm"):
            x, h = norm_gelu.add_layer_norm(x, a, p["ln2_scale"], p["ln2_bias"],
                                            a_bias=p["attn_out"]["bias"] if fold else None)
    else:
        with jax.named_scope("residual"):
            x = x + a
        h = layer_norm(x, p["ln2_scale"], p["ln2_bias"])
    up = spec.linear("mlp_up")
    if up.bias and cpu_fusions():  # bias and GELU in one pass each way
        u = linear_apply(p["mlp_up"], up, h, add_bias=False)
        with jax.named_scope("bias_gelu"):
            h = (norm_gelu.bias_gelu if compiled else bias_gelu)(u, p["mlp_up"]["bias"])
    else:
        h = jax.nn.gelu(linear_apply(p["mlp_up"], up, h))
    m = linear_apply(p["mlp_down"], spec.linear("mlp_down"), h)
    with jax.named_scope("residual"):
        return x + dropout(m, spec.resid_dropout, k2)


def decoder_layer(p: dict, x: jax.Array, spec: GPTSpec, key: jax.Array | None = None) -> jax.Array:
    """One pre-LN decoder layer. p: this layer's parameters; x: (B, T, d) -> (B, T, d).

    `key` (training with dropout): attention-probability and residual dropout of this layer.
    The layer's input gradient is materialised once (`residual_gradient_barrier`).
    """
    x = residual_gradient_barrier(x)
    qkv = attention_qkv(p, x, spec)
    if key is not None and spec.attn_dropout > 0.0:
        key, k_att = jax.random.split(key)
        with jax.named_scope("attention"):
            att = causal_attention_dropout(*split_qkv(qkv), spec.attn_dropout, k_att)
    else:
        with jax.named_scope("attention"):  # q, k, v read in place: no split copies
            att = causal_attention_packed(qkv)
    return layer_output(p, x, att, spec, key)


class DecoderStack(nnx.Module):
    """All decoder layers, parameters stacked on a leading layer axis, run with a scan."""

    def __init__(self, spec: GPTSpec, layouts: dict[str, list[BlockLayout]], *, rngs: nnx.Rngs):
        L, d = spec.shape.n_layers, spec.shape.d_model
        add_stacked_linears(self, spec, layouts, rngs)
        self.ln1_scale = nnx.Param(jnp.ones((L, d)))
        self.ln1_bias = nnx.Param(jnp.zeros((L, d)))
        self.ln2_scale = nnx.Param(jnp.ones((L, d)))
        self.ln2_bias = nnx.Param(jnp.zeros((L, d)))

    def __call__(self, x: jax.Array, spec: GPTSpec, keys: jax.Array | None = None) -> jax.Array:
        """x (B, T, d) -> (B, T, d); `keys` (n_layers,) random keys: dropout (training only)."""
        stacked = nnx.to_pure_dict(nnx.state(self))
        if keys is None:
            body = lambda x, p: (decoder_layer(p, x, spec), None)
        else:
            body = lambda x, pk: (decoder_layer(pk[0], x, spec, pk[1]), None)
            stacked = (stacked, keys)
        if spec.remat:
            body = jax.checkpoint(body)
        x, _ = jax.lax.scan(body, x, stacked, unroll=spec.unroll_layers)
        return x


class GPT(nnx.Module):
    """Decoder-only transformer. tokens int32 (B, T) -> logits float32 (B, T, vocab)."""

    def __init__(self, spec: GPTSpec, layouts: dict[str, list[BlockLayout]] | None = None,
                 *, rngs: nnx.Rngs):
        if layouts is None:
            layouts = make_layouts(spec)
        self.spec = spec
        d = spec.shape.d_model
        self.wte = nnx.Param(0.02 * jax.random.normal(rngs.params(), (spec.vocab_size, d)))
        self.wpe = nnx.Param(0.01 * jax.random.normal(rngs.params(), (spec.shape.context, d)))
        self.layers = DecoderStack(spec, layouts, rngs=rngs)
        self.ln_f_scale = nnx.Param(jnp.ones((d,)))
        self.ln_f_bias = nnx.Param(jnp.zeros((d,)))

    def __call__(self, tokens: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """`dropout_key`: a random key while training with dropout (the spec's rates), else None."""
        return self.logits(self.features(tokens, dropout_key))

    def mean_loss(self, tokens: jax.Array, targets: jax.Array,
                  dropout_key: jax.Array | None = None) -> jax.Array:
        """Mean next-token cross-entropy (nats): tokens, targets int32 (B, T) -> float32 ().

        For XLA:CPU the head and the loss are one custom-gradient function
        (`fused_ops.head_cross_entropy`); elsewhere softmax cross-entropy of `__call__`'s logits.
        """
        if not cpu_fusions():
            logits = self(tokens, dropout_key)
            with jax.named_scope("loss"):
                return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        x = self.features(tokens, dropout_key)
        x = layer_norm(x, self.ln_f_scale[...], self.ln_f_bias[...])
        d = self.spec.shape.d_model
        with jax.named_scope("head"):
            return head_cross_entropy(x.reshape(-1, d), self.wte[...], targets.reshape(-1))

    def features(self, tokens: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """tokens int32 (B, T) -> the last layer's output (B, T, d), before the final LayerNorm."""
        x = self.embed_tokens(tokens, 0)
        keys = None
        if dropout_key is not None and self.spec.has_dropout:
            k_embd, k_layers = jax.random.split(dropout_key)
            x = dropout(x, self.spec.embd_dropout, k_embd)
            keys = jax.random.split(k_layers, self.spec.shape.n_layers)
        return self.layers(x, self.spec, keys)

    # The decoder protocol of sparsetrain.models.kv_cache ---------------------------------------
    def embed_tokens(self, tokens: jax.Array, start: int | jax.Array) -> jax.Array:
        """tokens int32 (B, T) at positions start .. start+T-1 -> (B, T, d) in the compute dtype.

        `start`: int or int32 scalar array (a traced decode position); start + T <= context.
        """
        T = tokens.shape[-1]
        wpe = self.wpe[...]
        pos = wpe[:T] if isinstance(start, int) and start == 0 else jax.lax.dynamic_slice_in_dim(wpe, start, T)
        with jax.named_scope("embed"):
            return (self.wte[...][tokens] + pos).astype(jnp.dtype(self.spec.dtype))

    def attention_inputs(self, p: dict, x: jax.Array, start: int | jax.Array):
        """One layer's q, k, v (B, T, heads, head_dim); learned positions are already in x."""
        return attention_inputs(p, x, self.spec)

    def layer_output(self, p: dict, x: jax.Array, att: jax.Array) -> jax.Array:
        return layer_output(p, x, att, self.spec)

    def logits(self, x: jax.Array) -> jax.Array:
        """Final LayerNorm and the tied head: (..., d) -> float32 (..., vocab)."""
        dtype = jnp.dtype(self.spec.dtype)
        x = layer_norm(x, self.ln_f_scale[...], self.ln_f_bias[...])
        with jax.named_scope("head"):
            return jnp.dot(x, self.wte[...].astype(dtype).T, preferred_element_type=jnp.float32)


def build_model(spec: GPTSpec, seed: int) -> GPT:
    """A freshly initialised GPT (parameters from `seed`, sparsity pattern from the spec).

    Initialisation runs as one jitted program: compiling each parameter's random draw on its
    own costs a compile per shape.
    """
    layouts = make_layouts(spec)
    key = jax.random.key(seed, impl="rbg")  # compiles much faster than threefry on XLA:CPU
    return nnx.jit(lambda: GPT(spec, layouts, rngs=nnx.Rngs(params=key)))()


def placeholder_layouts(spec: GPTSpec) -> dict[str, list[BlockLayout]]:
    """Layouts of the right shapes with all-zero indices: enough for shape-only tracing."""
    layouts = {}
    for kind, lin in spec.linears:
        if lin.sparse:
            cols = lin.n_out // lin.block
            idx = np.zeros((cols, lin.k_stored), np.int32)
            layout = BlockLayout(row_indices=idx, shape=(lin.n_in, lin.n_out), block=(lin.block, lin.block))
            layouts[kind] = [layout] * spec.shape.n_layers
    return layouts


def abstract_model(spec: GPTSpec) -> GPT:
    """A GPT whose parameters are ShapeDtypeStructs: no weights allocated (for 13B accounting).

    The sparsity pattern is not drawn (indices are placeholders): only shapes are meaningful.
    """
    layouts = placeholder_layouts(spec)
    return nnx.eval_shape(lambda: GPT(spec, layouts, rngs=nnx.Rngs(params=0)))


def stored_layouts(model: GPT) -> dict[str, np.ndarray]:
    """Current block-row indices of each sparse linear: kind -> int (L, n_col_blocks, k)."""
    return {kind: np.asarray(getattr(model.layers, kind).row_indices[...])
            for kind, lin in model.spec.linears if lin.sparse}
