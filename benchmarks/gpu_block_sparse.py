"""Block-sparse training on a GPU: Pallas kernels against dense cuBLAS, and a GPT-2 small step.

    python benchmarks/gpu_block_sparse.py           # on a CUDA GPU (H100/H200): the full run
    python benchmarks/gpu_block_sparse.py --tiny    # smoke run anywhere (interpret mode off a GPU)

1. Linears: forward + backward (y = x W, dx, dW) of the GPT-3 13B linear shapes (d = 5120:
   qkv 5120x15360, attn_out 5120x5120, mlp_up 5120x20480, mlp_down 20480x5120; Brown et al. 2020,
   Table 2.1) on 8192 tokens in bfloat16, block-sparse (random_balanced, densities 1/2 .. 1/16,
   64x64 and 128x128 blocks, the kernel block_sparse_matmul picks: the Pallas kernels on one GPU)
   against the dense product jnp.dot (cuBLAS) in the same process. Each sparse result is checked
   against the masked dense product (max error relative to the largest reference entry).
2. Train step: the recipes gpt2-small (dense) and gpt2-small-sparse (87.5% sparse, 64x64
   blocks), bfloat16 compute, full jitted step (forward, backward, AdamW) on random tokens.

Times are medians over interleaved rounds (one call of each variant per round, after two warm
calls), so a clock that drifts slows all alike. Prints a table, writes JSON (default
benchmarks/results/gpu_block_sparse.json) naming the GPU. Targets: at density 1/8 with 64x64
blocks, sparse fwd+bwd >= 5x dense on the 13B shapes; the sparse gpt2-small step >= 2x dense.
Without a GPU (and without --tiny) it refuses.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sparsetrain.config import load_recipe
from sparsetrain.kernels import pallas_block_sparse
from sparsetrain.kernels.attention import attention_kernel
from sparsetrain.sparsity import (block_sparse_matmul, dense_to_values, random_balanced,
                                 values_to_dense)
from sparsetrain.kernels.dispatch import kernel_backend, kernel_backend_info, use_kernel_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import make_jax_step  # noqa: E402  (the same train step and timing)
from train_throughput import timed_rounds as interleaved_rounds  # noqa: E402

FULL = {  # the GPU targets: GPT-3 13B linears, 8192 tokens
    "shapes": {"qkv": (5120, 15360), "attn_out": (5120, 5120), "mlp_up": (5120, 20480),
               "mlp_down": (20480, 5120)},
    "tokens": 8192, "blocks": (64, 128), "densities": (1 / 2, 1 / 4, 1 / 8, 1 / 16),
    "recipes": ("recipes/gpt2-small.yaml", "recipes/gpt2-small-sparse.yaml"), "overrides": [],
}
TINY = {  # seconds on a CPU in interpret mode: the same code paths, small sizes
    "shapes": {"up": (256, 512)},
    "tokens": 64, "blocks": (32, 64), "densities": (1 / 2, 1 / 4),
    "recipes": ("recipes/gpt2-small.yaml", "recipes/gpt2-small-sparse.yaml"),
    "overrides": ["model.preset=tiny", "model.n_layers=1", "model.d_model=128", "model.n_heads=2",
                  "model.context=32", "data.seq_len=32", "data.batch_size=2", "data.vocab_size=512",
                  "sparsity.block=32", "sparsity.density=0.5"],
}
REPO = Path(__file__).resolve().parents[1]
TARGET_LINEAR = 5.0  # sparse/dense speed at density 1/8, 64x64 blocks (the product's GPU target)
TARGET_STEP = 2.0  # sparse/dense gpt2-small step speed


def timed_rounds(runners: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each runner: two warm calls each, then interleaved rounds."""
    return {name: statistics.median(t) for name, t in interleaved_rounds(runners, rounds).items()}


@jax.jit
def dense_fwd_bwd(x, w, dy):
    """y = x @ w (bfloat16 out, float32 accumulation) and its gradients dx, dw."""
    y, vjp = jax.vjp(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype),
                     x, w)
    return (y, *vjp(dy))


@jax.jit
def sparse_fwd_bwd(x, values, layout, dy):
    """block_sparse_matmul and its gradients dx, dvalues, with the kernel chosen for this backend."""
    y, vjp = jax.vjp(lambda x, v: block_sparse_matmul(x, v, layout), x, values)
    return (y, *vjp(dy))


@functools.partial(jax.jit, static_argnames="tile")
def pallas_fwd_bwd(x, values, rows, dy, tile):
    """The Pallas kernels with a given token tile (the --tiles sweep; Triton needs a GPU)."""
    interpret = jax.default_backend() != "gpu"
    y = pallas_block_sparse.forward(x, values, rows, interpret=interpret, tile=tile)
    return (y, *pallas_block_sparse.backward(x, values, rows, dy, interpret=interpret, tile=tile))


def _rel_err(got, want) -> float:
    got, want = jnp.asarray(got, jnp.float32), jnp.asarray(want, jnp.float32)
    return float(jnp.max(jnp.abs(got - want)) / jnp.maximum(jnp.max(jnp.abs(want)), 1e-30))


def sparse_error(x, values, layout, dy, outs) -> float:
    """Largest relative error of (y, dx, dvalues) against the masked dense product in float32."""
    w = values_to_dense(values.astype(jnp.float32), layout)
    xf, dyf = x.astype(jnp.float32), dy.astype(jnp.float32)
    ref = (xf @ w, dyf @ w.T, dense_to_values(xf.T @ dyf, layout))
    return max(_rel_err(g, r) for g, r in zip(outs, ref))


def bench_linear(name, shape, tokens, block, densities, rounds, tiles=()) -> list[dict]:
    """Rows of one linear shape: dense once, then every density (and, per density, the Pallas
    kernels at each token tile of `tiles`), timed in the same rounds."""
    key = jax.random.PRNGKey(0)
    kx, kw, kd = jax.random.split(key, 3)
    x = jax.random.normal(kx, (tokens, shape[0]), jnp.bfloat16)
    w = (jax.random.normal(kw, shape, jnp.bfloat16) / np.sqrt(shape[0])).astype(jnp.bfloat16)
    dy = jax.random.normal(kd, (tokens, shape[1]), jnp.bfloat16)
    runners = {"dense": lambda: jax.block_until_ready(dense_fwd_bwd(x, w, dy))}
    cases = {}
    for d in densities:
        layout = random_balanced(jax.random.PRNGKey(1), shape, (block, block), d)
        values = jax.random.normal(kw, layout.values_shape, jnp.bfloat16) / np.sqrt(shape[0] * d)
        values = values.astype(jnp.bfloat16)
        cases[d] = (layout, values)
        runners[d] = (lambda l=layout, v=values: jax.block_until_ready(sparse_fwd_bwd(x, v, l, dy)))
        for tile in tiles:
            runners[d, tile] = (lambda r=layout.row_indices, v=values, t=tile:
                                jax.block_until_ready(pallas_fwd_bwd(x, v, r, dy, t)))
    t = timed_rounds(runners, rounds)
    dense_flops = 3 * 2 * tokens * shape[0] * shape[1]
    rows = []
    for d, (layout, values) in cases.items():
        flops = 3 * 2 * tokens * layout.nnz
        err = sparse_error(x, values, layout, dy, sparse_fwd_bwd(x, values, layout, dy))
        rows.append({"linear": name, "shape": list(shape), "tokens": tokens, "block": block,
                     "density": layout.density, "dense_s": t["dense"], "sparse_s": t[d],
                     "speedup": t["dense"] / t[d], "dense_tflops": dense_flops / t["dense"] / 1e12,
                     "sparse_tflops": flops / t[d] / 1e12, "max_rel_err": err,
                     "pallas_s_by_tile": {tile: t[d, tile] for tile in tiles}})
    return rows


def make_step(path: str, overrides: list[str]):
    """(run one train step and wait, tokens per step) for a recipe on random tokens."""
    run, facts = make_jax_step(load_recipe(REPO / path, overrides, check_data=False))
    return run, facts["tokens"]


def bench_step(recipes, overrides, rounds) -> dict:
    (dense_run, tokens), (sparse_run, _) = (make_step(p, overrides) for p in recipes)
    t = timed_rounds({"dense": dense_run, "sparse": sparse_run}, rounds)
    return {"recipes": list(recipes), "overrides": overrides, "tokens_per_step": tokens,
            "dense_s": t["dense"], "sparse_s": t["sparse"], "speedup": t["dense"] / t["sparse"]}


def describe_device() -> dict:
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device": dev.device_kind, "jax": jax.__version__,
            "block_sparse_kernel": kernel_backend_info(),
            "block_sparse_kernel_bf16": kernel_backend(jnp.bfloat16),
            "attention_kernel_bf16": attention_kernel(jnp.bfloat16)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="small shapes and model: a smoke run (Pallas interpret mode off a GPU)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10, tiny 2)")
    parser.add_argument("--skip-step", action="store_true", help="linears only")
    parser.add_argument("--linears", nargs="*", default=None, help="subset of the linear names")
    parser.add_argument("--blocks", type=int, nargs="*", default=None, help="subset of block sizes")
    parser.add_argument("--densities", type=float, nargs="*", default=None, help="other densities")
    parser.add_argument("--tiles", type=int, nargs="*", default=None,
                        help=f"also time the Pallas kernels at these token tiles "
                             f"({list(pallas_block_sparse.TOKEN_TILES)})")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    if jax.default_backend() != "gpu" and not args.tiny:
        print(f"no GPU: JAX's backend is {jax.default_backend()!r}; run this on a CUDA GPU "
              "(jax[cuda12]), or pass --tiny for a smoke run in Pallas interpret mode")
        return 2
    sizes = dict(TINY if args.tiny else FULL)
    if args.linears is not None:
        sizes["shapes"] = {n: sizes["shapes"][n] for n in args.linears}
    sizes["blocks"] = tuple(args.blocks or sizes["blocks"])
    sizes["densities"] = tuple(args.densities or sizes["densities"])
    sizes["tiles"] = tuple(args.tiles or ())
    rounds = args.rounds or (2 if args.tiny else 10)
    out = Path(args.out or ("benchmarks/results/gpu_block_sparse"
                            + ("_tiny" if args.tiny else "") + ".json"))
    with use_kernel_backend("pallas" if args.tiny else "auto"):
        info = describe_device()
        print(f"{info['device']} ({info['platform']}), JAX {info['jax']}; block-sparse "
              f"{info['block_sparse_kernel']}; attention (bf16) {info['attention_kernel_bf16']}")
        rows = run_linears(sizes, rounds)
        step = None if args.skip_step else bench_step(sizes["recipes"], sizes["overrides"], rounds)
    if step is not None:
        print(f"\ntrain step ({step['tokens_per_step']} tokens): dense {step['dense_s'] * 1e3:.2f} ms, "
              f"sparse {step['sparse_s'] * 1e3:.2f} ms, sparse/dense speed {step['speedup']:.2f}x "
              f"(target >= {TARGET_STEP}x)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**info, "tiny": args.tiny, "rounds": rounds, "linears": rows,
                               "train_step": step}, indent=2))
    print(f"\nwrote {out}")
    return 0


def run_linears(sizes: dict, rounds: int) -> list[dict]:
    print("\n| linear | in x out | block | density | dense ms | sparse ms | speedup | "
          "dense TFLOP/s | sparse TFLOP/s | max rel err |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, shape in sizes["shapes"].items():
        for block in sizes["blocks"]:
            for r in bench_linear(name, shape, sizes["tokens"], block, sizes["densities"], rounds,
                                  sizes["tiles"]):
                rows.append(r)
                print(f"| {name} | {shape[0]}x{shape[1]} | {block} | 1/{round(1 / r['density'])} | "
                      f"{r['dense_s'] * 1e3:.3f} | {r['sparse_s'] * 1e3:.3f} | {r['speedup']:.2f}x | "
                      f"{r['dense_tflops']:.1f} | {r['sparse_tflops']:.1f} | {r['max_rel_err']:.1e} |",
                      flush=True)
                if r["pallas_s_by_tile"]:
                    print("|   token tiles: " + ", ".join(
                        f"{tile}: {sec * 1e3:.3f} ms" for tile, sec in r["pallas_s_by_tile"].items()))
    at_target = [r["speedup"] for r in rows if r["block"] == 64 and abs(r["density"] - 1 / 8) < 1e-9]
    if at_target:
        print(f"\ndensity 1/8, 64x64 blocks: sparse/dense fwd+bwd {min(at_target):.2f}x .. "
              f"{max(at_target):.2f}x (target >= {TARGET_LINEAR}x)")
    return rows


if __name__ == "__main__":
    sys.exit(main())
