"""Evaluation: bits per byte of a known distribution equal its entropy; the eval command."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsetrain.data.pipeline import EOT_TOKEN, pack, train_bpe_tokenizer
from sparsetrain.evaluation.evaluate import score_windows, token_byte_lengths

PROBS = {"a": 0.5, "b": 0.25, "c": 0.125, "d": 0.0625, "é": 0.0625}  # é: 2 UTF-8 bytes


def test_bits_per_byte_of_a_known_distribution_is_its_entropy():
    rng = np.random.default_rng(0)
    chars, p = list(PROBS), np.array(list(PROBS.values()))
    docs = ["".join(rng.choice(chars, size=20_000, p=p)) for _ in range(2)]
    tok = train_bpe_tokenizer(docs, 257)  # 256 bytes + end-of-text: no merges, one token per byte
    nbytes = token_byte_lengths(tok)
    assert nbytes[tok.token_to_id(EOT_TOKEN)] == 0 and nbytes[tok.encode("a").ids[0]] == 1
    # The model knows the source: P(next char) = PROBS. 'é' is two byte tokens: its first byte
    # carries its probability, the second is certain after it (and impossible elsewhere).
    first, second = tok.encode("é").ids
    eot = tok.token_to_id(EOT_TOKEN)
    base = np.full(tok.get_vocab_size(), -1e9, np.float32)
    for c in "abcd":
        base[tok.encode(c).ids[0]] = math.log(PROBS[c])
    base[first], base[eot] = math.log(PROBS["é"]), math.log(1e-6)
    after_first = np.full_like(base, -1e9)
    after_first[second] = 0.0
    base, after_first = jnp.asarray(base), jnp.asarray(after_first)

    def logits_fn(tokens):
        return jnp.where((tokens == first)[..., None], after_first, base)

    windows = pack(docs, tok, 64)
    r = score_windows(logits_fn, windows, 16, nbytes)
    # Entropy per character, and characters per byte: 'é' is 2 of the bytes.
    h_char = -sum(q * math.log2(q) for q in PROBS.values())
    bytes_per_char = sum(q * len(c.encode()) for c, q in PROBS.items())
    assert r["bits_per_byte"] == pytest.approx(h_char / bytes_per_char, rel=0.01)
    # and exactly the formula: total nats / ln 2 / bytes of the scored targets
    targets = windows[: (len(windows) // 16) * 16, 1:]
    nats = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits_fn(windows[: len(targets), :-1]))),
                               targets[..., None], -1).sum()
    assert r["bytes"] == nbytes[targets].sum() and r["tokens"] == targets.size
    assert r["bits_per_byte"] == pytest.approx(nats / math.log(2) / r["bytes"], rel=1e-4)
