"""Evaluate a run's checkpoint: val loss, perplexity, bits per byte, sampled continuations.

    sparsetrain eval RUN [--step N] [--batches N] [--prompt TEXT] [--samples 3] [--tokens 64]
                         [--temperature 0.8] [--top-k 40] [--json]

Bits per byte do not depend on the tokenizer: the total negative log-likelihood of the evaluated
target tokens, in bits, divided by the UTF-8 bytes those tokens stand for. For the byte-level BPE
every token string is one byte per character; the end-of-text token stands for no text (0 bytes)
but its loss still counts. Only whole batches of validation windows are scored (as in training),
so the bytes are those of the scored tokens, not of the whole split.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tokenizers import Tokenizer, pre_tokenizers

from sparsetrain.data.pipeline import build_datasets, eval_batches, load_run_tokenizer
from sparsetrain.evaluation.generate import sample
from sparsetrain.models.kv_cache import CachedDecoder
from sparsetrain.training.start import check_fingerprint, restore_run

DEFAULT_PROMPT = "ROMEO:\n"


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for: int64 (vocab,); 0 for special tokens."""
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    out = np.zeros(tokenizer.get_vocab_size(), np.int64)
    for i in range(len(out)):
        if i in special:
            continue
        tok = tokenizer.id_to_token(i)
        if tok is not None and all(c in alphabet for c in tok):
            out[i] = len(tok)  # byte-level: one character per byte
        else:
            out[i] = len(tokenizer.decode([i], skip_special_tokens=False).encode("utf-8"))
    return out


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Negative log-likelihood in bits per byte of text: nats / ln 2 / bytes."""
    return total_nats / math.log(2) / n_bytes


def score_windows(logits_fn: Callable, windows: np.ndarray, batch_size: int, token_bytes: np.ndarray,
                  max_batches: int | None = None) -> dict:
    """Total loss of the validation windows under `logits_fn` (tokens (B, T) -> logits (B, T, V)).

    Returns:
      {"nats": total cross-entropy (float), "tokens": scored targets, "bytes": UTF-8 bytes of the
       scored targets, "val_loss": nats per token, "perplexity", "bits_per_byte"}.
    """
    @jax.jit
    def batch_nats(tokens, targets):
        logits = logits_fn(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).astype(jnp.float32).sum()

    nats, tokens, n_bytes = 0.0, 0, 0
    for batch in eval_batches(windows, batch_size, max_batches):
        nats += float(batch_nats(batch["tokens"], batch["targets"]))
        tokens += batch["targets"].size
        n_bytes += int(token_bytes[batch["targets"]].sum())
    loss = nats / tokens
    return {"nats": nats, "tokens": tokens, "bytes": n_bytes, "val_loss": loss,
            "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": bits_per_byte(nats, n_bytes)}


def evaluate_run(run_dir: str | Path, step: int | None = None, max_batches: int | None = None,
                 prompt: str = DEFAULT_PROMPT, n_samples: int = 3, n_new: int = 64,
                 temperature: float = 0.8, top_k: int = 40, seed: int = 0) -> dict:
    """Evaluate a run's checkpoint (newest if `step` is None) on its own validation windows."""
    run_dir = Path(run_dir)
    cfg, setup, state, meta = restore_run(run_dir, step, using="evaluating")
    load_run_tokenizer(run_dir)  # missing or damaged: DamagedFileError (never a new one trained)
    data = build_datasets(cfg.data, run_dir)  # the run's saved tokenizer is reused
    check_fingerprint(meta, data, str(run_dir))  # other data would not be a fair evaluation
    fns, params, indices = setup.fns, state["params"], state["indices"]
    result = score_windows(lambda tokens: fns.logits(params, indices, tokens), data.val,
                           cfg.data.batch_size, token_byte_lengths(data.tokenizer), max_batches)
    samples = []
    if n_samples > 0 and n_new > 0:
        ids = data.tokenizer.encode(prompt, add_special_tokens=False).ids or [data.eot_id]
        model = CachedDecoder(setup.model).model(params, indices)  # KV-cache sampling
        n_new = min(n_new, setup.spec.shape.context - 1)  # learned positions end at the context
        out = sample(model, ids, n_new, temperature, top_k, jax.random.key(seed), n_samples)
        samples = [prompt + data.tokenizer.decode(row.tolist()) for row in out]
    return {"run": cfg.run.name, "run_dir": str(run_dir), "step": int(meta["step"]), **result,
            "fingerprint": data.fingerprint, "samples": samples, "recipe": cfg.to_dict(),
            "sampling": {"prompt": prompt, "temperature": temperature, "top_k": top_k, "tokens": n_new}}


def format_eval(r: dict) -> str:
    lines = [f"{r['run']} @ step {r['step']}: val loss {r['val_loss']:.4f} nats/token, perplexity "
             f"{r['perplexity']:.2f}, {r['bits_per_byte']:.4f} bits/byte "
             f"({r['tokens']:,} tokens, {r['bytes']:,} bytes)"]
    for i, s in enumerate(r["samples"]):
        lines.append(f"--- sample {i + 1} (temperature {r['sampling']['temperature']}, "
                     f"top-k {r['sampling']['top_k']})\n{s}")
    return "\n".join(lines)
