"""Text data -> tokenizer -> packed fixed-length windows -> resumable batches.

The path of the data, top to bottom:

1. `load_documents`: the demo corpus ("shakespeare"), local .txt/.json/.jsonl/.parquet files, or a
   Hugging Face hub dataset, read with HF `datasets`; one document per .txt file, one per row
   otherwise.
2. `split_documents`: train/val split by document (never by line), fixed by the seed.
3. `train_bpe_tokenizer` on the train split only (or a given `tokenizer.json`), saved in the run
   directory so a resumed run tokenizes exactly as before.
4. `pack`: every document encoded, followed by `<|endoftext|>`, concatenated per split and cut
   into non-overlapping windows of seq_len + 1 tokens. A window `w` gives `tokens = w[:-1]` and
   `targets = w[1:]`.
5. `BatchIterator` (training: shuffled each epoch, state is two ints) and `eval_batches`
   (validation: fixed order).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sparsetrain.data.checks import validate_data_section
from sparsetrain.data.corpus import prepare_shakespeare
from sparsetrain.data.files import BUILDERS, resolve_data_files
from sparsetrain.errors import DamagedFileError
from sparsetrain.run_files import write_atomic

EOT_TOKEN = "<|endoftext|>"
TOKENIZER_FILENAME = "tokenizer.json"
SHAKESPEARE = "shakespeare"
# File extension -> HF `datasets` packaged builder.


@dataclass
class Datasets:
    """Packed train and validation data of one run.

    Attributes:
        train: (n_train_windows, seq_len + 1) int32 token windows of the train split.
        val: (n_val_windows, seq_len + 1) int32 token windows of the validation split.
        tokenizer: the `tokenizers.Tokenizer` used (also saved as run_dir/tokenizer.json).
        vocab_size: the tokenizer's actual vocabulary size (can be below the configured one
            when the corpus has fewer merges to learn).
        fingerprint: sha256 hex of the tokenizer and the val windows; two runs with equal
            fingerprints were evaluated on the same tokens.
        train_bytes: UTF-8 bytes of text in the train split (for bits per byte).
        val_bytes: UTF-8 bytes of text in the val split.
        eot_id: id of the end-of-text token that ends every document.
    """

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    vocab_size: int
    fingerprint: str
    train_bytes: int
    val_bytes: int
    eot_id: int


def build_datasets(cfg: Any, run_dir: Path) -> Datasets:
    """Loads, splits, tokenizes and packs the data that `cfg` (a DataConfig) describes.

    Uses cfg.dataset, text_field, tokenizer, vocab_size, seq_len, batch_size, val_fraction, seed
    and cache_dir. If run_dir already holds tokenizer.json (a resumed run), that tokenizer is
    used; otherwise the configured one is trained or copied there.

    Raises:
        ValueError: a config field is out of range, the data is missing or empty, or a split is
            too small for seq_len / batch_size; the message names the field and value.
    """
    validate_data_section(cfg, check_files=False)  # the loaders below name a missing file themselves
    run_dir = Path(run_dir)
    docs = load_documents(cfg.dataset, cfg.text_field, Path(cfg.cache_dir))
    train_docs, val_docs = split_documents(docs, cfg.val_fraction, cfg.seed)
    tokenizer = _run_tokenizer(cfg, run_dir, train_docs)
    eot_id = tokenizer.token_to_id(EOT_TOKEN)
    train = pack(train_docs, tokenizer, cfg.seq_len, split="train")
    val = pack(val_docs, tokenizer, cfg.seq_len, split="val")
    for split, windows in (("train", train), ("val", val)):
        if len(windows) < cfg.batch_size:
            raise ValueError(
                f"batch_size={cfg.batch_size} is larger than the {split} split's "
                f"{len(windows)} windows of seq_len+1={cfg.seq_len + 1} tokens; "
                "lower batch_size or seq_len, or use more data"
            )
    return Datasets(
        train=train,
        val=val,
        tokenizer=tokenizer,
        vocab_size=tokenizer.get_vocab_size(),
        fingerprint=fingerprint(tokenizer, val),
        train_bytes=sum(len(d.encode("utf-8")) for d in train_docs),
        val_bytes=sum(len(d.encode("utf-8")) for d in val_docs),
        eot_id=eot_id,
    )


# --- 1. Documents -------------------------------------------------------------------------------


def load_documents(dataset: str, text_field: str = "text", cache_dir: Path = Path("data_cache")) -> list[str]:
    """Returns the documents of `dataset` in a fixed order (files sorted by path, rows in order).

    Args:
        dataset: "shakespeare" (prepared into cache_dir), a local file, folder or glob of
            .txt/.json/.jsonl/.parquet files, or a Hugging Face hub dataset name (its "train"
            split; needs network). A string that looks like a path (starts with ".", "/", "~",
            has a glob character or a data file extension) is never sent to the hub.
        text_field: the column holding the text in json/parquet/hub data.
        cache_dir: folder for the prepared demo corpus and HF `datasets`' cache.

    Raises:
        ValueError: the path does not exist, has no data files, has an unknown extension, the
            text field is missing, or there are no non-blank documents.
    """
    import datasets  # imported here: it is slow to import and only this function needs it

    hf_cache = str(Path(cache_dir) / "hf_datasets")
    if dataset == SHAKESPEARE:
        files = sorted(prepare_shakespeare(Path(cache_dir)).glob("*.txt"))
    else:
        files = resolve_data_files(dataset)
    if files is None:  # a hub name
        try:
            table = datasets.load_dataset(dataset, split="train", cache_dir=hf_cache)
        except Exception as e:  # noqa: BLE001 - any failure here means the same thing to the user
            raise ValueError(
                f"dataset={dataset!r} is not an existing local path, and loading it from the "
                f"Hugging Face hub failed ({type(e).__name__}: {e}). Check the name and network, "
                "or give a local file, folder or glob of .txt/.json/.jsonl/.parquet files"
            ) from e
        docs = _column(table, text_field, dataset)
    else:
        docs = []
        by_builder: dict[str, list[str]] = {}
        for f in files:
            by_builder.setdefault(BUILDERS[f.suffix.lower()], []).append(str(f))
        for builder in sorted(by_builder):
            kwargs = {"sample_by": "document"} if builder == "text" else {}
            table = datasets.load_dataset(
                builder, data_files=by_builder[builder], split="train", cache_dir=hf_cache, **kwargs
            )
            docs.extend(_column(table, "text" if builder == "text" else text_field, dataset))
    docs = [d for d in docs if d and not d.isspace()]
    if not docs:
        raise ValueError(f"dataset={dataset!r}: no non-blank documents found")
    return docs


def _column(table: Any, text_field: str, dataset: str) -> list[str]:
    if text_field not in table.column_names:
        raise ValueError(
            f"text_field={text_field!r} is not a column of dataset={dataset!r}; "
            f"its columns are {table.column_names}"
        )
    return [t for t in table[text_field] if isinstance(t, str)]


# --- 2. Split -----------------------------------------------------------------------------------


def split_documents(docs: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Splits whole documents into (train, val); the same (docs, val_fraction, seed) give the same.

    round(len(docs) * val_fraction) documents, at least one, go to validation, drawn by a
    permutation seeded with `seed`. Both keep the documents' original order.

    Raises:
        ValueError: val_fraction is outside (0, 1) or a split would be empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r}: must be in (0, 1), e.g. 0.1")
    n = len(docs)
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ValueError(
            f"val_fraction={val_fraction!r} leaves no training documents: there are only {n} "
            "documents and the split is by document; use more documents (e.g. more files) or "
            "a smaller val_fraction"
        )
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return ([d for d, v in zip(docs, is_val) if not v], [d for d, v in zip(docs, is_val) if v])


# --- 3. Tokenizer -------------------------------------------------------------------------------


def train_bpe_tokenizer(docs: Sequence[str], vocab_size: int) -> Tokenizer:
    """Trains a byte-level BPE (GPT-2 style) on `docs`, with EOT_TOKEN as id 0.

    Byte-level means every string round-trips: decode(encode(text)) == text.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    """Loads a `tokenizer.json`; it must have EOT_TOKEN.

    Raises:
        ValueError: the file is missing, does not parse or has no EOT_TOKEN.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tokenizer={str(path)!r}: no such file; use 'bpe' or a tokenizer.json path")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust parser's error: "EOF while parsing a value at line 2909 ..."
        raise ValueError(f"tokenizer={str(path)!r} is not a readable tokenizer.json ({e})") from e
    if tokenizer.token_to_id(EOT_TOKEN) is None:
        raise ValueError(f"tokenizer={str(path)!r} has no {EOT_TOKEN!r} token to end documents with")
    return tokenizer


def load_run_tokenizer(run_dir: Path) -> Tokenizer:
    """The tokenizer a run saved (run_dir/tokenizer.json), which its checkpoints were trained with.

    Raises:
        DamagedFileError: it is missing or unreadable (a run's own file is damage, not bad input).
    """
    path = Path(run_dir) / TOKENIZER_FILENAME
    if not path.is_file():
        raise DamagedFileError(f"{path}: missing; the run's checkpoints were trained with it: restore it "
                               "from a backup or a copy of the run (a new tokenizer would not fit them)")
    try:
        return load_tokenizer(path)
    except ValueError as e:
        raise DamagedFileError(f"{path}: damaged: {str(e.__cause__ or e).splitlines()[0][:200]}; restore "
                               "it from a backup or a copy of the run (the checkpoints were trained with "
                               "it)") from e


def _run_tokenizer(cfg: Any, run_dir: Path, train_docs: Sequence[str]) -> Tokenizer:
    """The run's tokenizer: run_dir's saved one, else trained ("bpe") or loaded, then saved."""
    saved = run_dir / TOKENIZER_FILENAME
    if saved.is_file():
        tokenizer = load_run_tokenizer(run_dir)
        if cfg.tokenizer != "bpe" and load_tokenizer(Path(cfg.tokenizer)).to_str() != tokenizer.to_str():
            raise ValueError(
                f"tokenizer={str(cfg.tokenizer)!r} differs from the run's own {saved}, which its "
                "checkpoints were trained with; resume with the run's tokenizer or start a new run")
        return tokenizer
    if cfg.tokenizer == "bpe":
        tokenizer = train_bpe_tokenizer(train_docs, cfg.vocab_size)
    else:
        tokenizer = load_tokenizer(Path(cfg.tokenizer))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, lambda tmp: tokenizer.save(str(tmp)))
    return tokenizer


# --- 4. Packing ---------------------------------------------------------------------------------


def pack(docs: Sequence[str], tokenizer: Tokenizer, seq_len: int, split: str = "data") -> np.ndarray:
    """Encodes docs, ends each with EOT_TOKEN, concatenates and cuts windows of seq_len + 1.

    The tail that does not fill a whole window is dropped.

    Returns:
        (n_windows, seq_len + 1) int32.

    Raises:
        ValueError: the docs do not fill one window.
    """
    eot = tokenizer.token_to_id(EOT_TOKEN)
    # encode_batch_fast (tokenizers >= 0.21) skips character offsets, which we never use.
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encoded = encode(list(docs), add_special_tokens=False)
    ids = np.concatenate([np.array([*enc.ids, eot], dtype=np.int32) for enc in encoded])
    width = seq_len + 1
    n = len(ids) // width
    if n == 0:
        raise ValueError(
            f"seq_len={seq_len} is too large: the {split} split has only {len(ids)} tokens, "
            f"fewer than one window of seq_len+1={width}"
        )
    return ids[: n * width].reshape(n, width)


def fingerprint(tokenizer: Tokenizer, val: np.ndarray) -> str:
    """sha256 hex of the tokenizer's JSON and the val windows (shape and tokens)."""
    h = hashlib.sha256()
    h.update(tokenizer.to_str().encode("utf-8"))
    h.update(repr(val.shape).encode("ascii"))
    h.update(np.ascontiguousarray(val, dtype=np.int32).tobytes())
    return h.hexdigest()


# --- 5. Batches ---------------------------------------------------------------------------------


def _batch(windows: np.ndarray) -> dict[str, np.ndarray]:
    return {"tokens": np.ascontiguousarray(windows[:, :-1]),
            "targets": np.ascontiguousarray(windows[:, 1:])}


class BatchIterator:
    """Shuffled training batches whose position is two ints, so a resumed run repeats nothing.

    Each epoch visits the windows in a permutation drawn from (seed, epoch); batches are
    consecutive slices of it, and the last `len(windows) % batch_size` windows of an epoch's
    permutation are skipped (a different set each epoch), so every batch has the same shape.

    `state()` -> {"epoch", "position", "num_windows"}: plain ints, JSON-safe. An iterator made
    with `BatchIterator.restore(windows, batch_size, seed, state)` yields exactly the batches
    the saved one would have yielded next.

    Many processes: with `process_index=p, process_count=N` an iterator yields rows
    [p*B/N, (p+1)*B/N) of each global batch of `batch_size` B. The global sequence and the state
    depend on the seed alone, so any process count reads the same data in the same order and a
    state saved with one count resumes with another.
    """

    def __init__(self, windows: np.ndarray, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
        if windows.ndim != 2 or windows.shape[1] < 2:
            raise ValueError(f"windows must be (n, seq_len + 1) with seq_len >= 1, got {windows.shape}")
        if not 1 <= batch_size <= len(windows):
            raise ValueError(
                f"batch_size={batch_size} must be between 1 and the number of windows ({len(windows)})"
            )
        if process_count < 1 or batch_size % process_count or not 0 <= process_index < process_count:
            raise ValueError(f"batch_size={batch_size} must split evenly over {process_count} processes "
                             f"(process_index={process_index})")
        self.windows = windows
        self.batch_size = batch_size
        self.seed = seed
        share = batch_size // process_count
        self._rows = slice(process_index * share, (process_index + 1) * share)
        self._epoch = 0
        self._position = 0  # index into the epoch's permutation of the next window
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))

    def next(self) -> dict[str, np.ndarray]:
        """This process's rows of the next batch: {"tokens", "targets"}, each
        (batch_size / process_count, seq_len) int32."""
        if self._position + self.batch_size > len(self.windows):
            self._epoch += 1
            self._position = 0
            self._order = self._permutation(self._epoch)
        idx = self._order[self._position : self._position + self.batch_size][self._rows]
        self._position += self.batch_size
        return _batch(self.windows[idx])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return self.next()

    @property
    def epoch(self) -> int:
        return self._epoch

    def state(self) -> dict[str, int]:
        """The position to resume from, as plain ints."""
        return {"epoch": int(self._epoch), "position": int(self._position),
                "num_windows": int(len(self.windows))}

    def set_state(self, state: dict[str, int]) -> None:
        """Moves to a position from `state()`.

        Raises:
            ValueError: the state belongs to data with a different number of windows, or is
                out of range.
        """
        epoch, position = int(state["epoch"]), int(state["position"])
        num_windows = int(state.get("num_windows", len(self.windows)))
        if num_windows != len(self.windows):
            raise ValueError(
                f"data state was saved for {num_windows} training windows but the data now has "
                f"{len(self.windows)}: dataset, tokenizer or seq_len changed since the checkpoint"
            )
        if epoch < 0 or not 0 <= position <= len(self.windows):
            raise ValueError(f"data state {state} is out of range for {len(self.windows)} windows")
        self._epoch, self._position = epoch, position
        self._order = self._permutation(epoch)

    @classmethod
    def restore(cls, windows: np.ndarray, batch_size: int, seed: int, state: dict[str, int],
                **share: int) -> "BatchIterator":
        """A new iterator positioned at `state` (see `set_state`); `share`: process_index/count."""
        it = cls(windows, batch_size, seed, **share)
        it.set_state(state)
        return it


def eval_batches(windows: np.ndarray, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yields the windows in order as {"tokens", "targets"} batches of (batch_size, seq_len).

    Only whole batches are yielded (fixed shapes for a jitted, sharded eval step): the last
    `len(windows) % batch_size` windows are not evaluated. At most `max_batches` batches.

    Raises:
        ValueError: fewer windows than batch_size (no batch at all).
    """
    n_batches = len(windows) // batch_size
    if n_batches == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {len(windows)} validation windows"
        )
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    # A generator inside, so the check above runs at the call, not at the first next().
    return (_batch(windows[b * batch_size : (b + 1) * batch_size]) for b in range(n_batches))
