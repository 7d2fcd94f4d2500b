"""Training throughput: dense vs block-sparse GPT (and PyTorch dense when installed), one run.

    python benchmarks/train_throughput.py            # tiny and small-30m, density 1/8, + profile
    python benchmarks/train_throughput.py --quick    # tiny only, fewer steps
    python benchmarks/train_throughput.py --profile-rounds 0   # throughput only

Times the real jitted train step (forward, backward, AdamW) on random tokens after a warmup and
prints tokens/s per configuration with the sparse/dense ratio of the same model measured in the
same process: the dense, sparse (and torch) steps of a configuration run in interleaved rounds
(one step each per round, median over rounds), so a machine whose speed drifts slows all alike. Writes JSON (default
benchmarks/results/train_throughput.json). Target on 2 CPU cores: sparse >= 2x dense tokens/s
on small-30m. With torch installed, a nanoGPT-style dense PyTorch model of the same shape is
timed too, on as many threads as XLA and the compiled kernels use (JAX dense should reach >= 1.1x
of it). Then, unless `--profile-rounds 0`, the per-component profile of the dense and sparse steps
(step_profile.py: linears, attention, head + embeddings + loss, element-wise, optimizer, the rest)
with the sparse/dense Amdahl limit. The header names the CPU, the kernels' instruction set, the
allocator settings and the load average (the machine may be shared: ratios of interleaved rounds
are the figures to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from sparsetrain import allocator

if __name__ == "__main__" and "--allocator=default" not in sys.argv and \
        not any(a == "--allocator" and b == "default" for a, b in zip(sys.argv, sys.argv[1:])):
    allocator.reexec_tuned()  # before jax is imported: GLIBC_TUNABLES is read at process start

import jax
import jax.numpy as jnp
import numpy as np

from sparsetrain.config import Config, from_dict, validate
from sparsetrain.models.accounting import model_counts
from sparsetrain.models.gpt import GPTSpec, build_model
from sparsetrain.training.optim import make_optimizer
from sparsetrain.kernels import ffi
from sparsetrain.kernels.dispatch import kernel_backend, kernel_backend_info
from sparsetrain.training.step import ModelFunctions, init_state, make_train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402 - benchmarks/ is on the path from here
import step_profile  # noqa: E402  (this folder's module, also when imported from elsewhere)

CASES = {  # name -> (preset, batch, seq_len, block)
    "tiny": ("tiny", 16, 128, 32),
    "small-30m": ("small-30m", 8, 256, 64),
}
VOCAB = 2048


def recipe(preset: str, batch: int, seq_len: int, block: int, density: float) -> Config:
    raw = {"model": {"preset": preset},
           "sparsity": ({"pattern": "random_balanced", "density": density, "block": block}
                        if density < 1 else {"pattern": "dense"}),
           "data": {"vocab_size": VOCAB, "seq_len": seq_len, "batch_size": batch}}
    cfg = from_dict(Config, raw)
    validate(cfg, check_data=False)
    return cfg


def make_jax_step(cfg: Config, parts: dict | None = None):
    """(run one train step and wait for it, facts) for the recipe's model on random tokens.

    `parts`: a dict that receives the model functions, optimizer, batch and a copy of the initial
    (params, indices) (for the profile: the step donates its state's buffers).
    """
    vocab = cfg.data.vocab_size
    spec = GPTSpec.from_config(cfg, vocab)
    model = build_model(spec, 0)
    counts = model_counts(model, cfg.data.seq_len)
    fns = ModelFunctions(model)
    tx, schedule = make_optimizer(cfg.optimizer, 1000)
    step = make_train_step(fns, tx, schedule)
    rng = np.random.default_rng(0)
    shape = (cfg.data.batch_size, cfg.data.seq_len)
    batch = {"tokens": rng.integers(0, vocab, shape, dtype=np.int32),
             "targets": rng.integers(0, vocab, shape, dtype=np.int32)}
    box = [init_state(fns, tx, 0)]
    if parts is not None:
        parts.update(fns=fns, tx=tx, batch=batch, initial=jax.tree.map(jnp.copy, fns.initial()),
                     hlo=lambda: step.lower(box[0], batch).compile().as_text())

    def run():
        box[0], m = step(box[0], batch)
        jax.block_until_ready(m)

    tokens = shape[0] * shape[1]
    lin_dense = sum(lin.n_in * lin.n_out for _, lin in spec.linears)
    lin_stored = sum(lin.n_in * lin.n_out * lin.density for _, lin in spec.linears)
    return run, {"tokens": tokens, "params_stored": counts.params_stored,
                 "linear_stored_fraction": lin_stored / lin_dense,
                 "params_dense": counts.params_dense,
                 "train_flops_effective": counts.train_flops_per_token_effective * tokens}


def make_torch_step(cfg: Config):
    """nanoGPT-style dense GPT of the same shape in PyTorch (CPU, float32), AdamW step; or None.

    Runs on `ffi.THREADS` threads: the CPUs XLA's pool and the compiled kernels use.
    """
    try:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.manual_seed(0)
    torch.set_num_threads(ffi.THREADS)
    shape = cfg.shape()
    d, H, L = shape.d_model, shape.n_heads, shape.n_layers

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, H, d // H).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(shape.context, d)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(d)

        def forward(self, idx):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for b in self.blocks:
                x = b(x)
            return self.ln_f(x) @ self.wte.weight.T

    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B, T = cfg.data.batch_size, cfg.data.seq_len
    tokens = torch.randint(0, VOCAB, (B, T))
    targets = torch.randint(0, VOCAB, (B, T))

    def run():
        loss = F.cross_entropy(model(tokens).view(-1, VOCAB), targets.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run, {"tokens": B * T, "threads": torch.get_num_threads()}


def timed_rounds(runners: dict, rounds: int) -> dict[str, list[float]]:
    """Warm each step twice (compile), then `rounds` rounds of one timed step per runner."""
    for run in runners.values():
        for _ in range(2):
            run()
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return times


def summary(times: list[float], facts: dict) -> dict:
    t = statistics.median(times)
    out = {**facts, "step_s": t, "step_s_all": times, "tokens_per_s": facts["tokens"] / t}
    if "train_flops_effective" in facts:
        out["tflops_effective"] = facts["train_flops_effective"] / t / 1e12
    return out


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def profile_case(name: str, parts: dict, rounds: int, isolated: bool) -> dict:
    """Component profile of the dense and sparse steps of one configuration (step_profile.py):
    from a profiler trace of `rounds` real steps, or (`isolated`) from interleaved rounds of
    each component's own jitted forward+backward."""
    labels = ("dense", "sparse")
    if isolated:
        groups = {label: {"step": parts[label]["run"],
                          **step_profile.component_runners(parts[label]["fns"], parts[label]["tx"],
                                                           parts[label]["batch"], parts[label]["initial"])}
                  for label in labels}
        times = step_profile.profile_rounds(groups, rounds)
        dense, sparse = (step_profile.breakdown(times[label]) for label in labels)
    else:
        dense, sparse = (step_profile.trace_breakdown(parts[label]["run"], parts[label]["hlo"](), rounds)
                         for label in labels)
    limits = step_profile.amdahl(dense, sparse, parts["sparse"]["stored_fraction"])
    method = "isolated components" if isolated else "profiler trace of the step"
    print(step_profile.format_profile(f"{name}, {method}", dense, sparse, limits), flush=True)
    return {"method": method, "dense": dense, "sparse": sparse, "sparse_over_dense_limits": limits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny only, 3 timed steps")
    parser.add_argument("--steps", type=int, default=6, help="timed rounds per configuration")
    parser.add_argument("--density", type=float, default=0.125)
    parser.add_argument("--configs", nargs="+", choices=list(CASES), default=list(CASES),
                        help="configurations to run (default: all)")
    parser.add_argument("--profile-rounds", type=int, default=3,
                        help="steps traced per configuration for the component profile (0: no profile)")
    parser.add_argument("--profile-isolated", action="store_true",
                        help="profile each component's own jitted forward+backward instead of a trace")
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    parser.add_argument("--allocator", choices=["tuned", "default"], default="tuned",
                        help="tuned (default): re-run under sparsetrain.allocator.TUNED_GLIBC; "
                             "default: the environment's allocator as it is")
    args = parser.parse_args()
    names = ["tiny"] if args.quick else args.configs
    steps = 3 if args.quick else args.steps

    rows = []
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "kernel_isa": ffi.ISA,
               "kernels": ffi.DESCRIPTION, "ld_preload": os.environ.get("LD_PRELOAD", ""),
               "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "load_average_start": load_average()}
    print(f"{machine['cpu']}, {os.cpu_count()} cores; load average (1, 5, 15 min) {machine['load_average_start']}")
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; allocator: "
          f"LD_PRELOAD={machine['ld_preload']!r}, GLIBC_TUNABLES={machine['glibc_tunables']!r}")
    print(f"kernels (float32, CPU): block-sparse {kernel_backend_info()}; attention "
          f"{kernel_backend(jnp.float32)}; instruction set {ffi.ISA}")
    print("\n| config | params (dense) | dense tok/s | sparse tok/s | sparse/dense | torch dense tok/s | JAX/torch dense |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        preset, batch, seq_len, block = CASES[name]
        runners, facts, parts = {}, {}, {}
        for label, density in (("dense", 1.0), ("sparse", args.density)):
            parts[label] = {}
            runners[label], facts[label] = make_jax_step(recipe(preset, batch, seq_len, block, density),
                                                         parts[label])
            parts[label]["run"] = runners[label]
        parts["sparse"]["stored_fraction"] = facts["sparse"]["linear_stored_fraction"]
        peer = make_torch_step(recipe(preset, batch, seq_len, block, 1.0))
        if peer is not None:
            runners["torch_dense"], facts["torch_dense"] = peer
        times = timed_rounds(runners, steps)
        res = {label: summary(times[label], facts[label]) for label in runners}
        dense, sparse, torch_dense = res["dense"], res["sparse"], res.get("torch_dense")
        row = {"config": name, "preset": preset, "batch": batch, "seq_len": seq_len, "block": block,
               "density": args.density, "dense": dense, "sparse": sparse, "torch_dense": torch_dense,
               "sparse_over_dense": sparse["tokens_per_s"] / dense["tokens_per_s"],
               "sparse_over_dense_per_round": [d / s for d, s in zip(times["dense"], times["sparse"])],
               "jax_over_torch_dense": (dense["tokens_per_s"] / torch_dense["tokens_per_s"]
                                        if torch_dense else None)}
        rows.append(row)
        t_tok = f"{torch_dense['tokens_per_s']:,.0f}" if torch_dense else "n/a"
        t_ratio = f"{row['jax_over_torch_dense']:.2f}x" if torch_dense else "n/a"
        print(f"| {name} | {dense['params_dense'] / 1e6:.1f} M | {dense['tokens_per_s']:,.0f} | "
              f"{sparse['tokens_per_s']:,.0f} | {row['sparse_over_dense']:.2f}x | {t_tok} | {t_ratio} |",
              flush=True)
        if torch_dense:
            row["jax_over_torch_dense_per_round"] = [t / d for d, t in zip(times["dense"], times["torch_dense"])]
        if args.profile_rounds > 0:
            row["profile"] = profile_case(name, parts, args.profile_rounds, args.profile_isolated)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine["load_average_end"] = load_average()
    print(f"load average (1, 5, 15 min) at the end: {machine['load_average_end']}")
    out.write_text(json.dumps({"machine": machine, "jax": jax.__version__,
                               "torch_threads": ffi.THREADS, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
