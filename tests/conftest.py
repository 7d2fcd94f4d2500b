"""Shared fixtures: a small generated corpus and a tiny recipe that trains in seconds on a CPU."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import yaml

WORDS = ("the king queen lord lady sword crown night day love death war peace heart blood "
         "speak come go thou thee my good what sir").split()


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A directory of 24 generated plain-text documents (about 8 KB each)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(24):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(150)]
        (root / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_recipe(tmp_path: Path, corpus: Path, sparse: bool = True, **sections) -> Path:
    """Write a recipe for a 2-layer, 64-wide GPT on `corpus`; `sections` update its sections."""
    raw = {
        "model": {"preset": "tiny", "n_layers": 2, "d_model": 64, "n_heads": 2, "context": 32},
        "sparsity": ({"pattern": "random_balanced", "density": 0.25, "block": 16} if sparse
                     else {"pattern": "dense"}),
        "data": {"dataset": str(corpus), "vocab_size": 300, "seq_len": 32, "batch_size": 4,
                 "cache_dir": str(tmp_path / "cache")},
        "optimizer": {"lr": 1e-2, "warmup_steps": 3},
        "run": {"name": "t", "out_dir": str(tmp_path / "run"), "steps": 4, "eval_every": 2,
                "eval_batches": 2, "log_every": 1, "checkpoint_every": 2, "wandb": "disabled",
                "progress": False},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def causal_attention_reference(q, k, v) -> np.ndarray:
    """Independent float64 reference: softmax(q k^T / sqrt(D) + causal mask) v of (B, T, heads, D)
    arrays (any float dtype, bfloat16 included)."""
    q, k, v = (np.asarray(np.asarray(a, np.float32), np.float64) for a in (q, k, v))
    T, D = q.shape[1], q.shape[3]
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)
