"""Orbax's own reports of a failed checkpoint save, held back so the user reads one line.

When a save fails part-way (a full disk), Orbax's writer threads each log the error through absl
(logger "absl"), tensorstore prints an "Event loop is closed" traceback for every write that
completes after Orbax closed that thread's event loop, and asyncio logs "Task exception was never
retrieved" when the failed write tasks are garbage-collected, possibly much later: hundreds of
lines before and after the `CheckpointSaveError` that already says what failed and what is kept.

`held_back()` wraps a save: while it runs, Python-level stderr output is captured and absl's
log records are held; if the save succeeds they are written out unchanged, if it fails they are
dropped (or written, with SPARSETRAIN_DEBUG=1), and from then on asyncio's reports of Orbax's
abandoned tasks and late "Event loop is closed" errors are dropped too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys

_ABSL = logging.getLogger("absl")
_ASYNCIO = logging.getLogger("asyncio")


class _HoldRecords(logging.Filter):
    """Keeps the records of a logger instead of letting them through."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


def _is_orbax_task_report(record: logging.LogRecord) -> bool:
    return "orbax" in record.getMessage()


def _is_closed_loop_error(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


_silenced = False


def _silence_abandoned_tasks() -> None:
    """After a failed save: drop asyncio's reports of Orbax's abandoned write tasks and the
    closed-loop errors of writes that finish later (once per process)."""
    global _silenced
    if _silenced:
        return
    _silenced = True
    _ASYNCIO.addFilter(lambda record: not _is_orbax_task_report(record))
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def quiet_excepthook(kind, value, tb):
        if not _is_closed_loop_error(value):
            excepthook(kind, value, tb)

    def quiet_unraisablehook(unraisable):
        if not _is_closed_loop_error(unraisable.exc_value):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook


class Held:
    """What a wrapped save printed; `failed()` marks it to be dropped."""

    def __init__(self):
        self.ok = True

    def failed(self) -> None:
        self.ok = False


@contextlib.contextmanager
def held_back():
    """Capture stderr and absl's records during a save; see the module docstring."""
    held, hold, captured = Held(), _HoldRecords(), io.StringIO()
    stderr = sys.stderr
    _ABSL.addFilter(hold)
    sys.stderr = captured
    try:
        yield held
    finally:
        sys.stderr = stderr
        _ABSL.removeFilter(hold)
        if held.ok or os.environ.get("SPARSETRAIN_DEBUG", "") not in ("", "0"):
            stderr.write(captured.getvalue())
            for record in hold.records:
                _ABSL.handle(record)
        if not held.ok:
            _silence_abandoned_tasks()
