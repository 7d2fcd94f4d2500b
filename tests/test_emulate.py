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
    assert "pipeline parallel over 8 sockets" in text
    for needle in ("simd_lanes_per_pcu", "launch_seconds_software", "inter_socket_bytes_per_s",
                   "achievable_compute_fraction", "expected-cost model"):
        assert needle in text
    data = json.loads((out / "report.json").read_text())
    s = data["summary"]
    assert s["sockets"] == 8 and 0 < s["rdu_step_s"] < s["gpu_dense_step_s"]
    assert data["schedule"]["bubble_fraction"] > 0
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
