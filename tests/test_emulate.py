"""`sparsetrain emulate`: the 13B sparse recipe end to end from abstract shapes, modes, errors."""

import json

import pytest

from sparsetrain.cli import main
from tests.conftest import tiny_recipe


def test_13b_sparse_train_step_vs_a100(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["emulate", "recipes/gpt3-13b-sparse.yaml", "--chip", "sn40l", "--sockets", "8",
                 "--vs", "a100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| kernel | phase |" in text and "layers.backward" in text
    assert "speedup of SN40L x8 over dense A100_80GB x8" in text
    assert "plan: batch 1024" in text and "chose TP" in text
    for needle in ("simd_lanes_per_pcu", "launch_seconds_software", "inter_socket_bytes_per_s",
                   "achievable_compute_fraction", "expected-cost model"):
        assert needle in text
    data = json.loads((out / "report.json").read_text())
    s = data["summary"]
    assert s["sockets"] == 8 and 0 < s["rdu_step_s"] < s["gpu_dense_step_s"]
    plan = data["plan"]
    assert plan["tensor"] * plan["pipeline"] * plan["data"] == 8
    assert max(sum(m.values()) for m in plan["memory_per_socket"]) <= 64e9 + 1.5e12
    assert all(k["achieved_flops"] <= 638e12 for k in data["kernels"])
    for name in ("kernels.md", "timeline.png", "roofline.png"):
        assert (out / name).stat().st_size > 1000


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_tiny_inference_modes(tmp_path, mode, capsys):
    recipe = tiny_recipe(tmp_path, tmp_path)
    assert main(["emulate", str(recipe), "--mode", mode, "--json", "--vs", "h100"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["mode"] == mode and data["summary"]["gpu"] == "H100"
    assert {k["phase"] for k in data["kernels"]} == {"forward"}


def test_bad_arguments_fail_with_exit_2(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, tmp_path)
    assert main(["emulate", str(recipe), "--chip", "a100"]) == 2
    assert "not an RDU" in capsys.readouterr().err
    assert main(["emulate", str(recipe), "--vs", "tpu"]) == 2
    assert "allowed" in capsys.readouterr().err
    assert main(["emulate", str(recipe), "--sockets", "0"]) == 2


def test_llama_8b_decode_on_16_sockets_is_not_cut_into_micro_batches(capsys):
    assert main(["emulate", "recipes/llama3.1-8b.yaml", "--mode", "decode", "--sockets", "16",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plan"]["micro_batches"] == 1 and data["plan"]["data"] == 1
    assert data["options"]["parallel"] == "auto" and "schedule" not in data


def test_llama_8b_decode_reads_weights_and_kv_cache_once(capsys):
    """One new token of Llama 3.1 8B over an 8K KV cache: the FLOPs of a forward over one token
    plus attention over the cache, and at least the bf16 weights and the cache read from HBM."""
    assert main(["emulate", "recipes/llama3.1-8b.yaml", "--mode", "decode", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    L, d, T, V, kv = 32, 4096, 8192, 128256, 8 * 128
    linears = d * (d + 2 * kv) + d * d + d * 2 * 14336 + 14336 * d
    flops = 2 * L * linears + 2 * d * V + 4 * T * d * L   # layers, head, attention over the cache
    assert data["flops"] == pytest.approx(flops, rel=0.03)
    weights_and_cache = 2 * (L * linears + d * V) + 2 * 2 * L * T * kv   # bf16
    hbm = sum(k["hbm_bytes"] for k in data["kernels"])
    assert weights_and_cache <= hbm <= 1.25 * weights_and_cache
    assert any("KV cache" in line for line in data["summary"]["assumptions"])


def test_llama_prefill_program_fills_the_cache():
    import jax

    from sparsetrain.config import load_recipe
    from sparsetrain.emulate import program

    cfg = load_recipe("recipes/mistral-7b.yaml", check_data=False)
    fn, args = program(cfg, "prefill")
    logits, cache = jax.eval_shape(fn, *args)
    assert logits.shape == (1, 32000) and cache.k.shape == (32, 1, 4096, 8, 128)
    assert str(cache.k.dtype) == "bfloat16"
