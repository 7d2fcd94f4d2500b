"""The paths a command is given, checked before anything is read, created or compiled.

A command that reads a run (`eval`, `compare`, `generate`, `export-hf`, `emulate --from-run`)
calls `run_directory` first, so `sparsetrain eval runs/nope` creates nothing (a checkpoint
manager opened on a missing directory would create `runs/nope/checkpoints/`), and a recipe file
given in place of a run gets the one line that says to train it first. A command that writes a
new directory calls `new_directory`.
"""

from __future__ import annotations

import os
from pathlib import Path

from sparsetrain.errors import InputError

RECIPE_SUFFIXES = (".yaml", ".yml")


def run_directory(path: str | os.PathLike, command: str) -> Path:
    """`path` as a run directory with at least one checkpoint step folder.

    Raises:
        InputError: `path` does not exist, is a file (a recipe: "train it first"), or holds no
            checkpoints/ with a step in it.
    """
    p = Path(path)
    if p.is_file() and p.suffix in RECIPE_SUFFIXES:
        raise InputError(f"{command} expects a run directory; {path} is a recipe file - train it "
                         f"first (sparsetrain train {path}) and pass its run directory "
                         "(run.out_dir, by default runs/<run.name>)")
    if p.exists() and not p.is_dir():
        raise InputError(f"{command} expects a run directory; {path} is a file")
    if not p.is_dir():
        raise InputError(f"{command}: run directory {str(path)!r} does not exist")
    ckpts = p / "checkpoints"
    if not (ckpts.is_dir() and any(c.name.isdigit() and c.is_dir() for c in ckpts.iterdir())):
        raise InputError(f"{command}: {path} has no checkpoint (expected {ckpts}/<step>/, written "
                         "by `sparsetrain train` or `sparsetrain import-hf`)")
    return p


def new_directory(path: str | os.PathLike, flag: str) -> Path:
    """`path` as a directory to create: missing or empty, under a writable existing folder.

    Raises:
        InputError: `path` is a file or a non-empty directory, or cannot be created.
    """
    p = Path(path)
    if p.exists() and not (p.is_dir() and not any(p.iterdir())):
        raise InputError(f"{flag} {path}: exists and is not an empty directory; choose a new "
                         "directory (nothing was written)")
    parent = next(q for q in (p.absolute(), *p.absolute().parents) if q.exists())
    if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise InputError(f"{flag} {path}: cannot be created ({parent} is not a writable directory)")
    return p
