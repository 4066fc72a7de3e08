"""What a parallel sweep shows while it runs: one line per running child (round, its progress figures such
as the latest global accuracy, ETA) and a total line (children done / total, failed, ETA).

On a terminal the lines are redrawn in place (a block at the bottom of the screen, messages printed above
it); otherwise (a log file, a batch job) the same facts are printed as plain lines: when a child starts and
ends, and each running child's line at most every ``every_s`` seconds. Without progress display
(``--no-progress``) only the start and end lines are printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO


def duration(seconds: float | None) -> str:
    """``42s``, ``7m05s``, ``3h12m``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@dataclass
class ChildLine:
    label: str
    rounds: int
    cost: float  # expected work (fedreg.sweep.expected_cost)
    start_round: int = 0  # a resumed child starts after its checkpoint
    round: int = 0
    shown: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    where: str = ""
    last_print: float = 0.0

    def eta(self) -> float | None:
        done = self.round - self.start_round
        if done <= 0:
            return None
        return (time.monotonic() - self.started) / done * (self.rounds - self.round)

    def text(self) -> str:
        figs = " ".join(f"{k}={v:.4f}" for k, v in self.shown.items())
        return (
            f"{self.label}: round {self.round}/{self.rounds}" + (f" {figs}" if figs else "") + f" ETA "
            f"{duration(self.eta())}"
        )


class SweepProgress:
    """The progress of the children of one sweep (see the module docstring)."""

    def __init__(
        self,
        total: int,
        total_cost: float,
        echo: Callable[[str], Any] = print,
        live: bool | None = None,
        stream: TextIO | None = None,
        every_s: float = 30.0,
        enabled: bool = True,
    ):
        self.stream = stream or sys.stderr
        self.live = (self.stream.isatty() if live is None else live) and enabled
        self.enabled, self.echo, self.every_s = enabled, echo, every_s
        self.total, self.total_cost = total, total_cost
        self.done = self.failed = 0
        self.cost_done = 0.0  # expected work of the rounds trained so far
        self.t0 = time.monotonic()
        self.children: dict[int, ChildLine] = {}
        self._drawn = 0  # lines of the live block on screen

    # -- events ------------------------------------------------------------------------------------------
    def skip(self, cost: float) -> None:
        """A child that finished before (resumed sweep): counted done, no work."""
        self.total_cost -= cost
        self.done += 1

    def started(self, index: int, label: str, rounds: int, cost: float, start_round: int, where: str) -> None:
        self.children[index] = ChildLine(label, rounds, cost, start_round, start_round, where=where)
        self.message(f"{label}: started ({where})" + (f" after round {start_round}" if start_round else ""))

    def moved(self, index: int, where: str) -> None:
        if index in self.children:
            self.children[index].where = where

    def round(self, index: int, r: int, shown: dict[str, float]) -> None:
        line = self.children.get(index)
        if line is None:
            return
        self.cost_done += line.cost / max(1, line.rounds) * (r - line.round)
        line.round, line.shown = r, shown
        if not self.enabled:
            return
        if self.live:
            self.draw()
        elif time.monotonic() - line.last_print >= self.every_s:
            line.last_print = time.monotonic()
            self.echo(f"{line.text()}  [{self.total_text()}]")

    def ended(self, index: int, status: str, text: str) -> None:
        line = self.children.pop(index, None)
        if line is not None:  # the rest of its expected work will not be done
            self.total_cost -= line.cost / max(1, line.rounds) * (line.rounds - line.round)
        self.done += 1
        self.failed += status not in ("FINISHED", "STOPPED")  # STOPPED: by --max-time, resumable
        self.message(f"{text}  [{self.total_text()}]")

    # -- display -----------------------------------------------------------------------------------------
    def eta(self) -> float | None:
        if self.cost_done <= 0:
            return None
        return (time.monotonic() - self.t0) / self.cost_done * max(0.0, self.total_cost - self.cost_done)

    def total_text(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"sweep: {self.done}/{self.total} done, {len(self.children)} running{failed}, "
            f"{duration(time.monotonic() - self.t0)} elapsed, ETA {duration(self.eta())}"
        )

    def message(self, text: str) -> None:
        """A line that stays (printed above the live block); printed without progress display too."""
        if self.live:
            self.clear()
            self.stream.write(text + "\n")
            self.draw()
        else:
            self.echo(text)

    def clear(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def draw(self) -> None:
        self.clear()
        lines = [f"  {c.text()}" for c in self.children.values()] + [self.total_text()]
        self.stream.write("".join(line + "\x1b[K\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    def close(self) -> None:
        if self.live:
            self.clear()
            self.stream.flush()
