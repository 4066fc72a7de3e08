"""How a metric's numbers read: the figures a ``Metric`` component declares (``Metric.figures``).

The core names no metric key. Tables, curves and the progress line of ``fedreg run`` and ``fedreg compare``
show what the installed metric components declare here: which per-round keys are curves, which are
columns of the comparison table (as the mean of the last ``WINDOW`` evaluated rounds, and optionally the
final round), which appear on the progress line, whether higher is better, their labels, and the name each
key is logged under in MLflow (``tracked_as``; :class:`fedreg.outputs.MetricNames`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: trailing window of the 'last-N' summaries (``last10_<key>``) written at the end of a run
WINDOW = 10


@dataclass(frozen=True)
class Figure:
    """One per-round metric key as a reader sees it."""

    key: str  # the per-round key the metric returns in MetricResult.scalars, e.g. "global_acc"
    label: str  # how it reads in a table header or a plot title, e.g. "global acc"
    higher_is_better: bool = True
    curve: bool = False  # plotted per round (run plots, compare curves)
    column: bool = False  # a column of the comparison table: mean of the last WINDOW evaluated rounds
    final: bool = False  # with ``column``: also the final evaluated round's value
    progress: bool = False  # shown on the progress line during a run
    order: int = 100  # position among the declared figures (ties: by metric name, then declaration)
    note: str = ""  # a sentence printed under a table that shows this figure (what it measures)
    #: the MLflow metric name, '/'-grouped into the sections of MLflow's chart view (e.g.
    #: "accuracy/global"); "" logs it under ``key``
    tracked_as: str = ""
    #: a fraction shown in percent wherever a table shows it (the MLflow UI's summary columns, ``fedreg
    #: compare``, ``fedreg report``); curves keep the fraction
    percent: bool = False
    #: with ``column``: a column of the mean of the last WINDOW evaluated rounds (False: the final value only,
    #: for a figure that is already a summary of the run so far, such as a running minimum)
    mean: bool = True
    #: the same value every round of a run (e.g. a count of classes): logged once as the run tag
    #: ``fedreg.constant.<key>``, not as a metric
    constant: bool = False

    @property
    def unit(self) -> str:
        return " %" if self.percent else ""

    def columns(self, evaluated: int | None = None) -> list[tuple[str, str]]:
        """(header, summary key) of this figure's table columns; ``evaluated``: the runs' evaluated rounds,
        so that a window longer than the runs is labelled as what it is."""
        out = []
        if self.column and self.final:
            span = " (final)" if self.mean else ""  # a final-only figure is its own summary
            out.append((f"{self.label}{span}{self.unit}", f"final_{self.key}"))
        if self.column and self.mean:
            out.append((f"{self.label} ({window_text(evaluated)}){self.unit}", f"last{WINDOW}_{self.key}"))
        return out


def window_text(evaluated: int | None = None) -> str:
    """What the 'last-N' summaries cover: the mean of the last WINDOW evaluated rounds, or of all of them
    when a run has fewer."""
    if evaluated is not None and evaluated < WINDOW:
        return f"mean of all {evaluated} rounds"
    return f"mean of last {WINDOW} rounds"


def figures_of(metric_classes: Iterable[Any]) -> list[Figure]:
    """The figures declared by ``metric_classes`` (registry order), sorted by ``Figure.order``; a key
    declared twice keeps its first declaration."""
    seen: dict[str, Figure] = {}
    for cls in metric_classes:
        for fig in cls.figures:
            seen.setdefault(fig.key, fig)
    return sorted(seen.values(), key=lambda f: f.order)


def clashes(metrics: Sequence[tuple[str, Any]]) -> list[tuple[int, str]]:
    """(position, message) for each metric of ``metrics`` (``(name, class)`` in the spec's order) that
    declares a scalar key, or an MLflow name (``tracked_as``), that an earlier metric declares too: one would
    overwrite the other every round."""
    owner: dict[tuple[str, str], str] = {}
    out = []
    for i, (name, cls) in enumerate(metrics):
        for fig in getattr(cls, "figures", ()):
            for what, value in (("scalar", fig.key), ("MLflow metric name", fig.tracked_as or fig.key)):
                other = owner.setdefault((what, value), name)
                if other != name:
                    out.append(
                        (
                            i,
                            f"metric '{name}' declares the {what} '{value}', which metric '{other}' also "
                            f"declares: one would overwrite the other. Keep one of the two metrics in "
                            f"'metrics', or rename the key in the plugin (a name no other metric uses)",
                        )
                    )
                    break  # a clashing key clashes in MLflow too: said once
    return out


#: (header, summary key) of a run's times, the last columns of comparison tables
TIME_COLUMNS = (("wall time s", "wall_time_s"), ("cpu time s", "cpu_time_s"))


def headline_keys(figures: Iterable[Figure]) -> set[str]:
    """The summary keys printed when a run ends: the final-column figures, the wall and the CPU time."""
    return {k for f in figures if f.final for _, k in f.columns()} | {k for _, k in TIME_COLUMNS}


def curve_keys(figures: Iterable[Figure]) -> tuple[str, ...]:
    return tuple(f.key for f in figures if f.curve)


def progress_keys(figures: Iterable[Figure]) -> tuple[str, ...]:
    return tuple(f.key for f in figures if f.progress)


def table_columns(figures: Iterable[Figure], evaluated: int | None = None) -> list[tuple[str, str]]:
    """(header, summary key) of the comparison table, in declaration order."""
    return [c for f in figures for c in f.columns(evaluated)]


__all__ = [
    "WINDOW",
    "Figure",
    "clashes",
    "figures_of",
    "curve_keys",
    "headline_keys",
    "progress_keys",
    "table_columns",
    "window_text",
]
