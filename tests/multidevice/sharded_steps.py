"""Run a few train steps of a tiny GPT on 1 device and on a data x fsdp x tensor mesh of 8 CPU
devices; print both loss sequences as JSON. Needs XLA_FLAGS=--xla_force_host_platform_device_count=8
set before JAX starts (the test runs this file in a subprocess)."""

import json
import sys

import jax
import numpy as np

from sparsetrain.config import Config, from_dict
from sparsetrain.models.gpt import GPTSpec, build_model
from sparsetrain.training.optim import make_optimizer
from sparsetrain.training.sharding import batch_sharding, make_mesh, per_device_bytes, tree_shardings
from sparsetrain.training.step import ModelFunctions, init_state, make_train_step

sparse = sys.argv[1] == "sparse"
raw = {"model": {"preset": "tiny", "n_layers": 2, "d_model": 64, "n_heads": 4, "context": 16},
       "sparsity": {"pattern": "random_balanced", "density": 0.5, "block": 16} if sparse else {},
       "data": {"vocab_size": 320, "seq_len": 16, "batch_size": 8}}
cfg = from_dict(Config, raw)
spec = GPTSpec.from_config(cfg)
rng = np.random.default_rng(0)
batches = [{"tokens": rng.integers(0, 320, (8, 16), dtype=np.int32),
            "targets": rng.integers(0, 320, (8, 16), dtype=np.int32)} for _ in range(4)]


def run(mesh):
    fns = ModelFunctions(build_model(spec, 0))
    tx, schedule = make_optimizer(cfg.optimizer, 10)
    state = init_state(fns, tx, 0)
    step = make_train_step(fns, tx, schedule)
    if mesh is not None:
        shardings = tree_shardings(state, mesh)
        state = jax.device_put(state, shardings)
    losses = []
    for b in batches:
        if mesh is not None:
            b = jax.device_put(b, batch_sharding(mesh))
        state, m = step(state, b)
        losses.append(float(m["loss"]))
    info = {}
    if mesh is not None:
        info["n_shards_wte"] = len({str(s.index) for s in state["params"]["wte"].addressable_shards})
        info["per_device_param_bytes"] = per_device_bytes(state["params"], tree_shardings(state["params"], mesh))
    return losses, info


single, _ = run(None)
sharded, info = run(make_mesh(2, 2, 2))
print(json.dumps({"devices": jax.device_count(), "single": single, "sharded": sharded, **info}))
