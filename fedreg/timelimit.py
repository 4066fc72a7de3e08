"""``--max-time``: a run or sweep that stops itself, cleanly, before a time limit.

A batch job (Slurm's ``--time``, a cloud instance lent for some hours, a working session) ends at a known
time. With ``fedreg run ... --max-time 2h30m`` (or ``fedreg resume ... --max-time``) every child run checks,
at the end of each round, whether that much wall time has passed since the command started; once it has,
the child writes a checkpoint of the round it just completed (also between ``checkpoint.every`` rounds, so
no completed round is lost), its MLflow run ends ``KILLED``, and no further child starts. The command then
says which children stopped (and at which round) and which did not start, prints the ``fedreg resume``
command that continues them, and exits with status :data:`EXIT_TIME_LIMIT`. A child overruns the limit by
at most one round; give the limit that much room before the job's own end. The limit needs checkpoints
(``checkpoint.every`` > 0): a child stopped without one would start again from round 1.
"""

from __future__ import annotations

import re
import time

#: the exit status when ``--max-time`` stopped the runs (resumable; distinct from a failure's 1, Ctrl-C's 130
#: and SIGTERM's 143)
EXIT_TIME_LIMIT = 3

_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration written as ``5400``, ``90m``, ``1h30m``, ``1.5h``, ``2d`` or ``45s``; a clear
    ``ValueError`` otherwise (argparse reports it with the option's name)."""
    s = text.strip().lower().replace(" ", "")
    try:
        seconds = float(s)
    except ValueError:
        parts = _PART.findall(s)
        if not parts or "".join(n + u for n, u in parts) != s:
            raise ValueError(
                f"'{text}' is not a duration: write seconds (5400) or amounts with units d, h, m, s "
                "(1h30m, 90m, 1.5h)"
            ) from None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError(f"'{text}': the time limit must be more than 0")
    return seconds


def duration_arg(text: str) -> float:
    """argparse type of ``--max-time``."""
    import argparse

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def deadline_after(seconds: float | None) -> float | None:
    """The wall-clock time (``time.time()``, comparable across the processes of one machine) at which a
    limit of ``seconds`` from now is reached; None without a limit."""
    return None if seconds is None else time.time() + seconds


def past(deadline: float | None) -> bool:
    """Whether the limit has been reached (never without one)."""
    return deadline is not None and time.time() >= deadline


def check_limit(max_time: float | None, checkpoint_every: int) -> None:
    """A time limit needs checkpoints: refused without them (before anything is written)."""
    if max_time and not checkpoint_every:
        from fedreg.errors import FedregError

        raise FedregError(
            "--max-time stops the runs at a round's end to continue them later from a checkpoint, but "
            "checkpoints are off: set checkpoint.every (for example --set checkpoint.every=10)"
        )


class TimeLimitReached(KeyboardInterrupt):
    """Raised in a child run at the end of its round ``round`` once the time limit has passed, after its
    checkpoint was written. A ``KeyboardInterrupt``, so that everything that cleans up after an interruption
    does the same for it (the run is marked ``KILLED``; it continues from that checkpoint)."""

    def __init__(self, round_: int | None = None):
        super().__init__(f"time limit reached after round {round_}")
        self.round = round_


def stopped_text(stopped: list[tuple[str, int | None]], unstarted: list[str], cmd: str | None) -> str:
    """What a time limit left: the children stopped at a round's end, those not started, how to go on."""
    parts = []
    if stopped:
        rounds = ", ".join(f"{name} after round {r}" for name, r in stopped)
        parts.append(f"stopped with a checkpoint: {rounds}")
    if unstarted:
        parts.append(f"not started: {', '.join(unstarted)}")
    text = "; ".join(parts) or "every child had ended"
    how = f"Continue with: {cmd}" if cmd else "run it again"
    return f"{text}. Their MLflow runs were marked KILLED; what was logged stays logged. {how}"
