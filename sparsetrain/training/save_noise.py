"""Orbax's own reports of a failed checkpoint save, held back so the user reads one line.

When a save fails part-way (a full disk), Orbax's writer threads each log the error through absl
(logger "absl"), tensorstore prints an "Event loop is closed" traceback (through
`sys.excepthook`) for every write that completes after Orbax closed that thread's event loop,
and asyncio logs "Task exception was never retrieved" when the failed write tasks are
garbage-collected, possibly much later: hundreds of lines around the `CheckpointSaveError` that
already says what failed and what is kept.

`held_back()` wraps a save: absl's records are held and written out unchanged if the save
succeeds, dropped if it fails (written with SPARSETRAIN_DEBUG=1); closed-loop errors and
asyncio's reports of Orbax's tasks are dropped while a save runs and after one has failed.
Nothing else printed is touched (W&B wraps sys.stderr: it is never replaced).
"""

from __future__ import annotations

import contextlib
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


class Held:
    """One wrapped save; `failed()` marks its held output to be dropped."""

    def __init__(self):
        self.ok = True

    def failed(self) -> None:
        self.ok = False


class _Quiet:
    """Whether Orbax's late noise is dropped now: while a save runs, and after one failed."""

    saving = 0
    failed = False
    installed = False

    @classmethod
    def active(cls) -> bool:
        return cls.saving > 0 or cls.failed


def _is_closed_loop_error(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _install() -> None:
    """Filters on asyncio's logger and the exception hooks, each dropping only Orbax's noise
    while `_Quiet.active()` (installed once per process)."""
    if _Quiet.installed:
        return
    _Quiet.installed = True
    _ASYNCIO.addFilter(lambda r: not (_Quiet.active() and "orbax" in r.getMessage()))
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def quiet_excepthook(kind, value, tb):
        if not (_Quiet.active() and _is_closed_loop_error(value)):
            excepthook(kind, value, tb)

    def quiet_unraisablehook(unraisable):
        if not (_Quiet.active() and _is_closed_loop_error(unraisable.exc_value)):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook


@contextlib.contextmanager
def held_back():
    """Hold Orbax's reports during a save; see the module docstring."""
    _install()
    held, hold = Held(), _HoldRecords()
    _ABSL.addFilter(hold)
    _Quiet.saving += 1
    try:
        yield held
    finally:
        _Quiet.saving -= 1
        _ABSL.removeFilter(hold)
        if not held.ok:
            _Quiet.failed = True
        if held.ok or os.environ.get("SPARSETRAIN_DEBUG", "") not in ("", "0"):
            for record in hold.records:
                _ABSL.handle(record)
