"""`sparsetrain info RECIPE [--set k=v ...] [--json] [--mesh DxFxT] [--device NAME]`: parameters,
bytes and FLOPs of a recipe's model, without allocating it.

The model and its optimizer state are built with `nnx.eval_shape` / `jax.eval_shape`, so a
GPT-13B or a Llama 3.1 405B is counted from ShapeDtypeStructs in seconds and a few hundred MB.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from flax import nnx

from sparsetrain.commands.recipe_args import add_recipe_args
from sparsetrain.config import Config, load_recipe
from sparsetrain.models.accounting import model_counts
from sparsetrain.models.family import abstract_model, model_spec
from sparsetrain.training.memory_plan import DEVICE_MEMORY, format_plan, memory_plan, parse_mesh
from sparsetrain.training.optim import make_optimizer


def _bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def model_info(cfg: Config) -> dict:
    """Counts of the recipe's model (vocabulary = data.vocab_size) at data.seq_len."""
    spec = model_spec(cfg)
    model = abstract_model(spec)
    counts = model_counts(model, cfg.data.seq_len)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
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


def _memory_plan(cfg: Config, mesh_text: str, device: str) -> dict:
    """Plan on virtual CPU devices: set before JAX starts its backend (nothing has asked it yet)."""
    mesh = parse_mesh(mesh_text)
    n = mesh[0] * mesh[1] * mesh[2]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={n}")
    jax.config.update("jax_platforms", "cpu")
    if jax.device_count() < n:
        raise ValueError(f"--mesh: {mesh_text!r} needs {n} devices; JAX already started with "
                         f"{jax.device_count()} (run `sparsetrain info` in a fresh process)")
    return memory_plan(cfg, mesh, device)


def run(args: argparse.Namespace) -> int:
    if args.mesh:
        parse_mesh(args.mesh)  # a bad --mesh is refused before the model is built
    cfg = load_recipe(args.recipe, args.overrides, check_data=False)
    t0 = time.perf_counter()
    info = model_info(cfg)
    if args.mesh:
        info["memory_plan"] = _memory_plan(cfg, args.mesh, args.device)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(format_info(info))
    if args.mesh:
        print(format_plan(info["memory_plan"]))
    print(f"(from abstract shapes in {time.perf_counter() - t0:.1f} s)")
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain info`."""
    p = subparsers.add_parser("info", help="parameters, bytes and FLOPs of a recipe's model (nothing allocated)")
    add_recipe_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--mesh", default=None, metavar="DxFxT",
                   help="also plan per-device memory on a data x fsdp x tensor mesh, e.g. 1x8x1")
    p.add_argument("--device", default="h100-80gb", choices=list(DEVICE_MEMORY),
                   help="device of the memory plan (default h100-80gb)")
    p.set_defaults(run=run)
