"""`sparsetrain launch --processes N [--devices-per-process D] -- train RECIPE ...`: one training
run over N local processes of `python -m sparsetrain.cli train ...`, joined by `jax.distributed`.

A local launcher for trying the multi-process setup on one machine: each process gets D virtual
CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=D), CPU collectives over gloo, and
the variables that make `train` call `jax.distributed.initialize(coordinator_address=
"127.0.0.1:PORT", num_processes=N, process_id=i)` (sparsetrain/training/multiprocess.py). On a
cluster the same `sparsetrain train` runs under `srun`/`mpirun` with SPARSETRAIN_DISTRIBUTED=1,
without this launcher.

Output: every line of process 0 with a `[p0] ` prefix; of the others only error lines (and the
tail of a process that failed). When a process ends with an error or is killed, the others are
given a few seconds to end on their own, then terminated, so none waits forever in a collective.
Exit status: 0 when all succeed; 6 (ProcessLostError) when a process was killed by a signal;
otherwise the worst exit status of a process that failed.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from sparsetrain.errors import InputError, ProcessLostError
from sparsetrain.training.multiprocess import NUM_PROCESSES_ENV, PROCESS_ID_ENV

GRACE_S = 5.0        # how long the others may take to end on their own after one failed
TAIL_LINES = 15      # lines shown of a failed non-primary process whose errors were not shown
_ERROR_LINE = re.compile(r"^(sparsetrain:|Traceback|\w*(Error|Exception)\b)|\bF\d{4} ")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(base: dict, rank: int, processes: int, devices: int, port: int) -> dict:
    """The environment of process `rank` of `processes`, each with `devices` CPU devices."""
    env = dict(base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env.update({
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        NUM_PROCESSES_ENV: str(processes), PROCESS_ID_ENV: str(rank),
        "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
        "PYTHONUNBUFFERED": "1",
    })
    return env


class _Child:
    """One process and the thread that forwards its output."""

    def __init__(self, rank: int, argv: list[str], env: dict):
        self.rank = rank
        self.proc = subprocess.Popen([sys.executable, "-m", "sparsetrain.cli", *argv], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     errors="replace", start_new_session=True)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.shown_error = False
        self.thread = threading.Thread(target=self._forward, daemon=True)
        self.thread.start()

    def _forward(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            if self.rank == 0 or _ERROR_LINE.search(line):
                self.shown_error |= self.rank != 0
                print(f"[p{self.rank}] {line}", flush=True)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after GRACE_S (its whole process group)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                return
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                pass


def _first_failed(children: list[_Child]) -> _Child | None:
    """A process that ended with an error, one killed by a signal first (the others' errors are
    usually its consequence: a collective that lost its partner)."""
    failed = [c for c in children if c.proc.poll() not in (None, 0)]
    return min(failed, key=lambda c: (c.proc.returncode >= 0, c.rank), default=None)


def _supervise(children: list[_Child], poll_s: float = 0.2) -> tuple[_Child | None, list[int]]:
    """Wait for all; once one fails, give the rest GRACE_S, then stop them. Returns (the first
    that failed or None, the ranks stopped by the launcher)."""
    first, stopped = None, []
    while any(c.proc.poll() is None for c in children):
        if first is None:
            first = _first_failed(children)
            deadline = time.monotonic() + GRACE_S
        elif time.monotonic() > deadline:
            for c in children:
                if c.proc.poll() is None:
                    stopped.append(c.rank)
                    c.stop()
        time.sleep(poll_s)
    first = first or _first_failed(children)
    for c in children:
        c.thread.join(timeout=5.0)
    return first, stopped


def launch(argv: list[str], processes: int, devices: int) -> int:
    """Run `sparsetrain <argv>` in `processes` joined processes; the exit status (module docstring)."""
    port = free_port()
    children = [_Child(i, argv, child_env(os.environ, i, processes, devices, port)) for i in range(processes)]
    try:
        first, stopped = _supervise(children)
    except KeyboardInterrupt:
        for c in children:
            c.stop()
        raise
    if first is None:
        return 0
    if first.rank != 0 and not first.shown_error:
        for line in first.tail:
            print(f"[p{first.rank}] {line}", file=sys.stderr, flush=True)
    code = first.proc.returncode
    others = f"; stopped process(es) {', '.join(map(str, stopped))}" if stopped else ""
    if code < 0:
        raise ProcessLostError(f"process {first.rank} of {processes} (pid {first.proc.pid}) was killed by "
                               f"{signal.Signals(-code).name}{others}; resume with --resume")
    worst = max(c.proc.returncode for c in children if c.rank not in stopped)
    print(f"sparsetrain: process {first.rank} of {processes} exited with status {code}{others}",
          file=sys.stderr, flush=True)
    return worst


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command[:1] != ["train"]:
        raise InputError(f"launch: {' '.join(command) or 'nothing'!r} is not allowed; give "
                         "`-- train RECIPE [...]` after the launcher's options")
    if args.processes < 1 or args.devices_per_process < 1:
        raise InputError(f"--processes {args.processes} / --devices-per-process "
                         f"{args.devices_per_process} is not allowed; both must be >= 1")
    return launch(command, args.processes, args.devices_per_process)


def register(subparsers) -> None:
    """Add `sparsetrain launch`."""
    p = subparsers.add_parser("launch", help="run `train` in N local processes joined by jax.distributed")
    p.add_argument("--processes", type=int, required=True, metavar="N", help="number of processes")
    p.add_argument("--devices-per-process", type=int, default=1, metavar="D",
                   help="virtual CPU devices of each process (default 1)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- train RECIPE [train options]")
    p.set_defaults(run=run)
