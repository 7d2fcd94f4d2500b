"""Sharding rules, and the same losses on meshes of 8 CPU devices as on one device, with the
compiled kernels running on every device's shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sparsetrain.kernels import ffi
from sparsetrain.kernels.mesh import split_axes
from sparsetrain.training.sharding import _fit, make_mesh, spec_for

ROOT = Path(__file__).resolve().parents[1]


class FakeMesh:
    """Just the axis sizes, for the pure spec rules."""

    def __init__(self, data=2, fsdp=2, tensor=2):
        self.shape = {"data": data, "fsdp": fsdp, "tensor": tensor}


def test_rules_by_kind_and_divisibility():
    m = FakeMesh()
    assert spec_for(["layers", "qkv", "kernel"], (2, 64, 192), m) == P(None, "fsdp", "tensor")
    assert spec_for(["layers", "mlp_down", "kernel"], (2, 256, 64), m) == P(None, "tensor", "fsdp")
    assert spec_for(["layers", "mlp_up", "values"], (2, 16, 2, 16, 16), m) == P(None, ("tensor", "fsdp"), None, None, None)
    assert spec_for(["layers", "mlp_up", "row_indices"], (2, 16, 2), m) == P(None, ("tensor", "fsdp"), None)
    assert spec_for(["layers", "qkv", "bias"], (2, 192), m) == P(None, "tensor")
    assert spec_for(["layers", "ln1_scale"], (2, 64), m) == P(None, None)
    assert spec_for(["wte"], (320, 64), m) == P("fsdp", None)
    # 25 heads x 64 = 1600 (gpt2-xl): tensor=2 divides, 3 does not -> replicated there
    assert _fit((None, "tensor"), (48, 1600), FakeMesh(tensor=3)) == P(None, None)
    assert spec_for(["wte"], (50257, 1600), m) == P(None, None)  # odd vocabulary: replicated


def test_mesh_size_must_match_devices():
    with pytest.raises(ValueError, match=r"mesh: data\*fsdp\*tensor = 2\*2\*2 = 8 is not allowed; "
                                         r"it must equal the number of devices, 1"):
        make_mesh(2, 2, 2, devices=jax.devices()[:1])


def test_split_axes_keeps_the_axes_that_divide_in_order():
    sizes = {"data": 2, "fsdp": 2, "tensor": 4}
    assert split_axes(16, ("tensor", "fsdp"), sizes) == ("tensor", "fsdp")
    assert split_axes(12, ("tensor", "fsdp"), sizes) == ("tensor",)  # 12 % 8: fsdp keeps it whole
    assert split_axes(6, ("tensor", "fsdp"), sizes) == ("fsdp",)
    assert split_axes(16, ("data", "fsdp"), {"data": 1, "fsdp": 8}) == ("fsdp",)  # size 1: unused


# A hang, not a busy machine, should stop these: their 8-device subprocess takes ~1-4 minutes.
SUBPROCESS_TIMEOUT_S = 900


def run_8_devices(script: str, *args: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "tests/multidevice" / script), *args],
                         env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_train_on_a_mesh_and_resume_on_another_device_count():
    """The real train loop (sparse GPT): steps 1-2 on a 2x2x2 mesh, saved, steps 3-4 resumed on 4
    devices: the same losses as on 1 device."""
    r = run_8_devices("sharded_train.py")
    assert len(r["single"]) == 4 and len(r["moved"]) == 4
    np.testing.assert_allclose(r["moved"], r["single"], rtol=2e-5)


@pytest.fixture(scope="module")
def mesh_steps() -> dict:
    """All six (model, mesh) cases of sharded_steps.py from one 8-device subprocess."""
    return run_8_devices("sharded_steps.py")


MESHES = {"2x2x2": (2, 2, 2), "1x8x1": (1, 8, 1), "1x2x4": (1, 2, 4)}


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_a_mesh_gives_the_single_device_losses_with_the_compiled_kernels_on_every_device(
        mesh_steps, kind, mesh):
    r, (data, fsdp, tensor) = mesh_steps[kind][mesh], MESHES[mesh]
    single = mesh_steps[kind]["single"]
    # with several devices and no mesh in force 'auto' takes pure JAX, and says so
    assert mesh_steps["devices"] == 8 and mesh_steps["no_mesh_kernel"] == "jax"
    assert mesh_steps["no_mesh_info"].startswith("jax: ") and "no mesh in force" in mesh_steps["no_mesh_info"]
    # the reference: the compiled kernels whole on one device (attention on all 8 x 4 heads)
    assert single["kernel"] == "ffi" and "shard_map" not in single["info"]
    assert [c.split("]")[0] for c in single["custom_calls"][ffi.ATTENTION_PACKED_FORWARD_TARGET]] == ["(f32[8,8,4,16"]
    assert len(r["losses"]) == 5
    np.testing.assert_allclose(r["losses"], single["losses"], rtol=1e-5)
    axes = " x ".join(n for n, s in zip(("data", "fsdp", "tensor"), MESHES[mesh]) if s > 1)
    assert r["kernel"] == "ffi"
    assert r["info"].startswith("ffi: ") and r["info"].endswith(f"on each of 8 devices (shard_map over {axes})")
    calls = r["custom_calls"]
    # each device runs attention on its shard: batch 8 over data x fsdp, 4 heads of 16 over tensor
    b, seq, heads = 8 // (data * fsdp), 8, 4 // tensor
    assert calls[ffi.ATTENTION_PACKED_FORWARD_TARGET] and calls[ffi.ATTENTION_PACKED_BACKWARD_TARGET]
    for result in calls[ffi.ATTENTION_PACKED_FORWARD_TARGET]:
        assert result.startswith(f"(f32[{b},{seq},{heads},16]"), result
    sparse_targets = {ffi.FORWARD_TARGET, ffi.BACKWARD_TARGET}
    if kind == "dense":
        assert not sparse_targets & set(calls)
        return
    assert sparse_targets <= set(calls)
    # y of qkv, attn_out, mlp_up, mlp_down on each device: its tokens x its share of the output
    # block-columns (all four split over tensor, row-parallel ones included)
    got = sorted(c.split("]")[0] + "]" for c in calls[ffi.FORWARD_TARGET])
    assert got == sorted(f"f32[{b * seq},{n // tensor}]" for n in (192, 64, 256, 64))


def test_memory_plan_splits_params_over_fsdp(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {preset: tiny, n_layers: 2, d_model: 64, n_heads: 4, context: 16}\n"
                      "data: {vocab_size: 320, seq_len: 16, batch_size: 4}\n")
    out = subprocess.run([sys.executable, "-m", "sparsetrain.cli", "info", str(recipe), "--json",
                          "--mesh", "1x4x1"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout)
    plan = info["memory_plan"]
    # every matrix dimension here divides by 4: kernels and embeddings are split 4 ways, the
    # small vectors (biases, norms) stay whole on every device
    assert info["weight_bytes"] / 4 < plan["params_bytes"] < info["weight_bytes"] / 4 * 1.1
    assert plan["optimizer_bytes"] >= 2 * plan["params_bytes"]
    assert plan["activation_and_temp_bytes"] > 0 and plan["fits"] is True
