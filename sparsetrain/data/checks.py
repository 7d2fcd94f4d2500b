"""The checks of a recipe's data section: run by recipe validation and again by the data
pipeline before it loads anything (the pipeline can be called with any object that has the
fields of `config.DataConfig`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsetrain.data.files import BUILDERS, resolve_data_files
from sparsetrain.errors import require


def validate_data_section(d: Any, check_files: bool = True) -> None:
    """The data section's own fields (the data pipeline checks them too, before loading anything).

    Args:
      d: a `DataConfig` (or an object with its fields).
      check_files: also require the tokenizer file and a local dataset path to exist.
    """
    require(isinstance(d.vocab_size, int) and d.vocab_size >= 257, "data.vocab_size", d.vocab_size,
             "an integer >= 257 (a byte-level BPE has 256 byte tokens + end-of-text)")
    require(isinstance(d.seq_len, int) and d.seq_len >= 2, "data.seq_len", d.seq_len, "an integer >= 2")
    require(isinstance(d.batch_size, int) and d.batch_size >= 1, "data.batch_size", d.batch_size,
             "an integer >= 1")
    require(0.0 < d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "a fraction in (0, 1)")
    if d.tokenizer != "bpe":
        require(not check_files or Path(d.tokenizer).is_file(), "data.tokenizer", d.tokenizer,
                 "'bpe' or the path of an existing tokenizer.json")
    if check_files and d.dataset != "shakespeare":
        try:
            resolve_data_files(d.dataset)
        except ValueError as e:
            require(False, "data.dataset", d.dataset, f"'shakespeare', an existing file/dir/glob of "
                     f"{'/'.join(BUILDERS)} files, or a hub dataset name ({e})")
