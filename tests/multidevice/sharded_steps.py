"""Five train steps of a dense and a sparse tiny GPT on one device and on (data, fsdp, tensor)
meshes 2x2x2, 1x8x1 and 1x2x4 of 8 CPU devices, all in this one process (one JAX start, one
single-device reference per model). Prints one JSON line: per model the one-device losses, and
per mesh the losses, the kernel named by `kernel_backend()` / `kernel_backend_info()` under the
mesh, and the custom calls of the compiled step with their per-device result shapes.

Needs XLA_FLAGS=--xla_force_host_platform_device_count=8 set before JAX starts (the test runs this
file in a subprocess). The one-device run forces the compiled kernels (`use_kernel_backend`:
with 8 devices and no mesh in force 'auto' would take the pure-JAX ones, whose sparse train step
compiles ~4x slower), so this compares the split kernels with the whole ones; the whole ones are
compared with the pure-JAX and dense references in test_sparsity_ffi.py and test_attention.py.
"""

import json
import re

import jax
import numpy as np

from sparsetrain.config import Config, from_dict
from sparsetrain.kernels import ffi
from sparsetrain.kernels.dispatch import kernel_backend, kernel_backend_info, use_kernel_backend
from sparsetrain.models.gpt import GPTSpec, build_model
from sparsetrain.training.optim import make_optimizer
from sparsetrain.training.sharding import batch_sharding, make_mesh, tree_shardings
from sparsetrain.training.step import ModelFunctions, init_state, make_train_step

MESHES = ((2, 2, 2), (1, 8, 1), (1, 2, 4))
STEPS, BATCH, SEQ, VOCAB = 5, 8, 8, 64
TARGETS = (ffi.FORWARD_TARGET, ffi.BACKWARD_TARGET, ffi.ATTENTION_PACKED_FORWARD_TARGET,
           ffi.ATTENTION_PACKED_BACKWARD_TARGET)
# The tiniest GPT that still shards: 4 heads of 16, width 64, blocks of 16 (the smallest allowed).
# Block-columns qkv 12, mlp_up 16, attn_out and mlp_down 4: stored blocks are split over
# (tensor, fsdp) where that divides (all-gathered over fsdp) and kept whole elsewhere.
MODEL = {"preset": "tiny", "n_layers": 1, "d_model": 64, "n_heads": 4, "context": SEQ}
SPARSITY = {"pattern": "random_balanced", "density": 0.5, "block": 16}

rng = np.random.default_rng(0)
batches = [{"tokens": rng.integers(0, VOCAB, (BATCH, SEQ), dtype=np.int32),
            "targets": rng.integers(0, VOCAB, (BATCH, SEQ), dtype=np.int32)} for _ in range(STEPS)]


def custom_calls(hlo: str) -> dict[str, list[str]]:
    """target -> the result shape text of each custom call to it in a compiled HLO module."""
    found: dict[str, list[str]] = {}
    for line in hlo.splitlines():
        m = re.search(r'custom_call_target="([^"]+)"', line)
        if m and m.group(1) in TARGETS:
            found.setdefault(m.group(1), []).append(line.split("=", 1)[1].split("custom-call(")[0].strip())
    return found


def run(cfg, mesh):
    """Losses of STEPS steps (and, on a mesh, what ran) from the same initial state and batches."""
    fns = ModelFunctions(build_model(GPTSpec.from_config(cfg), 0))
    tx, schedule = make_optimizer(cfg.optimizer, 10)
    state = init_state(fns, tx, 0)
    feed, out_shardings = list(batches), None
    if mesh is not None:
        shardings = tree_shardings(state, mesh)
        state, out_shardings = jax.device_put(state, shardings), (shardings, None)
        feed = [jax.device_put(b, batch_sharding(mesh)) for b in feed]
    step = make_train_step(fns, tx, schedule, out_shardings=out_shardings)
    compiled = step.lower(state, feed[0]).compile()  # one compile: its HLO is what runs
    losses = []
    for b in feed:
        state, m = compiled(state, b)
        losses.append(float(m["loss"]))
    return {"losses": losses, "kernel": kernel_backend(), "info": kernel_backend_info(),
            "custom_calls": custom_calls(compiled.as_text())}


out = {"devices": jax.device_count(), "no_mesh_kernel": kernel_backend(),
       "no_mesh_info": kernel_backend_info()}
for kind in ("dense", "sparse"):
    cfg = from_dict(Config, {"model": MODEL, "sparsity": SPARSITY if kind == "sparse" else {},
                             "data": {"vocab_size": VOCAB, "seq_len": SEQ, "batch_size": BATCH}})
    with use_kernel_backend("ffi"):
        out[kind] = {"single": run(cfg, None)}
    for shape in MESHES:
        mesh = make_mesh(*shape)
        with jax.set_mesh(mesh):
            out[kind]["x".join(map(str, shape))] = run(cfg, mesh)
print(json.dumps(out))
