"""Run `sparsetrain` in this process after arranging for a real file system to fill up at one
write point of a training run (used by test_full_disk.py in a subprocess).

    python tests/disk_fill.py POINT FILL_DIR -- sparsetrain-arguments...

POINT is `tokenizer` (before tokenizer.json is written), `recipe` (before recipe.yaml),
`checkpoint:N[:FREE]` (before the checkpoint of step N, leaving FREE bytes so that it fails
part-way), `metrics:N` (before the metrics row of step N)
or `none`. The file system is filled by writing FILL_DIR/fill until the kernel answers ENOSPC:
the failure the run meets is the file system's own, not a simulated one.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from sparsetrain.cli import main


def fill(directory: Path, leave: int = 0) -> None:
    """Write `directory/fill` until the file system has no space left, then free `leave` bytes
    (so that a write larger than that fails part-way)."""
    chunk = b"\0" * 4096
    path = directory / "fill"
    with open(path, "ab", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    os.truncate(path, max(0, path.stat().st_size - leave))


def install(point: str, directory: Path) -> None:
    """Wrap the function that runs just before the write of `point` so it fills the disk first."""
    import sparsetrain.data.pipeline as pipeline
    import sparsetrain.training.loop as loop
    from sparsetrain.training.checkpoint import Checkpointer
    from sparsetrain.training.tracking import Tracker

    name, _, rest = point.partition(":")
    step, _, leave = rest.partition(":")
    leave = int(leave or 0)
    if name == "tokenizer":
        real_write = pipeline.write_atomic
        pipeline.write_atomic = lambda *a: (fill(directory), real_write(*a))[1]
    elif name == "recipe":
        real_save = loop.save_recipe
        loop.save_recipe = lambda *a: (fill(directory), real_save(*a))[1]
    elif name == "checkpoint":
        real_ckpt = Checkpointer.save

        def save(self, at, *a, **k):
            if at == int(step):
                fill(directory, leave)
            return real_ckpt(self, at, *a, **k)
        Checkpointer.save = save
    elif name == "metrics":
        real_log = Tracker.log

        def log(self, metrics, at):
            if at == int(step):
                fill(directory, leave)
            return real_log(self, metrics, at)
        Tracker.log = log
    elif name != "none":
        raise ValueError(f"unknown write point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1], Path(sys.argv[2]))
    sys.exit(main(sys.argv[4:]))
