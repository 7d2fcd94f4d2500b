"""One training run over many processes (`jax.distributed`): start-up, who writes, whose rows.

Every process runs the same `sparsetrain train`; JAX joins their devices into one set
(`jax.devices()` lists all of them, `jax.local_devices()` this process's own), the mesh spans all
of them, and XLA's collectives cross process boundaries (on CPU over gloo).

How a process learns its place, in the order `initialize_from_env` tries them:

- `sparsetrain launch` (local processes) sets JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT,
  SPARSETRAIN_NUM_PROCESSES=N and SPARSETRAIN_PROCESS_ID=i;
- SPARSETRAIN_DISTRIBUTED=1 (Slurm `srun`, Open MPI `mpirun`) or JAX_COORDINATOR_ADDRESS alone:
  `jax.distributed.initialize()` detects the cluster itself (coordinator = first node of the
  allocation, process id = task rank).

A process that stops sending heartbeats for SPARSETRAIN_HEARTBEAT_S seconds (default 30) is
declared dead by JAX's coordination service, which then terminates every other process (they
print "The following tasks are unhealthy (stopped sending heartbeats): <id>" and abort) instead
of leaving them blocked in a collective.

Who writes: process 0 alone writes metrics, W&B, the summary, recipe.yaml and the tokenizer;
Orbax checkpoints are written by all processes together (each its own shards, process 0 the
metadata). The run directory must be on a file system all processes see.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sparsetrain.errors import ConfigError
from sparsetrain.training.sharding import batch_sharding

NUM_PROCESSES_ENV = "SPARSETRAIN_NUM_PROCESSES"
PROCESS_ID_ENV = "SPARSETRAIN_PROCESS_ID"
DISTRIBUTED_ENV = "SPARSETRAIN_DISTRIBUTED"
HEARTBEAT_ENV = "SPARSETRAIN_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 30  # JAX's own default is 100 s; 30 s keeps a lost process's partners < 60 s


def initialize_from_env(environ=None) -> bool:
    """Join the multi-process run the environment describes (see the module docstring).

    Must run before anything initialises JAX's backend. Returns True when it joined one.
    """
    env = os.environ if environ is None else environ
    heartbeat = int(env.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))
    if env.get(NUM_PROCESSES_ENV):
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env[NUM_PROCESSES_ENV]), process_id=int(env[PROCESS_ID_ENV]),
            heartbeat_timeout_seconds=heartbeat, initialization_timeout=120)
        return True
    if env.get(DISTRIBUTED_ENV, "") not in ("", "0") or env.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)
        return True
    return False


def is_primary() -> bool:
    """True in the process that writes the run's files (process 0, or the only one)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reached `sync(name)` (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def batch_share(mesh: Mesh | None, batch_size: int) -> tuple[int, int]:
    """(process_index, process_count) whose rows [p*B/N, (p+1)*B/N) of each global batch this
    process feeds; (0, 1) with one process.

    Raises:
      ConfigError: the mesh does not cover every process's devices, the batch does not split
        evenly over the processes, or the batch sharding gives this process other rows.
    """
    n, p = jax.process_count(), jax.process_index()
    if n == 1:
        return 0, 1
    if mesh is None or mesh.devices.size != jax.device_count():
        size = 1 if mesh is None else mesh.devices.size
        raise ConfigError(f"run.mesh_data*mesh_fsdp*mesh_tensor: {size} is not allowed with {n} "
                          f"processes; the mesh must span all {jax.device_count()} devices")
    if batch_size % n:
        raise ConfigError(f"data.batch_size: {batch_size} is not allowed; it must be divisible by "
                          f"the {n} processes")
    rows = local_rows(mesh, batch_size)
    if rows != (p * batch_size // n, (p + 1) * batch_size // n):
        raise ConfigError(f"the batch sharding gives process {p} rows {rows} of {batch_size}, not a "
                          "contiguous share in process order; use mesh_tensor=1 or fewer processes")
    return p, n


def local_rows(mesh: Mesh, batch_size: int) -> tuple[int, int]:
    """[start, stop) of the global batch's rows held by this process's devices."""
    index = batch_sharding(mesh).addressable_devices_indices_map((batch_size, 1))
    starts = [idx[0].start or 0 for idx in index.values()]
    stops = [batch_size if idx[0].stop is None else idx[0].stop for idx in index.values()]
    return min(starts), max(stops)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, batch_size: int) -> dict[str, jax.Array]:
    """This process's rows of a batch ({"tokens", "targets"}: (B/N, T) int32) -> the global
    (B, T) arrays on the mesh's batch sharding."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v, (batch_size, *v.shape[1:]))
            for k, v in local.items()}


def primary_first(fn, name: str):
    """`fn()` in process 0, then, once it returned, in the others (so they read the files it wrote,
    e.g. the tokenizer, instead of writing them too). Returns `fn()`'s value."""
    if is_primary():
        out = fn()
        sync(name)
        return out
    sync(name)
    return fn()
