"""A full disk at each write point of a training run, on a real small file system (tmpfs).

Each case runs `sparsetrain train` in a subprocess (tests/disk_fill.py) whose run directory lies
on a tmpfs filled up just before one write: the tokenizer, recipe.yaml, the first metrics row,
the first checkpoint, a later checkpoint (failing part-way). Each must end with ONE line on
stderr (after the line saying where the run writes), exit status 4, no `*.tmp` file and no
partial checkpoint, the earlier checkpoints intact; after space is freed, `--resume` must end
with the parameters of the uninterrupted run. Mounting needs root: elsewhere these tests are
skipped, and test_faults.py's simulated ENOSPC covers the save path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsetrain.kernels.attention import attention_kernel
from sparsetrain.kernels.dispatch import kernel_backend, kernel_backend_info
from sparsetrain.training.start import restore_run
from tests.conftest import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4  # checkpoints at steps 2 and 4


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 8 MB tmpfs (a run here takes about 3 MB), unmounted after the module."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path_factory.mktemp("small_disk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A JAX compilation cache the subprocesses share (each would compile the same step)."""
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """One data.cache_dir for every run here (off the small disk: only run files are on it)."""
    return str(tmp_path_factory.mktemp("data_cache"))


def train_cli(point: str, disk: Path, recipe: Path, cache: Path, *args: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": str(cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "SPARSETRAIN_DEBUG": "0"}
    return subprocess.run([sys.executable, str(ROOT / "tests/disk_fill.py"), point, str(disk), "--",
                           "train", str(recipe), "--no-progress", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def empty(disk: Path) -> None:
    for path in disk.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def assert_one_line_and_nothing_partial(done, disk: Path, names: str) -> str:
    """Exit 4, one error line naming `names`, no traceback, no tmp file or partial checkpoint."""
    assert done.returncode == 4, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 2, done.stderr[-3000:]
    assert lines[0].startswith("t: writing ") and lines[1].startswith("sparsetrain: ")
    assert names in lines[1] and "disk is full" in lines[1], lines[1]
    left = [p for p in disk.rglob("*") if p.name.endswith(".tmp") or "orbax-checkpoint-tmp" in p.name]
    assert not left, left
    return lines[1]


@pytest.mark.parametrize("point, names, kept", [
    ("tokenizer", "tokenizer.json", None),
    ("recipe", "recipe.yaml", None),
    ("metrics:1", "metrics.jsonl", []),
    ("checkpoint:2", "checkpoint of step 2", []),
])
def test_a_full_disk_before_a_write_stops_with_one_line(small_disk, compile_cache, data_cache,
                                                        text_corpus, tmp_path, point, names, kept):
    empty(small_disk)
    recipe = tiny_recipe(tmp_path, text_corpus, data={"cache_dir": data_cache},
                         run={"out_dir": str(small_disk / "run"), "steps": STEPS})
    done = train_cli(point, small_disk, recipe, compile_cache)
    assert_one_line_and_nothing_partial(done, small_disk, names)
    run = small_disk / "run"
    if kept is None:  # failed before training started: the run directory it created is gone
        assert not run.exists()
    else:
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == kept


def test_a_disk_full_during_a_later_checkpoint_keeps_the_earlier_and_resume_matches(
        small_disk, compile_cache, data_cache, text_corpus, tmp_path):
    empty(small_disk)
    recipe = tiny_recipe(tmp_path, text_corpus, data={"cache_dir": data_cache},
                         run={"out_dir": str(small_disk / "run"), "steps": STEPS})
    reference = tiny_recipe(tmp_path / "ref", text_corpus, data={"cache_dir": data_cache},
                            run={"steps": STEPS})
    done = train_cli(f"checkpoint:{STEPS}:300000", small_disk, recipe, compile_cache)  # fails part-way
    line = assert_one_line_and_nothing_partial(done, small_disk, f"checkpoint of step {STEPS}")
    assert "(step 2) is kept" in line
    run = small_disk / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2"]
    _, _, kept, meta = restore_run(run, 2)  # intact: it restores
    assert meta["step"] == 2
    (small_disk / "fill").unlink()  # space freed
    resumed_run = train_cli("none", small_disk, recipe, compile_cache, "--resume")
    assert resumed_run.returncode == 0, resumed_run.stderr[-3000:]
    kernels = json.loads(resumed_run.stdout)["kernels"]  # what ran is recorded, and was said
    assert kernels["block_sparse"] == kernel_backend(jnp.float32)
    assert kernels["attention"] == attention_kernel(jnp.float32)
    assert resumed_run.stderr.splitlines()[0] == (
        f"t: writing {run}; kernels: block-sparse {kernel_backend_info()}, attention "
        f"{kernels['attention']}")
    assert train_cli("none", small_disk, reference, compile_cache).returncode == 0
    _, _, resumed, _ = restore_run(run)
    _, _, uninterrupted, _ = restore_run(tmp_path / "ref" / "run")
    for a, b in zip(jax.tree.leaves(resumed["params"]), jax.tree.leaves(uninterrupted["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
