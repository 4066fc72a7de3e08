"""SIGTERM handled like Ctrl-C.

Batch systems stop a job with SIGTERM (Slurm at the time limit or on ``scancel``, Kubernetes when a pod is
evicted, Ray when a job is stopped), then SIGKILL after a grace period. Python's default for SIGTERM ends the
process at once, leaving its MLflow runs ``RUNNING`` forever. While :func:`sigterm_as_interrupt` is active,
SIGTERM raises :class:`Terminated` in the main thread instead: a ``KeyboardInterrupt``, so everything that
cleans up after Ctrl-C does the same for it (the round in progress is abandoned, the runs are marked
``KILLED``, the checkpoint folder stays resumable). ``fedreg run`` and ``fedreg resume`` then print how to
continue and exit with status 143 (128 + SIGTERM, as a shell reports a process ended by SIGTERM; Ctrl-C
gives 130), so a job script can tell the two apart.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: the exit status after SIGTERM (128 + 15)
EXIT_TERMINATED = 128 + int(signal.SIGTERM)
#: the exit status after Ctrl-C (128 + 2)
EXIT_INTERRUPTED = 128 + int(signal.SIGINT)


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (raised by the handler :func:`sigterm_as_interrupt` installs)."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread. Only the first SIGTERM
    does: later ones are ignored, so that the cleanup the first one started (marking runs ``KILLED``) is not
    cut short; the batch system's SIGKILL still ends a process that takes too long. Outside the main thread
    (where Python cannot install handlers) the block runs with SIGTERM as it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum, frame):
        nonlocal fired
        if fired:
            return
        fired = True
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM wait: a signal that arrives is handled (its ``KeyboardInterrupt``
    or :class:`Terminated` raised) when the block ends, not inside it. Around a tracking store's write, so
    that an interrupt cannot stop a SQLite transaction half-way and leave the store locked for the writes
    that mark the run ``KILLED``. Outside the main thread the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, Any]] = []
    held: dict[int, Any] = {}

    def hold(signum, frame):
        pending.append((signum, frame))

    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):  # a Python-level handler (Ctrl-C's default one, or sigterm_as_interrupt's)
            held[sig] = signal.signal(sig, hold)
    try:
        yield
    finally:
        for num, previous in held.items():
            signal.signal(num, previous)
        if pending:
            signum, frame = pending[0]
            held[signum](signum, frame)
