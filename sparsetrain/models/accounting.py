"""Parameter, byte and FLOP accounting of a GPT or Llama, dense-equivalent and as actually stored.

Works on real or abstract models (`abstract_model`: ShapeDtypeStruct leaves, nothing allocated),
so a GPT-13B or a Llama 3.1 405B is counted without its weights.

FLOPs follow the usual convention (Kaplan et al. 2020; PaLM appendix B): a matmul of a token
with an (in, out) weight costs 2*in*out FLOPs forward; attention scores and the weighted sum cost
2*2*T*d per token and layer forward; training (forward + backward) is 3x forward. "Effective"
FLOPs count only stored blocks of sparse linears: the work a block-sparse kernel really does.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx

from sparsetrain.models import llama
from sparsetrain.models.gpt import GPT, BlockIndices, GPTSpec


@dataclass(frozen=True)
class ModelCounts:
    """Parameters (dense-equivalent and stored), index entries and FLOPs per token of a GPT."""

    params_dense: int          # parameters if every linear were dense
    params_stored: int         # parameters actually stored (sparse linears: stored blocks only)
    index_entries: int         # int32 block indices of the sparse linears
    train_flops_per_token_dense: float
    train_flops_per_token_effective: float

    @property
    def param_bytes(self) -> int:
        """float32 parameters plus int32 indices, bytes."""
        return 4 * self.params_stored + 4 * self.index_entries


def _size(x) -> int:
    return int(np.prod(x.shape))


def count_params(model: GPT) -> tuple[int, int]:
    """(stored parameters, index entries) of a real or abstract model."""
    params = nnx.state(model, nnx.Param)
    indices = nnx.state(model, BlockIndices)
    return (sum(_size(x) for x in jax.tree.leaves(params)),
            sum(_size(x) for x in jax.tree.leaves(indices)))


def dense_param_count(spec: GPTSpec | llama.LlamaSpec) -> int:
    """Parameters of the same model with every linear dense."""
    if isinstance(spec, llama.LlamaSpec):
        return llama.dense_param_count(spec)
    L, d, ctx, V = spec.shape.n_layers, spec.shape.d_model, spec.shape.context, spec.vocab_size
    per_layer = sum(lin.n_in * lin.n_out + lin.n_out for _, lin in spec.linears) + 4 * d
    return V * d + ctx * d + L * per_layer + 2 * d


def train_flops_per_token(spec: GPTSpec, seq_len: int) -> tuple[float, float]:
    """(dense, effective) training FLOPs per token at sequence length `seq_len`."""
    L, d, V = spec.shape.n_layers, spec.shape.d_model, spec.vocab_size
    dense_lin = sum(2 * lin.n_in * lin.n_out for _, lin in spec.linears)
    eff_lin = sum(2 * lin.n_in * lin.n_out * _stored_fraction(lin) for _, lin in spec.linears)
    attention = 2 * 2 * seq_len * d
    head = 2 * d * V
    dense = 3 * (L * (dense_lin + attention) + head)
    effective = 3 * (L * (eff_lin + attention) + head)
    return float(dense), float(effective)


def _stored_fraction(lin) -> float:
    """Actual density after rounding to whole blocks per column."""
    return lin.k_stored / lin.n_row_blocks if lin.sparse else 1.0


def model_counts(model: GPT, seq_len: int) -> ModelCounts:
    stored, idx = count_params(model)
    dense_f, eff_f = train_flops_per_token(model.spec, seq_len)
    return ModelCounts(dense_param_count(model.spec), stored, idx, dense_f, eff_f)
