"""The checks of a recipe's data section: run by recipe validation and again by the data
pipeline before it loads anything (the pipeline can be called with any object that has the
fields of `config.DataConfig`)."""

from __future__ import annotations

import functools
import os
import socket
import threading
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
            files = resolve_data_files(d.dataset)
        except ValueError as e:
            require(False, "data.dataset", d.dataset, f"'shakespeare', an existing file/dir/glob of "
                     f"{'/'.join(BUILDERS)} files, or a hub dataset name ({e})")
        if files is None:  # a hub name: refused now if it cannot be read, not after a minute of retries
            require(_hub_name_cached(d.dataset, Path(d.cache_dir)) or hub_reachable(),
                    "data.dataset", d.dataset,
                    f"an existing file/dir/glob of {'/'.join(BUILDERS)} files, 'shakespeare', or a "
                    "hub dataset name already in data.cache_dir; it is not a local path and the "
                    "Hugging Face hub cannot be reached (offline)")


HUB_HOST = "huggingface.co"
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _hub_name_cached(name: str, cache_dir: Path) -> bool:
    """Whether `name` (e.g. 'user/corpus') was downloaded before: HF `datasets`' cache in
    data.cache_dir (folder `user___corpus`) or the Hugging Face hub cache (`datasets--user--corpus`
    under $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    hub_cache = Path(os.environ.get("HF_HUB_CACHE") or Path(
        os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    return ((cache_dir / "hf_datasets" / name.replace("/", "___")).is_dir()
            or (hub_cache / f"datasets--{name.replace('/', '--')}").is_dir())


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set or the hub's host name does not
    resolve within `timeout_s` (no network); True otherwise (loading may still fail later)."""
    if any(os.environ.get(v, "") not in ("", "0", "false", "False") for v in _OFFLINE_VARIABLES):
        return False
    return _resolves(HUB_HOST, timeout_s)


@functools.lru_cache(maxsize=None)
def _resolves(host: str, timeout_s: float) -> bool:
    """Whether `host` resolves within `timeout_s` (asked once per process)."""
    found: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            found.append(True)
        except OSError:
            found.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(found and found[0])
