"""What a recipe's `data.dataset` names on disk: local .txt/.json/.jsonl/.parquet files.

Used by the data pipeline to load them and by recipe validation to refuse a missing path before
anything is built (one definition of "a path", of the allowed extensions and of globs).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

# file extension -> Hugging Face `datasets` builder that reads it
BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_GLOB_CHARS = "*?["


def resolve_data_files(dataset: str) -> list[Path] | None:
    """Local data files that `dataset` names, sorted; None if it is not a local path.

    Raises:
        ValueError: it looks like a path but nothing exists there, or it names files with an
            extension other than .txt/.json/.jsonl/.parquet.
    """
    allowed = "/".join(BUILDERS)
    expanded = os.path.expanduser(dataset)
    path = Path(expanded)
    if any(c in dataset for c in _GLOB_CHARS):
        candidates = [Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file()]
        if not candidates:
            raise ValueError(f"dataset={dataset!r}: the glob matches no files")
    elif path.is_dir():
        candidates = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS]
        if not candidates:
            raise ValueError(f"dataset={dataset!r}: the folder has no {allowed} files")
    elif path.is_file():
        candidates = [path]
    elif dataset.startswith((".", "/", "~")) or path.suffix.lower() in BUILDERS:
        raise ValueError(f"dataset={dataset!r}: no such file or folder")
    else:
        return None
    unknown = sorted({p.suffix or p.name for p in candidates if p.suffix.lower() not in BUILDERS})
    if unknown:
        raise ValueError(
            f"dataset={dataset!r}: unknown file extension(s) {unknown}; allowed: {allowed}"
        )
    return sorted(candidates)
