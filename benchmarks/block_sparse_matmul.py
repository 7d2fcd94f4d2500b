"""Block-sparse matmul vs dense jnp.dot on this machine: forward and forward+backward.

    python benchmarks/block_sparse_matmul.py                 # full grid, every ISA path (~1 h on 2 cores)
    python benchmarks/block_sparse_matmul.py --quick         # one shape, block 64, 2 densities
    python benchmarks/block_sparse_matmul.py --allocator tuned   # glibc malloc tunables (see below)
    python benchmarks/block_sparse_matmul.py --blocks 64 --densities 1/2,1/4,1/8   # a subset
    python benchmarks/block_sparse_matmul.py --isas avx2   # the compiled kernel's avx2 path only

Prints a markdown table and writes JSON (default benchmarks/results/block_sparse_matmul.json).
Both kernels of block_sparse_matmul run side by side: 'ffi' (the compiled CPU kernel, when it
was built at install) and 'jax' (pure JAX); the line starting with "# kernel" names the one
block_sparse_matmul uses by default. Each case runs dense `jnp.dot` and every kernel in turn,
--reps rounds after one warm-up (block_until_ready), so load from other processes hits them
alike; times are medians, speedups the median over rounds of dense time / sparse time.
Peers (same run): jax.experimental.sparse BCOO (element-sparse, block 64 only) and torch BSR
(when torch is installed), against the dense median.

Instruction sets: the compiled kernel has one path per instruction set (ffi.py); by default every
path this CPU runs except `generic` is measured, each in its own process (a process registers one
library), with its own interleaved dense rounds; rows name the path ("sparsetrain ffi
(avx2+fma)"). The header prints the CPU model, the paths and the load average (`os.getloadavg`,
also stored at the start and end of each process): on a shared machine read the ratios, which
every round pairs with a dense run of its own; the JSON keeps each round's ratio.

Allocator: XLA:CPU allocates its big buffers with malloc; glibc hands those out with mmap and
returns them on free, so every call page-faults its outputs again. `--allocator tuned` re-runs the
process with `sparsetrain.allocator.TUNED_GLIBC` (freed memory kept in the heap, one arena for
every thread); `--allocator tcmalloc` preloads libtcmalloc_minimal if `ldconfig -p` finds it.
The setting that ran is printed and stored in the JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from machine import cpu_model  # benchmarks/ (this script's folder) is on sys.path
from sparsetrain import allocator

SHAPES = [(8192, 768, 3072), (4096, 2048, 8192), (2048, 512, 2048)]  # tokens x in x out; the last
# is the train step's (2048 tokens x 512 in x 2048 out)
BLOCKS = [32, 64, 128]
DENSITIES = [1 / 2, 1 / 4, 1 / 8, 1 / 16]


def _find_tcmalloc():
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        return None
    for line in out.splitlines():
        if "libtcmalloc_minimal.so" in line and "=>" in line:
            return line.split("=>")[1].strip()
    return None


def _reexec_with_allocator(choice: str) -> None:
    """Restart this script with the allocator environment, once (before jax is imported)."""
    if os.environ.get("_BSMM_ALLOCATOR_SET") or choice == "default":
        return
    if choice == "tuned":
        allocator.reexec_tuned({"_BSMM_ALLOCATOR_SET": "1"})
        return
    lib = _find_tcmalloc()
    if lib is None:
        sys.exit("--allocator tcmalloc: libtcmalloc_minimal not found by `ldconfig -p`")
    env = dict(os.environ, _BSMM_ALLOCATOR_SET="1", LD_PRELOAD=lib)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


allocator_setting = allocator.describe


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="first shape, block 64, densities 1/2 and 1/8")
    ap.add_argument("--out", default="benchmarks/results/block_sparse_matmul.json", help="JSON output path")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per case (median)")
    ap.add_argument("--allocator", choices=["default", "tuned", "tcmalloc"], default="default")
    ap.add_argument("--no-peers", action="store_true", help="skip jax.experimental.sparse and torch")
    ap.add_argument("--shapes", help="comma-separated TxINxOUT subset, e.g. 8192x768x3072")
    ap.add_argument("--blocks", help="comma-separated block sizes, e.g. 64")
    ap.add_argument("--densities", help="comma-separated fractions, e.g. 1/2,1/4,1/8")
    ap.add_argument("--kernels", default="ffi,jax",
                    help="comma-separated kernels of block_sparse_matmul: ffi (if built), jax")
    ap.add_argument("--isas", help="comma-separated paths of the compiled kernel (avx512, avx2, "
                    "generic); default: every one this CPU runs but generic")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    _reexec_with_allocator(args.allocator)
    if os.environ.get("SPARSETRAIN_KERNEL_ISA") is None and "ffi" in args.kernels.split(","):
        return _per_isa(args, argv if argv is not None else sys.argv[1:])

    import jax
    import jax.numpy as jnp
    import numpy as np

    from sparsetrain.kernels import ffi
    from sparsetrain.sparsity import block_sparse_matmul, dense_to_values, random_balanced
    from sparsetrain.kernels.dispatch import kernel_backend_info, use_kernel_backend

    try:
        import torch
    except ImportError:
        torch = None

    timed = functools.partial(_timed, jax, np, args.reps)
    fwd_bwd = functools.partial(_fwd_bwd, jax)
    rounds = functools.partial(_rounds, jax, args.reps)

    kernels = _kernels(args, ffi)
    shapes, blocks, densities = _grid(args)
    setting = allocator_setting()
    load_start = os.getloadavg()
    print(f"# block_sparse_matmul benchmark: jax {jax.__version__}, {os.cpu_count()} CPUs, "
          f"{cpu_model()}; allocator: {setting}; load average {_load(load_start)}", flush=True)
    print(f"# kernel of block_sparse_matmul (float32, CPU): {kernel_backend_info()}; measured: "
          f"{', '.join(kernels)}", flush=True)
    isa = ffi.ISA if "ffi" in kernels else None

    rows = []
    for tokens, n_in, n_out in shapes:
        key = jax.random.PRNGKey(0)
        kx, kw, kd = jax.random.split(key, 3)
        x = jax.random.normal(kx, (tokens, n_in), jnp.float32)
        w = jax.random.normal(kw, (n_in, n_out), jnp.float32)
        dy = jax.random.normal(kd, (tokens, n_out), jnp.float32)
        dense_f_fn = jax.jit(jnp.dot).lower(x, w).compile()
        dense_fb_fn = fwd_bwd(jnp.dot).lower(x, w, dy).compile()
        shape_s = f"{tokens}x{n_in}x{n_out}"
        for block in blocks:
            for density in densities:
                try:
                    layout = random_balanced(key, (n_in, n_out), (block, block), density)
                except ValueError as err:  # e.g. 1/16 of 6 row blocks leaves none
                    print(f"  {shape_s} b{block} d=1/{round(1 / density)}: skipped ({err})", flush=True)
                    continue
                values = dense_to_values(w, layout)
                mm = lambda x, v, layout=layout: block_sparse_matmul(x, v, layout)  # noqa: E731
                t0 = time.perf_counter()
                f_fns, fb_fns = {"dense": (dense_f_fn, (x, w))}, {"dense": (dense_fb_fn, (x, w, dy))}
                for kernel in kernels:
                    with use_kernel_backend(kernel):  # the kernel is chosen when traced
                        f_fns[kernel] = (jax.jit(mm).lower(x, values).compile(), (x, values))
                        fb_fns[kernel] = (fwd_bwd(mm).lower(x, values, dy).compile(), (x, values, dy))
                f_times, fb_times = rounds(f_fns), rounds(fb_fns)
                case = dict(shape=shape_s, block=block, density=density, actual_density=layout.density)
                new_rows = _kernel_rows(np, kernels, isa, f_times, fb_times, case)
                rows += new_rows
                dense_f, dense_fb = new_rows[0]["dense_fwd_ms"], new_rows[0]["dense_fwd_bwd_ms"]
                line = [f"{r['kernel']} fwd x{r['fwd_speedup']:.2f} fwd+bwd x{r['fwd_bwd_speedup']:.2f}"
                        for r in new_rows]
                _write_json(rows, setting, args.out, jax.__version__, complete=False, load=(load_start,))
                print(f"  {shape_s} b{block} d=1/{round(1 / density)} (actual {layout.density:.3f}): "
                      f"dense fwd {dense_f:.0f} ms, fwd+bwd {dense_fb:.0f} ms; {' | '.join(line)} "
                      f"[{time.perf_counter() - t0:.0f}s]", flush=True)
                if args.no_peers or block != 64:
                    continue
                rows += _peers(args, jax, jnp, np, torch, timed, fwd_bwd, x, w, dy, layout, rows[-1])
    _report(rows, setting, args.out, jax.__version__, load=(load_start, os.getloadavg()))
    return 0


def _timed(jax, np, reps, fn, *a) -> float:
    """Median seconds of `reps` calls of fn(*a) after one warm-up (compile) call."""
    jax.block_until_ready(fn(*a))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*a))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _fwd_bwd(jax, matmul):
    """jit of (x, w, dy) -> (y, dx, dw) of y = matmul(x, w)."""
    def f(x, w, dy):
        y, vjp = jax.vjp(matmul, x, w)
        return (y, *vjp(dy))

    return jax.jit(f)


def _rounds(jax, reps, fns):
    """{name: (fn, args)} -> {name: [seconds per round]}: one warm-up each, then `reps` rounds
    running each once in turn."""
    for fn, a in fns.values():
        jax.block_until_ready(fn(*a))
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, (fn, a) in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*a))
            times[name].append(time.perf_counter() - t)
    return times

def _kernels(args, ffi) -> list[str]:
    """The kernels of --kernels to measure ('ffi' dropped, saying why, when it was not built)."""
    kernels = [k for k in args.kernels.split(",") if k]
    for k in kernels:
        if k not in ("ffi", "jax"):
            sys.exit(f"--kernels: {k!r} is not allowed; expected ffi and/or jax")
    if "ffi" in kernels and not ffi.AVAILABLE:
        print(f"# kernel ffi skipped: compiled kernel {ffi.DESCRIPTION}", flush=True)
        kernels.remove("ffi")
    if not kernels:
        sys.exit("--kernels: no kernel left to measure")
    return kernels


def _grid(args):
    """(shapes, blocks, densities) of the run: the defaults, --quick's, or the options'."""
    shapes = SHAPES[:1] if args.quick else SHAPES
    blocks = [64] if args.quick else BLOCKS
    densities = [1 / 2, 1 / 8] if args.quick else DENSITIES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.blocks:
        blocks = [int(b) for b in args.blocks.split(",")]
    if args.densities:
        densities = [float(num) / float(den or 1) for num, _, den in (d.partition("/") for d in args.densities.split(","))]
    return shapes, blocks, densities


def _kernel_rows(np, kernels, isa, f_times, fb_times, case) -> list[dict]:
    """One row per kernel: median times and the median and every round of dense / kernel time.
    `case` holds the shape, block and density fields."""
    rows = []
    dense_f, dense_fb = float(np.median(f_times["dense"])), float(np.median(fb_times["dense"]))
    for kernel in kernels:
        f_ratios = np.divide(f_times["dense"], f_times[kernel])
        fb_ratios = np.divide(fb_times["dense"], fb_times[kernel])
        name = f"sparsetrain {kernel}" + (f" ({isa})" if kernel == "ffi" else "")
        rows.append(dict(impl=name, kernel=kernel, isa=isa if kernel == "ffi" else None, **case,
                         fwd_ms=float(np.median(f_times[kernel])) * 1e3,
                         fwd_bwd_ms=float(np.median(fb_times[kernel])) * 1e3,
                         dense_fwd_ms=dense_f * 1e3, dense_fwd_bwd_ms=dense_fb * 1e3,
                         fwd_speedup=float(np.median(f_ratios)),
                         fwd_bwd_speedup=float(np.median(fb_ratios)),
                         fwd_round_ratios=[float(r) for r in f_ratios],
                         fwd_bwd_round_ratios=[float(r) for r in fb_ratios]))
    return rows

def _load(avg) -> str:
    return "/".join(f"{v:.1f}" for v in avg) + " (1/5/15 min)"


def _per_isa(args, argv) -> int:
    """Run this benchmark once per instruction-set path in a child process (one library per
    process), then merge their rows into one table and JSON."""
    from sparsetrain.kernels import ffi

    runs = [i for i in ffi.cpu_isas() if ffi.library_path(i) is not None]
    isas = args.isas.split(",") if args.isas else [i for i in runs if i != "generic"] or runs
    for isa in isas:
        if isa not in runs:
            sys.exit(f"--isas: {isa!r} is not a built path this CPU runs (it runs {', '.join(runs)})")
    print(f"# {cpu_model()}: compiled kernel paths built and runnable here: {', '.join(runs)}; "
          f"measuring {', '.join(isas)}", flush=True)
    rows, jsons = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n, isa in enumerate(isas):
            out = os.path.join(tmp, f"{isa}.json")
            child = _without(argv, "--out", "--isas", "--kernels") + ["--out", out, "--kernels"]
            # the pure-JAX kernel and the peers do not depend on the path: measured once
            child += [args.kernels] if n == 0 else ["ffi", "--no-peers"]
            env = dict(os.environ, SPARSETRAIN_KERNEL_ISA=isa)
            done = subprocess.run([sys.executable, os.path.abspath(__file__), *child], env=env)
            if done.returncode != 0:
                return done.returncode
            with open(out) as f:
                jsons.append(json.load(f))
            rows += jsons[-1]["rows"]
    load = (tuple(jsons[0]["load_average"][0]), os.getloadavg())
    _report(rows, jsons[0]["allocator"], args.out, jsons[0]["jax"], load=load)
    return 0


def _without(argv, *options):
    """argv less each `--option value` / `--option=value` of `options`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not any(a.startswith(o + "=") for o in options):
            out.append(a)
    return out


def _peers(args, jax, jnp, np, torch, timed, fwd_bwd, x, w, dy, layout, ours):
    """jax.experimental.sparse BCOO and torch BSR on the same masked weight."""
    from jax.experimental import sparse as jsparse

    from sparsetrain.sparsity import layout_to_mask

    out = []
    base = {k: ours[k] for k in ("shape", "block", "density", "actual_density", "dense_fwd_ms", "dense_fwd_bwd_ms")}
    mask = np.kron(np.asarray(layout_to_mask(layout)), np.ones(layout.block, bool))
    wm = jnp.where(mask, w, 0)
    wsp = jsparse.BCOO.fromdense(wm, nse=int(mask.sum()))

    def bcoo_mm(x, data):
        return x @ jsparse.BCOO((data, wsp.indices), shape=wsp.shape)

    try:
        f = timed(jax.jit(bcoo_mm), x, wsp.data)
        fb = timed(fwd_bwd(bcoo_mm), x, wsp.data, dy)
        out.append(dict(base, impl="jax.experimental.sparse BCOO", fwd_ms=f * 1e3, fwd_bwd_ms=fb * 1e3,
                        fwd_speedup=base["dense_fwd_ms"] / (f * 1e3), fwd_bwd_speedup=base["dense_fwd_bwd_ms"] / (fb * 1e3)))
    except Exception as err:  # noqa: BLE001 - a peer failing must not stop the benchmark
        msg = repr(err)[:160]
        print(f"  BCOO peer failed: {msg}")
        out.append(dict(base, impl="jax.experimental.sparse BCOO", fwd_ms=None, fwd_bwd_ms=None,
                        fwd_speedup=None, fwd_bwd_speedup=None, error=msg))
    if torch is not None:
        try:
            out.append(dict(base, impl=f"torch {torch.__version__} BSR", **_torch_times(args, torch, np, x, wm, dy, layout, base)))
        except Exception as err:  # noqa: BLE001
            print(f"  torch peer failed: {err!r}")
    for r in out:
        if r.get("fwd_speedup"):
            print(f"    peer {r['impl']}: fwd x{r['fwd_speedup']:.2f} fwd+bwd "
                  f"{'x%.2f' % r['fwd_bwd_speedup'] if r.get('fwd_bwd_speedup') else 'n/a'}", flush=True)
    return out


def _torch_times(args, torch, np, x, wm, dy, layout, base):
    """y.T = W.T (BSR) @ x.T; forward+backward gives grads of x and of the stored blocks."""
    torch.set_num_threads(os.cpu_count() or 1)
    xt = torch.from_numpy(np.asarray(x)).T.contiguous()
    dyt = torch.from_numpy(np.asarray(dy)).T.contiguous()
    wt = torch.from_numpy(np.asarray(wm)).T.contiguous().to_sparse_bsr(layout.block[::-1])

    def run(backward):
        if not backward:
            with torch.no_grad():
                return torch.mm(wt, xt)
        a = wt.detach().requires_grad_(True)
        b = xt.detach().requires_grad_(True)
        torch.mm(a, b).backward(dyt)
        return b.grad

    def t(backward):
        run(backward)
        times = []
        for _ in range(args.reps):
            s = time.perf_counter()
            run(backward)
            times.append(time.perf_counter() - s)
        return float(np.median(times)) * 1e3

    res = dict(fwd_ms=t(False))
    res["fwd_speedup"] = base["dense_fwd_ms"] / res["fwd_ms"]
    try:
        res["fwd_bwd_ms"] = t(True)
        res["fwd_bwd_speedup"] = base["dense_fwd_bwd_ms"] / res["fwd_bwd_ms"]
    except Exception as err:  # noqa: BLE001 - BSR backward is not supported by every torch build
        res["fwd_bwd_ms"] = res["fwd_bwd_speedup"] = None
        res["fwd_bwd_error"] = repr(err)[:200]
    return res


def _report(rows, setting, out_path, jax_version, load):
    def fmt(v):
        return "n/a" if v is None else f"{v:.2f}x"

    print(f"\nCPU: {cpu_model()}; allocator: {setting}; load average at start {_load(load[0])}, "
          f"at end {_load(load[-1])}\n")
    print("| impl | shape (T x in x out) | block | density (actual) | fwd ms | fwd speedup | fwd+bwd ms | fwd+bwd speedup |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = "n/a" if r.get("fwd_ms") is None else f"{r['fwd_ms']:.1f}"
        fb = "n/a" if r.get("fwd_bwd_ms") is None else f"{r['fwd_bwd_ms']:.1f}"
        note = f" ({r['error'][:40]})" if r.get("error") else ""
        print(f"| {r['impl']}{note} | {r['shape']} | {r['block']} | 1/{round(1 / r['density'])} ({r['actual_density']:.3f}) "
              f"| {f} | {fmt(r.get('fwd_speedup'))} | {fb} | {fmt(r.get('fwd_bwd_speedup'))} |")
    _write_json(rows, setting, out_path, jax_version, complete=True, load=load)
    print(f"\nwrote {out_path}")


def _write_json(rows, setting, out_path, jax_version, complete, load):
    """Written after every case too (complete=False), so an interrupted run leaves its rows."""
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
        from sparsetrain.kernels.dispatch import kernel_backend_info

        json.dump(dict(allocator=setting, jax=jax_version, cpus=os.cpu_count(),
                       cpu_model=cpu_model(), default_kernel=kernel_backend_info(),
                       load_average=[list(a) for a in load], machine=platform.machine(),
                       complete=complete, rows=rows), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
