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

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tokenizers import Tokenizer, pre_tokenizers

from sparsetrain.data import build_datasets, eval_batches
from sparsetrain.evaluation.generate import sample
from sparsetrain.models.kv_cache import CachedDecoder

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
    from sparsetrain.train import restore_run

    run_dir = Path(run_dir)
    cfg, setup, state, meta = restore_run(run_dir, step)
    data = build_datasets(cfg.data, run_dir)  # the run's saved tokenizer is reused
    if data.fingerprint != meta["fingerprint"]:
        raise ValueError(f"{run_dir}: the data or tokenizer changed since the checkpoint (fingerprint "
                         f"{data.fingerprint[:12]} vs {meta['fingerprint'][:12]}); cannot evaluate fairly")
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
            "fingerprint": data.fingerprint, "samples": samples,
            "sampling": {"prompt": prompt, "temperature": temperature, "top_k": top_k, "tokens": n_new}}


def format_eval(r: dict) -> str:
    lines = [f"{r['run']} @ step {r['step']}: val loss {r['val_loss']:.4f} nats/token, perplexity "
             f"{r['perplexity']:.2f}, {r['bits_per_byte']:.4f} bits/byte "
             f"({r['tokens']:,} tokens, {r['bytes']:,} bytes)"]
    for i, s in enumerate(r["samples"]):
        lines.append(f"--- sample {i + 1} (temperature {r['sampling']['temperature']}, "
                     f"top-k {r['sampling']['top_k']})\n{s}")
    return "\n".join(lines)


def _run_cli(args: argparse.Namespace) -> int:
    try:
        result = evaluate_run(args.run_dir, args.step, args.batches, args.prompt, args.samples, args.tokens,
                              args.temperature, args.top_k, args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"sparsetrain eval: {e}", file=sys.stderr)
        return 2
    out = Path(args.run_dir) / f"eval-{result['step']}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2) if args.json else format_eval(result))
    print(f"(written to {out})", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain eval`."""
    p = subparsers.add_parser("eval", help="val loss, perplexity, bits per byte and samples of a checkpoint")
    p.add_argument("run_dir", metavar="RUN", help="run directory (holds checkpoints/, tokenizer.json, metrics.jsonl)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--batches", type=int, default=None, help="at most this many val batches (default: all)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="text the samples continue")
    p.add_argument("--samples", type=int, default=3, help="number of sampled continuations")
    p.add_argument("--tokens", type=int, default=64, help="tokens per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_run_cli)
