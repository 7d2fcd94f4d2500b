"""Every command refuses a bad path and a bad argument with one line and exit status 2, before
anything is written: no file or directory appears, and no traceback without --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsetrain.cli import main
from tests.conftest import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes/tiny-sparse.yaml")


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused(capsys, argv: list[str]) -> str:
    """stderr of `sparsetrain ARGV`, asserted to be exit status 2 without a traceback."""
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's usage error
        status = e.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and err.strip(), err
    last = err.strip().splitlines()[-1]
    assert last.startswith("sparsetrain"), err
    if last.startswith("sparsetrain: "):  # one of ours: the only line
        assert len(err.strip().splitlines()) == 1, err
    return last


CASES = {
    "train: missing recipe": (["train", "nope.yaml"], "does not exist"),
    "train: bad --stop-after": (["train", RECIPE, "--stop-after", "0"], "--stop-after"),
    "info: missing recipe": (["info", "nope.yaml"], "does not exist"),
    "info: bad --mesh": (["info", RECIPE, "--mesh", "1x2"], "--mesh"),
    "info: bad --device": (["info", RECIPE, "--mesh", "1x1x1", "--device", "tpu"], "--device"),
    "eval: missing run": (["eval", "runs/nope"], "does not exist"),
    "eval: a recipe file": (["eval", RECIPE], "expects a run directory; "),
    "eval: bad --step": (["eval", "runs/nope", "--step", "0"], "--step"),
    "compare: missing run": (["compare", "runs/nope"], "does not exist"),
    "compare: bad --batches": (["compare", "runs/nope", "--batches", "x"], "--batches"),
    "generate: missing run": (["generate", "runs/nope", "--prompt", "x"], "does not exist"),
    "generate: bad --samples": (["generate", "runs/nope", "--prompt", "x", "--samples", "0"],
                                "--samples"),
    "import-hf: missing source": (["import-hf", "./nope", "--out", "runs/gpt2"], "not a local directory"),
    "import-hf: no --out": (["import-hf", "./nope"], "--out"),
    "export-hf: missing run": (["export-hf", "runs/nope", "--out", "hf"], "does not exist"),
    "export-hf: bad --step": (["export-hf", "runs/nope", "--out", "hf", "--step", "-1"], "--step"),
    "emulate: missing recipe": (["emulate", "nope.yaml"], "does not exist"),
    "emulate: bad --sockets": (["emulate", RECIPE, "--sockets", "0"], "--sockets"),
    "emulate: missing --from-run": (["emulate", RECIPE, "--from-run", "runs/nope"], "does not exist"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_path_or_argument_is_one_line_and_creates_nothing(case, capsys, tmp_path, monkeypatch):
    argv, says = CASES[case]
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    line = refused(capsys, argv)
    assert says in line, line
    assert snapshot(tmp_path) == before


def test_eval_of_a_recipe_says_to_train_it_first(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, ["eval", RECIPE])
    assert line == (f"sparsetrain: input error: eval expects a run directory; {RECIPE} is a recipe file - "
                    f"train it first (sparsetrain train {RECIPE}) and pass its run directory "
                    "(run.out_dir, by default runs/<run.name>)")


def run_checks(capsys, tmp_path, text_corpus, overrides: list[str]) -> str:
    """Train a recipe whose run directory is the default runs/t under tmp_path; must be refused
    with nothing created (no runs/, no tokenizer, recipe.yaml or W&B directory)."""
    recipe = tiny_recipe(tmp_path / "recipe", text_corpus, run={"out_dir": None, "wandb": "offline"})
    before = snapshot(tmp_path)
    line = refused(capsys, ["train", str(recipe), *sum((["--set", o] for o in overrides), [])])
    assert snapshot(tmp_path) == before and not (tmp_path / "runs").exists()
    return line


def test_a_mesh_larger_than_the_devices_is_refused_before_anything_is_written(
        capsys, tmp_path, monkeypatch, text_corpus):
    monkeypatch.chdir(tmp_path)
    line = run_checks(capsys, tmp_path, text_corpus, ["run.mesh_fsdp=64", "data.batch_size=64"])
    assert "run.mesh_data*mesh_fsdp*mesh_tensor: 64" in line


def test_a_hub_dataset_name_offline_is_refused_before_anything_is_written(
        capsys, tmp_path, monkeypatch, text_corpus):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = run_checks(capsys, tmp_path, text_corpus, ["data.dataset=someone/no-such-corpus"])
    assert "data.dataset" in line and "cannot be reached (offline)" in line


def test_a_bad_kernel_choice_is_one_line_in_a_fresh_process(tmp_path):
    """$SPARSETRAIN_KERNEL is read when the kernels are imported, before any command runs."""
    done = subprocess.run([sys.executable, "-m", "sparsetrain.cli", "info", RECIPE], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "SPARSETRAIN_KERNEL": "cuda"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "sparsetrain: input error: SPARSETRAIN_KERNEL: 'cuda' is not allowed; expected one of "
        "['auto', 'ffi', 'jax', 'pallas']"]
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_command_on_one_line(capsys):
    from sparsetrain.cli import COMMANDS

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {}
    for i, line in enumerate(lines):
        words = line.split()
        if line.startswith("    ") and words and words[0] in COMMANDS:
            listed[words[0]] = len(words) > 1 and not lines[i + 1].startswith(" " * 8)
    assert listed == {name: True for name in COMMANDS}
