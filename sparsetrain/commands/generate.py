"""`sparsetrain generate RUN --prompt TEXT`: continue a prompt with a run's model and a KV cache.

    sparsetrain generate RUN --prompt TEXT [--max-new-tokens 64] [--temperature 0.8] [--top-k 40]
                             [--seed 0] [--samples 1] [--step N]

Dense and block-sparse runs alike. `--temperature 0` decodes greedily (deterministic).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

from sparsetrain.commands.paths import run_directory
from sparsetrain.commands.recipe_args import add_sampling_args, positive_int
from sparsetrain.errors import InputError
from sparsetrain.evaluation.generate import Generator
from sparsetrain.data.pipeline import load_run_tokenizer
from sparsetrain.models.kv_cache import CachedDecoder
from sparsetrain.training.start import restore_run


def run(args: argparse.Namespace) -> int:
    run_directory(args.run_dir, "generate")  # before anything is opened (or created) there
    try:
        _, setup, state, meta = restore_run(args.run_dir, args.step, using="generating with")
        tokenizer = load_run_tokenizer(args.run_dir)
        ids = tokenizer.encode(args.prompt, add_special_tokens=False).ids
        gen = Generator(CachedDecoder(setup.model).model(state["params"], state["indices"]))
        t0 = time.perf_counter()
        out = gen.sample(ids, args.max_new_tokens, args.temperature, args.top_k,
                         jax.random.key(args.seed), args.samples)
        seconds = time.perf_counter() - t0
    except FileNotFoundError as e:  # a run directory without checkpoints; others: see cli.report
        raise InputError(str(e)) from e
    for i, row in enumerate(out):
        if args.samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + tokenizer.decode(row.tolist()))
    print(f"({out.size} tokens in {seconds:.2f} s with the KV cache, compiles included, "
          f"step {meta['step']} of {args.run_dir})", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add `sparsetrain generate`."""
    p = subparsers.add_parser("generate", help="continue a prompt with a run's model (KV cache)")
    p.add_argument("run_dir", metavar="RUN", help="run directory (checkpoints/, tokenizer.json)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate")
    add_sampling_args(p)
    p.add_argument("--samples", type=positive_int, default=1, help="continuations to sample at once")
    p.add_argument("--step", type=positive_int, default=None, help="checkpoint step (default: newest)")
    p.set_defaults(run=run)
