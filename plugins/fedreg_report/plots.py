"""The report's figures (matplotlib, Agg backend, imported on first use): the curves over rounds with a
band over seeds, one small panel per method, global accuracy against time (CPU or wall), and the client-level
view (:mod:`fedreg_report.client_plot`); :func:`make_plots` writes them all with their captions."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedreg_report.client_plot import plot_clients
from fedreg_report.metrics import CURVE_KEYS, CURVE_TITLES, WINDOW
from fedreg_report.runs import RunData
from fedreg_report.stats import curve_over_seeds
from fedreg_report.summary import WALL, Clock


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _styles(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """method -> line colour and dash: tab10 up to 10 methods, else tab20 with varied dashes."""
    plt = pyplot()

    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    dashes = ["-", "--", "-.", ":"]
    out = {}
    for i, m in enumerate(methods):
        if len(methods) <= 10:
            color, ls = cmap(i), "-"
        else:  # 20 colours: take the dark ones first, then the light ones, and vary the dash
            color, ls = cmap((2 * i) % 20 + (2 * i) // 20), dashes[(i // 10) % len(dashes)]
        out[m] = {"color": color, "linestyle": ls}
    return out


def _round_axis(ax) -> None:
    """Whole rounds on the x axis (no 1.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def smooth_text(smooth: int | None, runs: list[RunData], key: str = "global_acc") -> str:
    """' (trailing 10-round mean)', or what the window is when the runs are shorter than it."""
    if not smooth:
        return ""
    longest = max((len(rd.curves.get(key, [])) for rd in runs), default=0)
    if longest < smooth:
        return f" (mean of all rounds so far: the runs have {longest}, fewer than the {smooth}-round window)"
    return f" (trailing {smooth}-round mean)"


def _legend(fig, axes, n: int) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(n, 7), fontsize=8, frameon=False)


def plot_curves(
    by_method: dict[str, list[RunData]], path: Path, smooth: int | None, band: str = "minmax"
) -> None:
    """One panel per curve key; a line per method (mean over seeds), min-max band over seeds."""
    plt = pyplot()

    styles = _styles(list(by_method))
    keys = [k for k in CURVE_KEYS if any(rd.curves.get(k) for rs in by_method.values() for rd in rs)]
    rows = math.ceil(len(by_method) / 7)
    cols = min(3, len(keys))
    grid = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(grid, cols, figsize=(5.2 * cols, 4.0 * grid + 0.4 + 0.25 * rows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    axes = axes.flat[: len(keys)]
    runs = [rd for rs in by_method.values() for rd in rs]
    for ax, key in zip(axes, keys, strict=True):
        _round_axis(ax)
        scale = 100.0
        for m, rs in by_method.items():
            pts = curve_over_seeds([rd.curves.get(key, []) for rd in rs], smooth)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ax.plot(
                xs,
                [p[1] * scale for p in pts],
                label=m,
                linewidth=1.3,
                marker="o" if len(xs) <= 30 else None,
                markersize=3,
                **styles[m],
            )
            if band == "minmax" and len(rs) > 1:
                ax.fill_between(
                    xs,
                    [p[2] * scale for p in pts],
                    [p[3] * scale for p in pts],
                    color=styles[m]["color"],
                    alpha=0.12 if len(by_method) <= 6 else 0.06,
                    linewidth=0,
                )
        # wrapped to the panel's width (5.2 in at 10 pt: ~48 characters), so neighbouring titles never overlap
        title = CURVE_TITLES.get(key, key) + smooth_text(smooth, runs, key)
        ax.set_title("\n".join(textwrap.wrap(title, 48)), fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    _legend(fig, axes, len(by_method))
    fig.tight_layout(rect=(0, 0.06 + 0.035 * rows, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_small_multiples(
    by_method: dict[str, list[RunData]], path: Path, key: str = "global_acc", smooth: int = WINDOW
) -> None:
    """One panel per method: its mean over seeds with the min-max band, the other methods' means in grey."""
    plt = pyplot()

    styles = _styles(list(by_method))
    curves = {
        m: curve_over_seeds([rd.curves.get(key, []) for rd in rs], smooth) for m, rs in by_method.items()
    }
    cols = min(4, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(3.6 * cols, 7.5), 2.6 * rows + 0.6), sharex=True, sharey=True, squeeze=False
    )
    for ax, (m, pts) in zip(axes.flat, curves.items(), strict=False):
        for other, opts in curves.items():
            if other != m and opts:
                ax.plot([p[0] for p in opts], [p[1] * 100 for p in opts], color="#c8c8c8", linewidth=0.7)
        if pts:
            xs = [p[0] for p in pts]
            ax.fill_between(
                xs,
                [p[2] * 100 for p in pts],
                [p[3] * 100 for p in pts],
                color=styles[m]["color"],
                alpha=0.25,
                linewidth=0,
            )
            ax.plot(
                xs,
                [p[1] * 100 for p in pts],
                color=styles[m]["color"],
                linewidth=1.4,
                marker="o" if len(xs) <= 30 else None,
                markersize=3,
            )
        ax.set_title(f"{m} (n={len(by_method[m])})", fontsize=9)
        _round_axis(ax)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    for c in range(cols):  # the lowest panel of each column carries the round axis
        bottom = axes[(len(curves) - 1 - c) // cols, c]
        bottom.xaxis.set_tick_params(labelbottom=True)
        bottom.set_xlabel("round")
    for ax in axes[:, 0]:
        ax.set_ylabel("%")
    fig.suptitle(
        CURVE_TITLES.get(key, key)
        + smooth_text(smooth, [rd for v in by_method.values() for rd in v], key)
        + "\nline: mean over seeds; band: min-max over seeds; grey: the other methods' means",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_time(
    by_method: dict[str, list[RunData]],
    path: Path,
    budget: float | None,
    smooth: int = WINDOW,
    clock: Clock = WALL,
) -> None:
    """Global accuracy (trailing mean, mean over seeds) against time on ``clock`` (mean over seeds)."""
    plt = pyplot()

    styles = _styles(list(by_method))
    fig, ax = plt.subplots(figsize=(9, 5.2))
    lines = {}
    for m, rs in by_method.items():
        acc = curve_over_seeds([rd.curves.get("global_acc", []) for rd in rs], smooth)
        t = dict((p[0], p[1]) for p in curve_over_seeds([rd.curves.get(clock.curve, []) for rd in rs]))
        lines[m] = [(t[s], a * 100) for s, a, *_ in acc if s in t]
    longest = max((x for pts in lines.values() for x, _ in pts), default=0.0)
    unit, div = ("s", 1.0) if longest < 180 else ("min", 60.0) if longest < 3 * 3600 else ("h", 3600.0)
    for m, pts in lines.items():
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(
                [x / div for x in xs],
                ys,
                label=m,
                linewidth=1.3,
                marker="o" if len(xs) <= 30 else None,
                markersize=3,
                **styles[m],
            )
    if budget is not None and math.isfinite(budget):
        ax.axvline(budget / div, color="black", linestyle=":", linewidth=1)
        ax.annotate(
            f"T = {budget / div:.3g} {unit}",
            (budget / div, ax.get_ylim()[0]),
            xytext=(3, 5),
            textcoords="offset points",
            fontsize=8,
        )
    ax.set_xlabel(f"{clock.name} since the run started ({unit}, mean over seeds)")
    ax.set_ylabel(f"global accuracy, trailing {smooth}-round mean (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_plots(
    by_method: dict[str, list[RunData]],
    out: Path,
    time_methods: Sequence[str] | None,
    budget: float | None,
    clock: Clock = WALL,
) -> dict[str, str]:
    """Write the PNGs; returns {file name: caption}."""
    plots: dict[str, str] = {}
    plot_curves(by_method, out / "curves.png", smooth=WINDOW)
    plots["curves.png"] = (
        f"Global accuracy, the mean local accuracy of each round's participants, the local accuracy of each "
        f"round's worst participant (the worse of that round's sampled clients: not the worst client, see "
        f"the worst-client section), global NFR and BwT per round, each smoothed by a trailing "
        f"{WINDOW}-round mean within each seed (a mean of all rounds so far while a run has fewer); line: "
        f"mean over seeds, shaded band: min-max over seeds."
    )
    plot_small_multiples(by_method, out / "curves_by_method.png")
    plots["curves_by_method.png"] = (
        f"Global accuracy per method (trailing {WINDOW}-round mean within each seed): mean over seeds "
        "with the min-max band over seeds; the grey lines are the other methods' means."
    )
    plot_curves(by_method, out / "curves_raw.png", smooth=None)
    plots["curves_raw.png"] = (
        "The same, unsmoothed: each round's value, mean over seeds (band: min-max over "
        "seeds). The round-to-round swings are real, not noise in the plot."
    )
    if any(rd.clients for rs in by_method.values() for rd in rs):
        plot_clients(by_method, out / "clients.png")
        plots["clients.png"] = (
            "Client level: each client's local accuracy at its last participation (its last round in "
            "metrics/per_client.csv), per method. Top: every client of every seed; "
            "bottom: one heatmap per seed "
            "(the variants of a seed share its partition, so a column is the same client across methods)."
        )
    tm = {m: by_method[m] for m in (time_methods or by_method)}
    plot_time(tm, out / "accuracy_vs_time.png", budget, clock=clock)
    plots["accuracy_vs_time.png"] = (
        f"Global accuracy (trailing {WINDOW}-round mean, mean over seeds) against {clock.name} since "
        f"the run started ({clock.curve}, mean over seeds); dotted line: the matched budget T."
    )
    return plots
