"""`sparsetrain info`: parameters, bytes and FLOPs of a recipe's model, without allocating it.

The model and its optimizer state are built with `nnx.eval_shape` / `jax.eval_shape`, so a
GPT-13B or a Llama 3.1 405B is counted from ShapeDtypeStructs in seconds and a few hundred MB.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from sparsetrain.config import Config
from sparsetrain.models.accounting import model_counts
from sparsetrain.models.family import abstract_model, model_spec
from sparsetrain.training.optim import make_optimizer


def _bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def model_info(cfg: Config) -> dict:
    """Counts of the recipe's model (vocabulary = data.vocab_size) at data.seq_len."""
    spec = model_spec(cfg)
    model = abstract_model(spec)
    counts = model_counts(model, cfg.data.seq_len)
    params = nnx.state(model, nnx.Param).to_pure_dict()
    tx, _ = make_optimizer(cfg.optimizer, cfg.run.steps)
    opt_state = jax.eval_shape(tx.init, params)
    return {
        "preset": cfg.model.preset, "family": spec.shape.family,
        "layers": spec.shape.n_layers, "d_model": spec.shape.d_model,
        "heads": spec.shape.n_heads, "kv_heads": spec.shape.kv_heads, "d_ff": spec.shape.d_ff,
        "context": spec.shape.context, "vocab": spec.vocab_size,
        "params_dense": counts.params_dense,
        "params_stored": counts.params_stored,
        "stored_fraction": counts.params_stored / counts.params_dense,
        "index_entries": counts.index_entries,
        "weight_bytes": _bytes(params),
        "index_bytes": 4 * counts.index_entries,
        "optimizer_bytes": _bytes(opt_state),
        "train_flops_per_token_dense": counts.train_flops_per_token_dense,
        "train_flops_per_token_effective": counts.train_flops_per_token_effective,
        "linears": {kind: {"shape": [lin.n_in, lin.n_out], "density": lin.density, "block": lin.block}
                    for kind, lin in spec.linears},
    }


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {suffix}{unit}"
    return f"{n:.0f} {unit}"


def format_info(info: dict) -> str:
    lines = [
        f"model            {info['preset']} ({info['family']}): {info['layers']} layers, width "
        f"{info['d_model']}, {info['heads']} heads"
        + (f" ({info['kv_heads']} key/value)" if info["kv_heads"] != info["heads"] else "")
        + f", MLP {info['d_ff']}, context {info['context']}, vocab {info['vocab']}",
        f"parameters       {info['params_dense']:,} dense-equivalent, {info['params_stored']:,} stored "
        f"({100 * info['stored_fraction']:.1f}%)",
        f"weights          {_human(info['weight_bytes'], 'B')} float32 + {_human(info['index_bytes'], 'B')} "
        f"block indices",
        f"optimizer state  {_human(info['optimizer_bytes'], 'B')} (AdamW moments)",
        f"train FLOPs/token {_human(info['train_flops_per_token_dense'], 'FLOP')} dense, "
        f"{_human(info['train_flops_per_token_effective'], 'FLOP')} effective (stored blocks)",
    ]
    for kind, lin in info["linears"].items():
        lines.append(f"  {kind:<9} {lin['shape'][0]}x{lin['shape'][1]}  density {lin['density']:.4g}"
                     f"  block {lin['block']}")
    return "\n".join(lines)
