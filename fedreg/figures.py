"""How a metric's numbers read: the figures a ``Metric`` component declares (``Metric.figures``).

The core names no metric key. Tables, curves and the progress line of ``fedreg run`` and ``fedreg compare``
show what the installed metric components declare here: which per-round keys are curves, which are
columns of the comparison table (as the mean of the last ``WINDOW`` evaluated rounds, and optionally the
final round), which appear on the progress line, whether higher is better, their labels, and the name each
key is logged under in MLflow (``tracked_as``; :class:`fedreg.outputs.MetricNames`).
"""

from __future__ import annotations

from collections.abc import Iterable
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

    def columns(self) -> list[tuple[str, str]]:
        """(header, summary key) of this figure's table columns."""
        out = []
        if self.column and self.final:
            out.append((f"{self.label} (final)", f"final_{self.key}"))
        if self.column:
            out.append((f"{self.label} (last-{WINDOW} mean)", f"last{WINDOW}_{self.key}"))
        return out


def figures_of(metric_classes: Iterable[Any]) -> list[Figure]:
    """The figures declared by ``metric_classes`` (registry order), sorted by ``Figure.order``; a key
    declared twice keeps its first declaration."""
    seen: dict[str, Figure] = {}
    for cls in metric_classes:
        for fig in cls.figures:
            seen.setdefault(fig.key, fig)
    return sorted(seen.values(), key=lambda f: f.order)


def installed_figures(registry=None) -> list[Figure]:
    """The figures of every installed metric component (``registry``: default the installed plugins)."""
    if registry is None:
        from fedreg.registry import build_registry

        registry = build_registry()
    return figures_of(info.cls for info in registry.all() if info.kind == "metric")


def curve_keys(figures: Iterable[Figure]) -> tuple[str, ...]:
    return tuple(f.key for f in figures if f.curve)


def progress_keys(figures: Iterable[Figure]) -> tuple[str, ...]:
    return tuple(f.key for f in figures if f.progress)


def table_columns(figures: Iterable[Figure]) -> list[tuple[str, str]]:
    """(header, summary key) of the comparison table, in declaration order."""
    return [c for f in figures for c in f.columns()]


__all__ = [
    "WINDOW",
    "Figure",
    "figures_of",
    "installed_figures",
    "curve_keys",
    "progress_keys",
    "table_columns",
]
