"""Damaged run files: every file a run leaves is truncated, deleted or garbled, and every command
that reads it must say so in one line naming the file, exit with the documented status, change
nothing on disk, and (for a damaged checkpoint) carry on from the previous one.

One tiny run is trained once for the module (checkpoints every step, the newest 2 kept, stopped
after step 3 of 6) and copied per case, plus one uninterrupted run as the reference for final
parameters. Commands run in-process through `sparsetrain.cli.main`. The cheap checks (which
checkpoint restores, the message, the exit status, the files left) cover every case; resuming
to the end and comparing the final parameters with the uninterrupted run's is done for a
representative subset (a garbled array file, which only the CRC-32 catches, resumed twice to
check retention too, and a deleted meta item), since each resume costs a compile.

Checkpoint item files: the largest OCDBT data file of the state (the arrays), the state's
`manifest.ocdbt`, the `meta` JSON item, and `_CHECKPOINT_METADATA` (Orbax does not need it to
restore, so damaging it leaves the checkpoint usable). Run files and the commands that read them:
`tokenizer.json` (train --resume, eval, generate, compare), `recipe.yaml` (only train, when it is
the recipe named on the command line: bad input, exit 2; eval, generate and compare use the
checkpoint's own copy, so compare still works), `metrics.jsonl` (train --resume, compare; a torn
last line is accepted) and `summary.json` (compare, and train --resume of a finished run).
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from sparsetrain.cli import main
from sparsetrain.config import Config, from_dict
from sparsetrain.errors import CheckpointMismatchError
from sparsetrain.training.checkpoint import Checkpointer
from sparsetrain.training.start import restore_run
from sparsetrain.training.step import build_setup
from sparsetrain.training.tracking import read_jsonl
from tests.conftest import tiny_recipe

STEPS, STOPPED_AT, KEEP = 6, 3, 2
DAMAGES = ("truncate", "delete", "garble")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text_corpus):
    """The interrupted base run (checkpoints 2 and 3 of 6) and the uninterrupted reference."""
    root = tmp_path_factory.mktemp("damaged_runs")
    recipe = tiny_recipe(root, text_corpus, run={"steps": STEPS, "checkpoint_every": 1, "keep_checkpoints": KEEP})
    base, reference = root / "base", root / "reference"
    assert _train(recipe, base, "--stop-after", str(STOPPED_AT), resume=False) == 0
    assert _train(recipe, reference, resume=False) == 0
    return SimpleNamespace(recipe=recipe, base=base, reference=reference, final=_params(reference))


def _train(recipe: Path, out: Path, *extra: str, resume: bool = True) -> int:
    return main(["train", str(recipe), "--no-progress", "--set", f"run.out_dir={out}",
                 *(["--resume"] if resume else []), *extra])


def _params(run: Path) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(restore_run(run)[2]["params"])]


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "run"))


def _damage(path: Path, how: str) -> None:
    """Truncate to half, delete, or flip 16 bytes in the middle (XOR 0xFF)."""
    data = bytearray(path.read_bytes())
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        mid = len(data) // 2
        data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
        path.write_bytes(bytes(data))


def _item_file(step_dir: Path, kind: str) -> Path:
    if kind == "arrays":
        return max((step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
    return step_dir / {"manifest": "state/manifest.ocdbt", "meta": "meta/metadata",
                       "checkpoint_metadata": "_CHECKPOINT_METADATA"}[kind]


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line(err: str) -> str:
    """The single `sparsetrain:` line of stderr (there must be exactly one, and no traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("sparsetrain:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def unraisable(monkeypatch):
    """What reaches Python's unraisable-exception hook (printed to stderr outside pytest)."""
    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(f"{u.exc_type.__name__}: {u.exc_value}"))
    yield seen
    time.sleep(0.2)  # TensorStore's callbacks of a failed read arrive from its own threads
    gc.collect()
    assert seen == []


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", ["arrays", "manifest", "meta", "checkpoint_metadata"])
def test_eval_skips_a_damaged_newest_checkpoint_and_keeps_it(runs, tmp_path, capsys, unraisable, kind, how):
    run = _copy(runs.base, tmp_path)
    ckpt_dir = run / "checkpoints"
    _damage(_item_file(ckpt_dir / str(STOPPED_AT), kind), how)
    before = _snapshot(ckpt_dir)
    capsys.readouterr()
    assert main(["eval", str(run), "--batches", "2", "--samples", "0"]) == 0
    err = capsys.readouterr().err
    damaged = kind != "checkpoint_metadata"  # Orbax restores without it
    step = STOPPED_AT - 1 if damaged else STOPPED_AT
    if damaged:
        line = _one_line(err)
        assert line.startswith(f"sparsetrain: checkpoint step {STOPPED_AT} in {ckpt_dir} is damaged (")
        assert line.endswith(f"it is kept for inspection and skipped; evaluating step {step}")
    else:
        assert " is damaged (" not in err
    assert _snapshot(ckpt_dir) == before  # the damaged checkpoint is kept byte for byte
    result = json.loads((run / f"eval-{step}.json").read_text())
    logged = {r["step"]: r["val_loss"] for r in read_jsonl(run / "metrics.jsonl") if "val_loss" in r}
    assert result["step"] == step and result["val_loss"] == pytest.approx(logged[step], rel=1e-5)


def _steps_on_disk(run: Path) -> set[int]:
    return {int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()}


def _expected_retention(run: Path, newest: int) -> set[int]:
    """The newest KEEP checkpoints plus the best by val_loss so far (every step is checkpointed and
    evaluated, so metrics.jsonl holds each checkpoint's val_loss; ties go to the newest)."""
    val = {r["step"]: r["val_loss"] for r in read_jsonl(run / "metrics.jsonl")}
    return set(range(newest - KEEP + 1, newest + 1)) | {min(val, key=lambda s: (val[s], -s))}


def test_two_resumes_past_a_garbled_checkpoint_keep_it_prune_the_rest_and_end_exact(runs, tmp_path, capsys):
    """A garbled array file restores without an error (zstd chunks carry no checksum): the CRC-32
    in meta catches it. The first resume skips it (and moves it aside when step 3 is saved
    again), the second continues normally; each leaves the newest KEEP checkpoints plus the best,
    counting those of earlier attempts, and the run ends with the uninterrupted run's parameters."""
    run = _copy(runs.base, tmp_path)
    ckpt_dir = run / "checkpoints"
    _damage(_item_file(ckpt_dir / str(STOPPED_AT), "arrays"), "garble")
    damaged = _snapshot(ckpt_dir / str(STOPPED_AT))
    capsys.readouterr()
    assert _train(runs.recipe, run, "--stop-after", "5") == 0
    err = capsys.readouterr().err
    assert f"checkpoint step {STOPPED_AT} in {ckpt_dir} is damaged (1 arrays differ from the CRC-32" in err
    assert f"skipped; resuming from step {STOPPED_AT - 1}" in err
    assert f"was moved to {ckpt_dir / 'damaged' / str(STOPPED_AT)} before saving" in err
    assert _snapshot(ckpt_dir / "damaged" / str(STOPPED_AT)) == damaged  # kept, not overwritten
    assert _steps_on_disk(run) == _expected_retention(run, 5)
    assert _train(runs.recipe, run) == 0
    assert _steps_on_disk(run) == _expected_retention(run, STEPS)
    for a, b in zip(_params(run), runs.final):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, STEPS + 1))


def test_resume_past_a_checkpoint_without_meta_ends_exact(runs, tmp_path, capsys):
    run = _copy(runs.base, tmp_path)
    ckpt_dir = run / "checkpoints"
    _damage(_item_file(ckpt_dir / str(STOPPED_AT), "meta"), "delete")
    capsys.readouterr()
    assert _train(runs.recipe, run) == 0
    err = capsys.readouterr().err
    assert f"checkpoint step {STOPPED_AT} in {ckpt_dir} is damaged (its meta does not read: " in err
    assert (ckpt_dir / "damaged" / str(STOPPED_AT) / "state").is_dir()
    for a, b in zip(_params(run), runs.final):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_no_checkpoint_restores_exit_5_and_nothing_changes(runs, tmp_path, capsys):
    run = _copy(runs.base, tmp_path)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir())
    for step in steps:
        _damage(_item_file(run / "checkpoints" / str(step), "meta"), "truncate")
    before = _snapshot(run)
    for argv in (["eval", str(run)], ["train", str(runs.recipe), "--no-progress", "--resume",
                                      "--set", f"run.out_dir={run}"]):
        capsys.readouterr()
        assert main(argv) == 5
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"sparsetrain: damaged file: no checkpoint in {run / 'checkpoints'} restores "
                               f"(tried steps {steps[::-1]};")
        assert _snapshot(run) == before


def test_a_chosen_step_that_is_absent_or_damaged_is_named(runs, tmp_path, capsys):
    run = _copy(runs.base, tmp_path)
    _damage(_item_file(run / "checkpoints" / str(STOPPED_AT), "arrays"), "truncate")
    capsys.readouterr()
    assert _train(runs.recipe, run, "--resume-step", "5") == 2
    assert f"step: 5 is not allowed; {run / 'checkpoints'} has checkpoints at steps [2, 3]" in \
        _one_line(capsys.readouterr().err)
    assert main(["eval", str(run), "--step", str(STOPPED_AT)]) == 5
    line = _one_line(capsys.readouterr().err)
    assert f"checkpoint step {STOPPED_AT} in {run / 'checkpoints'} is damaged (" in line
    assert line.endswith("other checkpoints: steps [2]")


def test_resuming_a_finished_run_changes_nothing(runs, tmp_path, capsys):
    run = _copy(runs.reference, tmp_path)
    before = _snapshot(run)
    capsys.readouterr()
    assert _train(runs.recipe, run) == 0
    line = _one_line(capsys.readouterr().err)
    assert line == (f"sparsetrain: t is finished (step {STEPS} of run.steps={STEPS}); its summary: "
                    f"{run / 'summary.json'}; nothing was changed")
    assert _snapshot(run) == before


RUN_FILE_CASES = [
    *[("tokenizer.json", how, cmd, 5) for how in DAMAGES for cmd in ("train", "eval", "generate", "compare")],
    ("recipe.yaml", "garble", "train-own-recipe", 2),  # the recipe given is input: not YAML, exit 2
    ("metrics.jsonl", "garble", "train", 5), ("metrics.jsonl", "garble", "compare", 5),
    ("metrics.jsonl", "delete", "compare", 5),
    ("summary.json", "truncate", "compare", 5), ("summary.json", "garble", "compare", 5),
    ("summary.json", "delete", "compare", 2),  # indistinguishable from a run that did not finish
    ("summary.json", "garble", "train-finished", 5),
]


@pytest.mark.parametrize("name,how,command,status", RUN_FILE_CASES)
def test_a_damaged_run_file_is_named_in_one_line(runs, tmp_path, capsys, name, how, command, status):
    run = _copy(runs.reference if command == "train-finished" else runs.base, tmp_path)
    _damage(run / name, how)
    before = _snapshot(run)
    argv = {"train": ["train", str(runs.recipe), "--no-progress", "--resume", "--set", f"run.out_dir={run}"],
            "train-own-recipe": ["train", str(run / name), "--no-progress", "--resume"],
            "eval": ["eval", str(run), "--samples", "0"],
            "generate": ["generate", str(run), "--prompt", "the king", "--max-new-tokens", "1"],
            "compare": ["compare", str(run), "--out", str(tmp_path / "compare")]}[command.replace("-finished", "")]
    capsys.readouterr()
    assert main(argv) == status
    line = _one_line(capsys.readouterr().err)
    assert str(run / name) in line or (status == 2 and f"{run}: no {name}" in line), line
    if status == 5:
        assert line.startswith("sparsetrain: damaged file: ") and ("restore" in line or "delete" in line)
    assert _snapshot(run) == before and not (tmp_path / "compare").exists()  # nothing written


def test_compare_uses_the_checkpoints_recipe_not_a_damaged_recipe_yaml(runs, tmp_path, capsys):
    run = _copy(runs.base, tmp_path)
    _damage(run / "recipe.yaml", "garble")
    assert main(["compare", str(run), "--batches", "1", "--out", str(tmp_path / "compare")]) == 0
    row = json.loads((tmp_path / "compare" / "compare.json").read_text())["rows"][0]
    assert row["pattern"] == "random_balanced" and row["step"] == STOPPED_AT


def test_a_checkpoint_of_another_shape_is_a_mismatch_not_damage(runs, tmp_path):
    """The stored layout (state/_METADATA) reads and differs from the model's: exit-2
    CheckpointMismatchError naming an array, and no older checkpoint is tried instead."""
    ckpt = Checkpointer(runs.base / "checkpoints", keep_last=KEEP)
    try:
        recipe = ckpt.read_meta(STOPPED_AT)["recipe"]
        recipe["model"]["d_model"] = 128
        wider = build_setup(from_dict(Config, recipe), 300, abstract=True).state
        shapes = r"row_indices: stored int32\[2, 4, 1\], model int32\[2, 8, 2\]"
        with pytest.raises(CheckpointMismatchError, match=r"does not match this recipe.s model .*" + shapes):
            ckpt.restore_newest(lambda meta: wider)
        assert ckpt.damaged == set()
    finally:
        ckpt.close()


def test_saving_over_an_existing_good_step_moves_it_to_replaced(runs, tmp_path, capsys):
    """As after `--resume-step 2` with step 3 on disk: the old step 3 goes to replaced/3 intact,
    the new one restores with its own CRC-32s, and nothing newer than the save is pruned."""
    run = _copy(runs.base, tmp_path)
    ckpt_dir = run / "checkpoints"
    old = _snapshot(ckpt_dir / str(STOPPED_AT))
    ckpt = Checkpointer(ckpt_dir, keep_last=KEEP)
    try:
        meta = ckpt.read_meta(2)
        abstract = build_setup(from_dict(Config, meta["recipe"]), int(meta["vocab_size"]), abstract=True).state
        state, meta = ckpt.restore(2, abstract)
        ckpt.save(STOPPED_AT, state, {**meta, "step": STOPPED_AT}, meta["val_loss"])
        assert f"was moved to {ckpt_dir / 'replaced' / str(STOPPED_AT)}" in capsys.readouterr().err
        again, _ = ckpt.restore(STOPPED_AT, abstract)
        for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    finally:
        ckpt.close()
    assert _snapshot(ckpt_dir / "replaced" / str(STOPPED_AT)) == old
    assert _steps_on_disk(run) == {2, STOPPED_AT}


def test_pruning_deletes_a_step_all_at_once_and_finishes_a_killed_deletion(tmp_path):
    """A pruned step is renamed to .deleting-<step> before it is removed, so a kill mid-deletion
    never leaves a half-deleted step that lists as a checkpoint; the next start removes it."""
    import jax.numpy as jnp

    from sparsetrain.training.checkpoint import DELETING_PREFIX, Checkpointer

    state = {"w": jnp.arange(6.0).reshape(2, 3)}
    ckpt = Checkpointer(tmp_path / "checkpoints", keep_last=1)
    for step, loss in ((1, 3.0), (2, 2.0), (3, 2.5)):
        ckpt.save(step, state, {"step": step, "val_loss": loss}, loss)
    assert ckpt.all_steps() == [2, 3]  # the newest and the best
    ckpt.close()
    assert not list((tmp_path / "checkpoints").glob(f"{DELETING_PREFIX}*"))
    left = tmp_path / "checkpoints" / f"{DELETING_PREFIX}1"  # as a kill during the removal leaves it
    (left / "state").mkdir(parents=True)
    ckpt = Checkpointer(tmp_path / "checkpoints", keep_last=1)
    assert ckpt.all_steps() == [2, 3] and not left.exists()
    ckpt.close()
