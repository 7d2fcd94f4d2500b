"""Writing a run's own files (tokenizer.json, recipe.yaml, metrics.jsonl, summary.json,
wandb_run_id) so that a failed write (a full disk, a lost mount) leaves no half-written file.

`write_atomic` writes a whole file to `NAME.tmp` and renames it over `NAME` (a rename within a
directory is atomic on POSIX file systems): readers see the old file or the new one, never a
part. `append_line` appends one line and, when the write fails, truncates the file back to its
length before, so a JSONL file never ends in a partial row. Either raises `WriteError` naming the
file; what was there before is unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from sparsetrain.errors import WriteError, is_disk_full


def _write_error(path: Path, e: BaseException) -> WriteError:
    full = " (the disk is full)" if is_disk_full(e) else ""
    return WriteError(f"writing {path} failed{full}: {type(e).__name__}: {e}; nothing "
                      "half-written is left and what was there before is unchanged")


def write_atomic(path: str | os.PathLike, content: str | bytes | Callable[[Path], None]) -> None:
    """Replace `path` by `content` (text, bytes, or a function that writes the file it is given).

    Raises:
        WriteError: the write failed; `path` is as it was and no `path.tmp` is left.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if callable(content):
            content(tmp)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
        os.replace(tmp, path)
    except Exception as e:  # OSError, or a library's own error wrapping one (tokenizers)
        tmp.unlink(missing_ok=True)
        raise _write_error(path, e) from e


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append `line` plus a newline to `path` (created if missing).

    Raises:
        WriteError: the append failed; the file is truncated back to its length before (removed
            if it did not exist).
    """
    path = Path(path)
    existed = path.exists()
    before = path.stat().st_size if existed else 0
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        try:
            os.truncate(path, before) if existed else path.unlink(missing_ok=True)
        except OSError:
            pass
        raise _write_error(path, e) from e
