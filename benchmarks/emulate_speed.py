"""Speed of the backend: the GPT-13B training-step estimate and functional emulation of a tiny step.

    .venv/bin/python benchmarks/emulate_speed.py

Targets: the 13B estimate in <= 30 s wall and <= 2 GB on 2 cores; executing the tiny
sparse GPT step through the emulator <= 5x the plain XLA step time.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def estimate_13b() -> dict:
    """Wall time and peak RSS of `sparsetrain emulate` on the 13B sparse recipe (own process)."""
    cmd = [sys.executable, "-c", "import sys; from sparsetrain.cli import main; "
           "sys.exit(main(['emulate', 'recipes/gpt3-13b-sparse.yaml', '--chip', 'sn40l', "
           "'--vs', 'a100', '--json']))"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10  # KiB -> MiB (Linux)
    return {"wall_s": wall, "peak_rss_mib": rss}


def tiny_functional(repeats: int = 20) -> dict:
    """Median time of the tiny sparse GPT train step: plain XLA vs the emulator's execute."""
    import jax
    import jax.numpy as jnp

    from rdu_xla_backend.execute import execute
    from sparsetrain.rdu.programs import lower_program, program_roles
    from sparsetrain.config import load_recipe
    from sparsetrain.models.gpt import GPTSpec, build_model
    from sparsetrain.training.optim import make_optimizer
    from sparsetrain.training.step import ModelFunctions, init_state, make_train_step

    cfg = load_recipe("recipes/tiny-sparse.yaml", check_data=False)
    fns = ModelFunctions(build_model(GPTSpec.from_config(cfg), 0))
    tx, schedule = make_optimizer(cfg.optimizer, cfg.run.steps)
    state = init_state(fns, tx, 0)
    rng = np.random.default_rng(0)
    shape = (cfg.data.batch_size, cfg.data.seq_len)
    batch = {k: jnp.asarray(rng.integers(0, cfg.data.vocab_size, shape), jnp.int32)
             for k in ("tokens", "targets")}
    step = make_train_step(fns, tx, schedule)
    xla = jax.jit(lambda s, b: step(s, b))
    graph = lower_program(step, state, batch, roles=program_roles("train"))
    jax.block_until_ready(xla(state, batch))
    jax.block_until_ready(execute(graph, state, batch, timed=False)[0])

    def median(f):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t_xla = median(lambda: xla(state, batch))
    t_emu = median(lambda: execute(graph, state, batch, timed=False)[0])
    return {"xla_step_s": t_xla, "emulated_step_s": t_emu, "ratio": t_emu / t_xla,
            "kernels": len(graph.kernels)}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    big = estimate_13b()
    print(f"GPT-13B sparse train-step estimate: {big['wall_s']:.1f} s wall, "
          f"{big['peak_rss_mib']:.0f} MiB peak RSS (targets: <= 30 s, <= 2048 MiB)")
    tiny = tiny_functional()
    print(f"tiny sparse GPT step: XLA {tiny['xla_step_s'] * 1e3:.2f} ms, emulated "
          f"{tiny['emulated_step_s'] * 1e3:.2f} ms ({tiny['kernels']} kernels): "
          f"{tiny['ratio']:.2f}x (target <= 5x)")


if __name__ == "__main__":
    main()
