"""The training headline: `sparsetrain emulate recipes/gpt3-13b-sparse.yaml --vs a100`, timed.

    .venv/bin/python benchmarks/emulate_headline.py [--recipe R] [--cores 2] [--out DIR]

Runs the command in a child process pinned to ``--cores`` CPUs (where ``taskset`` exists),
measures its wall time, CPU time and peak resident memory, and writes the headline numbers
(both plans, speedups per system and per chip, the decomposition) with those measurements to
``emulate_headline.json``. The budget: <= 15 s wall and <= 2 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S, BUDGET_BYTES = 15.0, 2e9


def cpu_description() -> str:
    """CPU model and the widest x86 vector ISA it has, from /proc/cpuinfo ('unknown' elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    return f"{model}, {isa}"


def run(recipe: str, cores: int) -> tuple[dict, dict]:
    """(report.json of the run, measurements: wall_s, cpu_s, max_rss_bytes)."""
    cmd = [sys.executable, "-m", "sparsetrain.cli", "emulate", recipe, "--vs", "a100",
           "--json"]
    if shutil.which("taskset") and cores:
        cmd = ["taskset", "-c", ",".join(str(c) for c in range(cores))] + cmd
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"emulate failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(proc.stdout), {"wall_s": wall, "cpu_s": cpu,
                                     "max_rss_bytes": after.ru_maxrss * 1024.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/gpt3-13b-sparse.yaml")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    data, measured = run(args.recipe, args.cores)
    s = data["summary"]
    result = {
        "command": f"sparsetrain emulate {args.recipe} --vs a100",
        "cores": args.cores, "cpu": cpu_description(), **measured,
        "within_budget": (measured["wall_s"] <= BUDGET_S
                          and measured["max_rss_bytes"] <= BUDGET_BYTES),
        "rdu": f"{s['sockets']} x {s['chip']}", "gpu": f"{s['gpus']} x {s['gpu']}",
        "gpu_plan": s.get("gpu_plan"), "gpu_memory_bytes": s.get("gpu_memory_bytes"),
        "headline": s.get("headline"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "emulate_headline.json").write_text(json.dumps(result, indent=2) + "\n")
    h = result["headline"] or {}
    print(f"{result['command']}: {measured['wall_s']:.1f} s wall, {measured['cpu_s']:.1f} s CPU, "
          f"{measured['max_rss_bytes'] / 1e9:.2f} GB peak on {args.cores} cores of "
          f"{result['cpu']} "
          f"(budget {BUDGET_S:.0f} s, {BUDGET_BYTES / 1e9:.0f} GB)")
    print(f"{result['rdu']} vs {result['gpu']} ({result['gpu_plan']}): "
          f"{h.get('speedup_per_system', float('nan')):.3g}x per system, "
          f"{h.get('speedup_per_chip', float('nan')):.3g}x per chip")
    print(f"wrote {out / 'emulate_headline.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
