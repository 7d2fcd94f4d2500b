"""Speed of the compiled causal-attention kernel (float32, CPU) against XLA and a baseline build.

    python benchmarks/attention_speed.py                       # small-30m's layer shape
    python benchmarks/attention_speed.py --baseline-library OLD.so --out /tmp/attention_speed.json

Run it with the allocator setting of benchmarks/train_throughput.py (GLIBC_TUNABLES=
glibc.malloc.mmap_max=0:...): with glibc's default, every call's output buffers are fresh mmap'd
pages whose first-touch faults land inside the timed kernel (the packed backward writes one
12 MiB array at small-30m's shape and showed up to ~25% slower than the split one that way).

Times each jitted call alone (median of --rounds, interleaved so that a busy machine slows all
alike) at one shape (B, T, heads, head_dim), default small-30m's attention (8, 256, 8, 64):

- `packed`: the kernel's packed entry (q, k, v read from the (B, T, 3, H, hd) qkv array, dqkv
  written packed), the one the training step runs;
- `split`: the kernel on three (B, T, H, hd) arrays;
- `baseline`: the same two handlers of another build of the kernel library (`--baseline-library`,
  e.g. the previous version's .so), registered under other target names;
- `xla`: jax.nn.dot_product_attention(is_causal=True, implementation="xla"), the whole T x T.

FLOPs count the causal half only: the forward's two products (q k^T, P v) are 2 B H T^2 hd, the
backward's five (recomputed q k^T, do v^T, P^T do, dS^T q, dS k) 5 B H T^2 hd. The table gives
milliseconds per call, GFLOP/s and the speed-up of the kernel over the baseline and XLA.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from machine import cpu_model  # benchmarks/ (this script's folder) is on sys.path
from sparsetrain.kernels import ffi

BASELINE_FORWARD = "sparsetrain_attention_baseline_forward"
BASELINE_BACKWARD = "sparsetrain_attention_baseline_backward"


def register_baseline(path: str) -> None:
    """Registers the unpacked forward and backward handlers of the library at `path`."""
    lib = ctypes.cdll.LoadLibrary(os.path.abspath(path))
    jax.ffi.register_ffi_target(BASELINE_FORWARD, jax.ffi.pycapsule(lib.SparsetrainAttentionForward),
                                platform="cpu")
    jax.ffi.register_ffi_target(BASELINE_BACKWARD, jax.ffi.pycapsule(lib.SparsetrainAttentionBackward),
                                platform="cpu")


def baseline_calls(shape):
    b, t, h, _ = shape
    threads = np.int64(ffi.THREADS)
    fwd_out = (jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct((b, h, t), jnp.float32))
    bwd_out = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for _ in range(3))
    fwd = jax.jit(lambda q, k, v: jax.ffi.ffi_call(BASELINE_FORWARD, fwd_out)(q, k, v, threads=threads))
    bwd = jax.jit(lambda q, k, v, o, lse, do: jax.ffi.ffi_call(BASELINE_BACKWARD, bwd_out)(
        q, k, v, o, lse, do, threads=threads))
    return fwd, bwd


def runners(shape, baseline: bool) -> dict:
    """name -> zero-argument callable that runs one call and waits for it."""
    b, t, h, hd = shape
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    qkv = jax.random.normal(keys[0], (b, t, 3, h, hd), jnp.float32)
    do = jax.random.normal(keys[1], shape, jnp.float32)
    q, k, v = (jnp.asarray(qkv[:, :, i]) for i in range(3))
    o, lse = ffi.attention_forward(q, k, v)
    pf = jax.jit(ffi.attention_packed_forward)
    pb = jax.jit(ffi.attention_packed_backward)
    sf = jax.jit(ffi.attention_forward)
    sb = jax.jit(ffi.attention_backward)

    def xla(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")

    xf = jax.jit(xla)
    xfb = jax.jit(lambda q, k, v, do: jax.vjp(xla, q, k, v)[1](do))  # forward + backward
    out = {
        "packed forward": lambda: pf(qkv),
        "packed backward": lambda: pb(qkv, o, lse, do),
        "split forward": lambda: sf(q, k, v),
        "split backward": lambda: sb(q, k, v, o, lse, do),
        "xla forward": lambda: xf(q, k, v),
        "xla forward+backward": lambda: xfb(q, k, v, do),
    }
    if baseline:
        bf, bb = baseline_calls(shape)
        out["baseline forward"] = lambda: bf(q, k, v)
        out["baseline backward"] = lambda: bb(q, k, v, o, lse, do)
    return out


def timed(calls: dict, rounds: int) -> dict:
    """name -> median seconds per call over `rounds` interleaved rounds (after two warm-ups)."""
    for run in calls.values():
        for _ in range(2):
            jax.block_until_ready(run())
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, run in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="8,256,8,64", help="B,T,heads,head_dim")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--baseline-library", help="another build of the kernel library to compare")
    parser.add_argument("--baseline-label", default="",
                        help="what the baseline build is (e.g. the commit it was built from), for the JSON")
    parser.add_argument("--out", default="benchmarks/results/attention_speed.json")
    args = parser.parse_args()
    if not ffi.AVAILABLE:
        raise SystemExit(f"attention_speed: the compiled kernel is {ffi.DESCRIPTION}")
    shape = tuple(int(s) for s in args.shape.split(","))
    b, t, h, hd = shape
    if args.baseline_library:
        register_baseline(args.baseline_library)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    print(f"{cpu_model()}, {os.cpu_count()} cores; kernel {ffi.DESCRIPTION}; load average {load}; "
          f"GLIBC_TUNABLES={tunables!r}")
    sec = timed(runners(shape, bool(args.baseline_library)), args.rounds)
    flops = {"forward": 2.0 * b * h * t * t * hd, "backward": 5.0 * b * h * t * t * hd}
    flops["forward+backward"] = flops["forward"] + flops["backward"]
    for kind in ("packed", "split", "baseline"):
        if f"{kind} forward" in sec:
            sec[f"{kind} forward+backward"] = sec[f"{kind} forward"] + sec[f"{kind} backward"]
    print(f"\nshape (B, T, heads, head_dim) = {shape}, median of {args.rounds} rounds; GFLOP/s of the "
          "causal half\n\n| call | ms | GFLOP/s |\n|---|---|---|")
    rows = {}
    for name, s in sec.items():
        gf = flops[name.split(" ", 1)[1]] / s / 1e9
        rows[name] = {"ms": s * 1e3, "gflops": gf}
        print(f"| {name} | {s * 1e3:.2f} | {gf:.1f} |")
    ratios = {"packed over xla, forward+backward": sec["xla forward+backward"] / sec["packed forward+backward"],
              "packed over xla, forward": sec["xla forward"] / sec["packed forward"]}
    if "baseline forward" in sec:
        for part in ("forward", "backward", "forward+backward"):
            ratios[f"packed over baseline, {part}"] = sec[f"baseline {part}"] / sec[f"packed {part}"]
            ratios[f"split over baseline, {part}"] = sec[f"baseline {part}"] / sec[f"split {part}"]
    print()
    for name, r in ratios.items():
        print(f"{name}: {r:.2f}x")
    result = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "kernel_isa": ffi.ISA,
                          "kernels": ffi.DESCRIPTION, "glibc_tunables": tunables, "load_average_start": load,
                          "load_average_end": " ".join(f"{x:.2f}" for x in os.getloadavg())},
              "shape": {"batch": b, "seq_len": t, "heads": h, "head_dim": hd},
              "rounds": args.rounds,
              "baseline": ({"library": os.path.basename(args.baseline_library), "label": args.baseline_label}
                           if args.baseline_library else None),
              "calls": rows, "speedups": ratios}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
