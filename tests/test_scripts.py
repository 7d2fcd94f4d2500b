"""The user-facing scripts and the README's examples stay true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import dense_vs_sparse  # noqa: E402
import sweep  # noqa: E402

from tests.conftest import tiny_recipe  # noqa: E402


def test_sweep_validates_every_value_before_training(text_corpus, tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, text_corpus)
    assert sweep.main([str(recipe), "sparsity.density", "0.5", "7"]) == 2
    assert "sparsity.density: 7.0 is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_pair_validates_recipes_before_training(text_corpus, tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, text_corpus)
    assert dense_vs_sparse.main([str(recipe), "--set", "model.preset=gpt5", "--out", str(tmp_path / "p")]) == 2
    assert "model.preset: 'gpt5' is not allowed" in capsys.readouterr().err


def test_readme_error_example_is_what_the_cli_prints():
    readme = (ROOT / "README.md").read_text()
    cmd, shown = re.search(r"\$ (sparsetrain train recipes/tiny-sparse.yaml --set \S+)\n(.+)\n", readme).groups()
    out = subprocess.run([sys.executable, "-m", "sparsetrain.cli", *cmd.split()[1:]], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == shown.strip()
