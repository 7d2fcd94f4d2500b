"""Training tokens/s of a small sparse and a small dense GPT on 1 process x 1 device, 1 process x
2 devices and 2 processes x 1 device (`sparsetrain launch`, jax.distributed over gloo).

    .venv/bin/python benchmarks/scaling.py [--steps 10] [--out benchmarks/results]

Each layout trains the same recipe (FSDP over all devices when there are 2) through the real
`sparsetrain train` command, and reads the median step time after 2 warm-up steps from the run's
summary, with the block-sparse kernel of process 0's float32 calls (`kernel_backend`; 'auto'
keeps pure JAX on several devices) and `kernel_backend_info()`. Prints a table and writes `scaling.json`
with the CPU model and vector ISA.

On a machine with only a few cores the virtual devices and processes share those cores, so the
numbers measure the cost of the multi-device and multi-process machinery (collectives,
process hand-offs), not a speedup.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulate_headline import cpu_description  # noqa: E402
from kill_resume import make_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (name, processes, devices per process)
LAYOUTS = [("1 process x 1 device", 1, 1), ("1 process x 2 devices", 1, 2),
           ("2 processes x 1 device", 2, 1)]
MODELS = {"sparse": {"pattern": "random_balanced", "density": 0.25, "block": 32},
          "dense": {"pattern": "dense"}}
CAPTION = ("Overhead of the multi-device / multi-process machinery on this machine's cores, not a "
           "speedup: every device and process shares the same few cores.")


def make_recipe(path: Path, corpus: Path, cache: Path, sparsity: dict, steps: int) -> Path:
    """A 2-layer, 128-wide GPT, batch 8 x 64 tokens, no evaluation until its last step."""
    raw = {
        "model": {"preset": "tiny", "n_layers": 2, "d_model": 128, "n_heads": 4, "context": 64},
        "sparsity": sparsity,
        "data": {"dataset": str(corpus), "vocab_size": 512, "seq_len": 64, "batch_size": 8,
                 "cache_dir": str(cache)},
        "optimizer": {"lr": 3e-3, "warmup_steps": 2},
        "run": {"name": "scaling", "steps": steps, "eval_every": 1000, "eval_batches": 1, "log_every": 1,
                "checkpoint_every": 1000, "wandb": "disabled", "progress": False},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def run_layout(recipe: Path, out: Path, processes: int, devices: int) -> dict:
    """Train `recipe` in one layout; its printed summary (with "kernel") and the wall time."""
    overrides = ["--set", f"run.out_dir={out}", "--set", f"run.mesh_fsdp={processes * devices}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    if processes == 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        cmd = ["train", str(recipe), *overrides]
    else:
        cmd = ["launch", "--processes", str(processes), "--devices-per-process", str(devices), "--",
               "train", str(recipe), *overrides]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sparsetrain.cli", *cmd], env=env, capture_output=True,
                          text=True, timeout=600)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}{done.stdout[-2000:]}")
    lines = [ln.removeprefix("[p0] ") for ln in done.stdout.splitlines()]
    start = max(i for i, ln in enumerate(lines) if ln == "{")
    summary = json.loads("\n".join(lines[start:]))
    return {**summary, "command_wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = make_corpus(tmp / "corpus")
        for model, sparsity in MODELS.items():
            recipe = make_recipe(tmp / f"{model}.yaml", corpus, tmp / "cache", sparsity, args.steps)
            for i, (layout, processes, devices) in enumerate(LAYOUTS):
                s = run_layout(recipe, tmp / f"{model}-{i}", processes, devices)
                rows.append({"model": model, "layout": layout, "processes": processes,
                             "devices_per_process": devices, "tokens_per_s": s["tokens_per_s"],
                             "step_time_s": s["step_time_s"], "kernel": s["kernels"]["block_sparse"],
                             "kernel_info": s["kernels"]["block_sparse_detail"],
                             "final_loss": s["final_loss"], "command_wall_s": s["command_wall_s"]})
                print(f"{model:6s} {layout:24s} {s['tokens_per_s']:9.0f} tok/s  ({s['kernels']['block_sparse_detail'][:70]})", flush=True)
    result = {"cpu": cpu_description(), "cores": os.cpu_count(), "steps": args.steps,
              "tokens_per_step": 8 * 64, "caption": CAPTION, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{CAPTION}\nCPU: {result['cpu']}, {result['cores']} cores\n")
    print("| model | layout | tokens/s | vs 1 x 1 | kernel |\n|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["processes"] * b["devices_per_process"] == 1)
        print(f"| {r['model']} | {r['layout']} | {r['tokens_per_s']:,.0f} | "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['kernel']} |")


if __name__ == "__main__":
    main()
