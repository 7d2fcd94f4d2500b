"""Model shapes: the `ModelShape` of a preset and the (in, out) features of each linear kind.

Shapes of the GPT-2 (Radford et al. 2019) and GPT-3 (Brown et al. 2020, Table 2.1) papers and of
the Llama family (see the comment above PRESETS). Recipes name a preset in `model.preset`
(sparsetrain/config/recipe.py) and may override its layers, width, heads and context.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# Presets: shapes of the GPT-2 (Radford et al. 2019) and GPT-3 (Brown et al. 2020, Table
# 2.1) papers. GPT-3 1.3B lists 24 heads of 128 (3072 != 2048 wide); we use 16 heads of 128.
# GPT-3 13B lists width 5140; we use 5120 (divisible by 40 heads and by block sizes).
# Llama-family presets (RMSNorm, rotary positions, SwiGLU, grouped-query attention, untied head):
# Llama 2 (Touvron et al. 2023, Table 1 and the released config), Llama 3.1 (Llama Team 2024,
# "The Llama 3 Herd of Models", Table 3), Mistral 7B v0.1 (Jiang et al. 2023, Table 1; its 4096-token
# sliding attention window is not modelled: identical for sequences up to 4096 tokens).
# ---------------------------------------------------------------------------------------------
MODEL_FAMILIES = ("gpt", "llama")
TRAINABLE_FAMILIES = ("gpt",)  # Llama presets are for `info` and `emulate` (and KV-cache inference)


@dataclass(frozen=True)
class ModelShape:
    """The resolved shape of a model: layers, width, heads, context (tokens), and for the llama
    family its key/value heads, SwiGLU width, fixed vocabulary and RoPE base."""

    n_layers: int
    d_model: int
    n_heads: int
    context: int
    family: str = "gpt"               # one of MODEL_FAMILIES
    n_kv_heads: int | None = None     # llama: key/value heads (grouped-query); None = n_heads
    ffn: int | None = None            # llama: SwiGLU hidden width; None = 4 * d_model (GPT MLP)
    vocab: int | None = None          # vocabulary of the published tokenizer; None = data.vocab_size
    rope_theta: float = 10000.0       # llama: rotary position base

    @property
    def d_ff(self) -> int:
        return self.ffn or 4 * self.d_model

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(4, 256, 4, 256),
    "small-30m": ModelShape(8, 512, 8, 256),
    "gpt2-small": ModelShape(12, 768, 12, 1024),
    "gpt2-medium": ModelShape(24, 1024, 16, 1024),
    "gpt2-large": ModelShape(36, 1280, 20, 1024),
    "gpt2-xl": ModelShape(48, 1600, 25, 1024),
    "gpt3-1.3b": ModelShape(24, 2048, 16, 2048),
    "gpt3-2.7b": ModelShape(32, 2560, 32, 2048),
    "gpt3-6.7b": ModelShape(32, 4096, 32, 2048),
    "gpt3-13b": ModelShape(40, 5120, 40, 2048),
    # name: (layers, width, heads, context, family, kv heads, SwiGLU width, vocab, RoPE base)
    "llama-tiny": ModelShape(2, 64, 4, 64, "llama", 2, 128, None, 10000.0),
    "llama2-7b": ModelShape(32, 4096, 32, 4096, "llama", 32, 11008, 32000, 10000.0),
    "llama3.1-8b": ModelShape(32, 4096, 32, 131072, "llama", 8, 14336, 128256, 500000.0),
    "llama3.1-70b": ModelShape(80, 8192, 64, 131072, "llama", 8, 28672, 128256, 500000.0),
    "llama3.1-405b": ModelShape(126, 16384, 128, 131072, "llama", 8, 53248, 128256, 500000.0),
    "mistral-7b": ModelShape(32, 4096, 32, 8192, "llama", 8, 14336, 32000, 10000.0),
}

def linear_shapes(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear kind of a decoder layer.

    llama: qkv holds the query heads and the (fewer) key/value heads; mlp_up holds the SwiGLU
    gate and up projections side by side (2 * ffn outputs).
    """
    d, ff = shape.d_model, shape.d_ff
    if shape.family == "llama":
        qkv = (shape.n_heads + 2 * shape.kv_heads) * shape.head_dim
        return {"qkv": (d, qkv), "attn_out": (d, d), "mlp_up": (d, 2 * ff), "mlp_down": (ff, d)}
    return {"qkv": (d, 3 * d), "attn_out": (d, d), "mlp_up": (d, ff), "mlp_down": (ff, d)}
