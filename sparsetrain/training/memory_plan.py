"""Per-device memory of a training step on a device mesh, from an ahead-of-time compile.

Parameters and optimizer state are counted from their shardings (`sharding.tree_shardings`);
activations and other temporaries from XLA's own memory analysis of the train step compiled
for the mesh with abstract (ShapeDtypeStruct) inputs: nothing is allocated, so a GPT-13B plan
for 8 x 80 GB runs on a laptop CPU. The CPU needs as many (virtual) devices as the mesh:
`sparsetrain info --mesh` restarts itself with `--xla_force_host_platform_device_count`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from rdu_xla_backend.hardware import A100_40GB, A100_80GB, H100, H200

from sparsetrain.config import Config
from sparsetrain.kernels.dispatch import use_kernel_backend
from sparsetrain.models.gpt import GPTSpec, abstract_model
from sparsetrain.training.optim import make_optimizer
from sparsetrain.training.step import ModelFunctions, init_state, make_train_step
from sparsetrain.training.sharding import (
    batch_sharding, check_batch, make_mesh, per_device_bytes, tree_shardings,
)

# Bytes per device: the GPUs are described once, in rdu_xla_backend/hardware.py (from their
# datasheets).
DEVICE_MEMORY = {
    "h100-80gb": H100.hbm_bytes, "a100-80gb": A100_80GB.hbm_bytes, "a100-40gb": A100_40GB.hbm_bytes,
    "h200": H200.hbm_bytes,
}


def parse_mesh(text: str) -> tuple[int, int, int]:
    """'DATAxFSDPxTENSOR' (e.g. 1x8x1) -> (data, fsdp, tensor)."""
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"--mesh: {text!r} is not allowed; expected DATAxFSDPxTENSOR, e.g. 1x8x1")
    return parts


def target_config(cfg: Config) -> Config:
    """The recipe as the target accelerator compiles it: decoder layers scanned, not unrolled.

    `model.unroll_layers` only speeds up XLA:CPU (where a scanned layer body runs slower); an
    unrolled 40-layer step also keeps every layer's temporaries live at once in XLA's plan, so
    planning with it would report several times the memory a GPU run needs. The activation
    policy (`model.remat`) is the recipe's own.
    """
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, unroll_layers=False))


def memory_plan(cfg: Config, mesh_shape: tuple[int, int, int], device: str = "h100-80gb") -> dict:
    """Per-device bytes of params, optimizer state and step temporaries; whether it fits.

    Planned for the target platform's program whatever CPU-only speed settings say: layers
    scanned (`target_config`, whatever `model.unroll_layers` says) and the pure-JAX kernels and
    plain element-wise ops (`use_kernel_backend("jax")`), not XLA:CPU's compiled kernels and fused
    pieces. Returns byte counts (ints) per device and "fits" (total <= the device's memory).
    """
    if device not in DEVICE_MEMORY:
        raise ValueError(f"--device: {device!r} is not allowed; allowed: {', '.join(DEVICE_MEMORY)}")
    cfg = target_config(cfg)
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
    check_batch(cfg.data.batch_size, mesh)
    fns = ModelFunctions(abstract_model(GPTSpec.from_config(cfg)))
    tx, schedule = make_optimizer(cfg.optimizer, cfg.run.steps)
    state = jax.eval_shape(lambda: init_state(fns, tx, cfg.run.seed))
    shardings = tree_shardings(state, mesh)
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  state, shardings)
    bs = batch_sharding(mesh)
    tokens = jax.ShapeDtypeStruct((cfg.data.batch_size, cfg.data.seq_len), np.int32, sharding=bs)
    step = make_train_step(fns, tx, schedule, out_shardings=(shardings, None))
    with use_kernel_backend("jax"):  # the portable ops a GPU compiles, not XLA:CPU's fused pieces
        compiled = step.lower(abstract_state, {"tokens": tokens, "targets": tokens}).compile()
    analysis = compiled.memory_analysis()
    params_b = per_device_bytes(state["params"], shardings["params"])
    opt_b = per_device_bytes(state["opt_state"], shardings["opt_state"])
    temp_b = int(analysis.temp_size_in_bytes) if analysis is not None else 0
    total = params_b + opt_b + per_device_bytes(state["indices"], shardings["indices"]) + temp_b
    capacity = DEVICE_MEMORY[device]
    return {"mesh": dict(zip(("data", "fsdp", "tensor"), mesh_shape)), "device": device,
            "device_bytes": capacity, "params_bytes": params_b, "optimizer_bytes": opt_b,
            "activation_and_temp_bytes": temp_b, "total_bytes": total, "fits": total <= capacity,
            "batch_per_device": cfg.data.batch_size // (mesh_shape[0] * mesh_shape[1]),
            "remat": cfg.model.remat}


def format_plan(plan: dict) -> str:
    gb = lambda b: f"{b / 1e9:8.2f} GB"
    m = plan["mesh"]
    return "\n".join([
        f"mesh             data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']} on {plan['device']} "
        f"({plan['device_bytes'] / 1e9:.0f} GB), {plan['batch_per_device']} sequences per device",
        f"per device       params {gb(plan['params_bytes'])}, optimizer {gb(plan['optimizer_bytes'])}, "
        f"activations+temporaries {gb(plan['activation_and_temp_bytes'])} (XLA memory analysis)",
        f"total            {gb(plan['total_bytes'])} per device: "
        + ("fits" if plan["fits"] else "does not fit"),
    ])
