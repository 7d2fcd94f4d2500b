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
                   "achievable_compute_fraction",
                   "block indices (concrete) from the recipe's initial layout"):
        assert needle in text
    data = json.loads((out / "report.json").read_text())
    s = data["summary"]
    assert s["sockets"] == 8 and 0 < s["rdu_step_s"] < s["gpu_dense_step_s"]
    # The headline: the dense recipe on GPUs that can hold it, and a decomposition that closes.
    assert "headline: systems that can each run this step" in text and "(fits)" in text
    assert s["gpus"] >= 8 and s["gpu_memory_bytes"] <= 80e9 and "TP" in s["gpu_plan"]
    h = s["headline"]
    parts = (h["sparsity_flop_reduction"] * h["peak_ratio_per_system"]
             * h["kernel_efficiency_ratio"] * h["mapping_ratio"])
    assert parts == pytest.approx(h["speedup_per_system"], rel=1e-6)
    assert h["speedup_per_system"] == pytest.approx(s["speedup_vs_gpu_dense"])
    assert 1 / 0.125 >= h["sparsity_flop_reduction"] > 3  # 87.5% sparse linears, dense head
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


def test_tiny_train_step_headline_on_one_gpu(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, tmp_path)
    assert main(["emulate", str(recipe), "--json", "--gpus", "1", "--sockets", "1"]) == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    assert s["gpus"] == 1 and s["gpu_plan"].startswith("TP 1 x PP 1 x DP 1")
    assert s["headline"]["speedup_per_chip"] == pytest.approx(s["headline"]["speedup_per_system"])


def test_a_gpu_count_no_plan_fits_is_refused_before_lowering(capsys):
    """GPT-3 13B with Adam needs > 200 GB of model state: no plan of 2 A100s holds it."""
    assert main(["emulate", "recipes/gpt3-13b-sparse.yaml", "--gpus", "2"]) == 2
    assert "none of the plans of 2 A100_80GB fits 80 GB per GPU" in capsys.readouterr().err


def test_bad_arguments_fail_with_exit_2(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, tmp_path)
    assert main(["emulate", str(recipe), "--chip", "a100"]) == 2
    assert "not an RDU" in capsys.readouterr().err
    assert main(["emulate", str(recipe), "--vs", "tpu"]) == 2
    assert "allowed" in capsys.readouterr().err
    for flag in ("--sockets", "--gpus"):  # argparse's usage error
        with pytest.raises(SystemExit) as stop:
            main(["emulate", str(recipe), flag, "0"])
        assert stop.value.code == 2 and f"{flag}: '0' is not allowed" in capsys.readouterr().err


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
    from sparsetrain.rdu.programs import program

    cfg = load_recipe("recipes/mistral-7b.yaml", check_data=False)
    fn, args = program(cfg, "prefill")
    logits, cache = jax.eval_shape(fn, *args)
    assert logits.shape == (1, 32000) and cache.k.shape == (32, 1, 4096, 8, 128)
    assert str(cache.k.dtype) == "bfloat16"
