"""Sensitivity to a gridded parameter: for each path a spec's ``grid:`` varied, the final and last-10 figures
of the Results table against the parameter's value, mean and spread over seeds, per series (the variant and
the values of the other gridded parameters): a plot, a table and ``sensitivity.csv``."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedreg_report.metrics import TABLE, WINDOW
from fedreg_report.plots import pyplot
from fedreg_report.render import Block
from fedreg_report.runs import RunData
from fedreg_report.stats import Stat
from fedreg_report.summary import run_values

SENSITIVITY_FILE = "sensitivity.csv"


def grid_of(rd: RunData) -> dict[str, Any]:
    """The grid point a run is (its ``fedreg.grid`` tag), {} for a run outside a grid."""
    try:
        point = json.loads(rd.tags.get("fedreg.grid") or "{}")
    except ValueError:
        return {}
    return point if isinstance(point, dict) else {}


def gridded_paths(runs: Sequence[RunData]) -> list[str]:
    """The gridded spec paths, in the order the spec's grid lists them."""
    return list(dict.fromkeys(p for rd in runs for p in grid_of(rd)))


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _series(rd: RunData, path: str) -> str:
    """What a run's curve is in a sensitivity plot: its variant and the values of the other gridded paths."""
    base = rd.tags.get("fedreg.variant") or rd.tags.get("fedreg.spec") or rd.name
    others = [f"{_short(p)}={v}" for p, v in grid_of(rd).items() if p != path]
    return " ".join([base, *others])


def _order(value: Any) -> tuple[int, Any]:
    return (
        (0, float(value))
        if isinstance(value, int | float) and not isinstance(value, bool)
        else (1, str(value))
    )


@dataclass
class Point:
    """One value of a gridded parameter in one series: the figures' statistics over its seeds."""

    series: str
    value: Any
    seeds: list[int | None]
    stats: dict[str, Stat]
    values: dict[str, list[float]]  # each seed's value, per figure


def figure_keys(runs: Sequence[RunData]) -> list[tuple[str, str, float, int]]:
    """The Results table's final and last-window figures some run has."""
    return [
        t
        for t in TABLE
        if t[1].startswith(("final_", f"last{WINDOW}_"))
        and any(math.isfinite(run_values(rd).get(t[1], math.nan)) for rd in runs)
    ]


def points(runs: Sequence[RunData], path: str, keys: Sequence[str]) -> list[Point]:
    """The sensitivity points of ``path``: per series and value, in value order."""
    groups: dict[tuple[str, str], list[RunData]] = {}
    value_of: dict[tuple[str, str], Any] = {}
    for rd in runs:
        point = grid_of(rd)
        if path not in point:
            continue
        k = (_series(rd, path), json.dumps(point[path]))
        groups.setdefault(k, []).append(rd)
        value_of[k] = point[path]
    out = []
    for k in sorted(groups, key=lambda k: (k[0], _order(value_of[k]))):
        members = groups[k]
        vals = {key: [run_values(rd).get(key, math.nan) for rd in members] for key in keys}
        out.append(
            Point(
                k[0],
                value_of[k],
                [rd.seed for rd in members],
                {key: Stat.of(v) for key, v in vals.items()},
                {key: [x for x in v if math.isfinite(x)] for key, v in vals.items()},
            )
        )
    return out


def plot_sensitivity(
    pts: Sequence[Point], path: str, figs: Sequence[tuple[str, str, float, int]], file: Path
):
    """One panel per figure: the mean over seeds against the value (error bars: standard deviation over
    seeds), each seed's value as a dot; one line per series. Numbers on a numeric axis (logarithmic when
    they span a factor of 20 or more), anything else as categories."""
    plt = pyplot()
    values = sorted({json.dumps(p.value): p.value for p in pts}.values(), key=_order)
    numeric = all(_order(v)[0] == 0 for v in values)
    positions = {json.dumps(v): (float(v) if numeric else i) for i, v in enumerate(values)}
    fig, axes = plt.subplots(1, len(figs), figsize=(min(4.2 * len(figs), 12.5), 3.6), squeeze=False)
    series = list(dict.fromkeys(p.series for p in pts))
    for ax, (header, key, scale, _) in zip(axes[0], figs, strict=True):
        for j, name in enumerate(series):
            mine = [p for p in pts if p.series == name and p.stats[key].n]
            xs = [positions[json.dumps(p.value)] for p in mine]
            ys = [p.stats[key].mean * scale for p in mine]
            err = [(p.stats[key].std or 0.0) * scale for p in mine]
            color = f"C{j % 10}"
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=color, label=name)
            for x, p in zip(xs, mine, strict=True):
                ax.scatter(
                    [x] * len(p.values[key]), [v * scale for v in p.values[key]], s=9, color=color, alpha=0.4
                )
        if numeric:
            lo, hi = min(positions.values()), max(positions.values())
            if lo > 0 and hi / lo >= 20:
                ax.set_xscale("log")
            ax.set_xticks(sorted(positions.values()))
            ax.set_xticklabels([str(v) for v in values])
        else:
            ax.set_xticks(range(len(values)))
            ax.set_xticklabels([str(v) for v in values], rotation=30)
        ax.set_xlabel(_short(path))
        ax.set_title(f"{header} %" if scale == 100.0 else header, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"sensitivity to {path}", fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def sensitivity(runs: Sequence[RunData], out: Path) -> tuple[list[Block], dict[str, str], list[str]]:
    """(blocks, {plot file: caption}, CSV files written) for every gridded parameter; nothing without a
    grid."""
    paths = gridded_paths(runs)
    if not paths:
        return [], {}, []
    figs = figure_keys(runs)
    keys = [k for _, k, _, _ in figs]
    blocks: list[Block] = [
        ("h", 2, "Sensitivity"),
        (
            "p",
            "For each parameter the spec's `grid:` varied: the final and last-window figures against its "
            "value, per series (the variant and the other gridded values), as mean ± standard deviation "
            "over seeds (n: seeds).",
        ),
    ]
    plots: dict[str, str] = {}
    rows_csv = []
    for path in paths:
        pts = points(runs, path, keys)
        file = f"sensitivity_{re.sub(r'[^A-Za-z0-9_.-]+', '_', path)}.png"
        if figs:
            plot_sensitivity(pts, path, figs, out / file)
            plots[file] = (
                f"Sensitivity to `{path}`: mean over seeds (error bars: standard deviation over seeds; dots: "
                "each seed), one line per series."
            )
        blocks.append(("h", 3, f"`{path}`"))
        headers = [
            "series",
            _short(path),
            "seeds (n)",
            *(f"{h} %" if scale == 100.0 else h for h, _, scale, _ in figs),
        ]
        rows = [
            [
                p.series,
                str(p.value),
                str(len(p.seeds)),
                *(p.stats[k].fmt(scale, dec) for _, k, scale, dec in figs),
            ]
            for p in pts
        ]
        blocks.append(("table", headers, rows))
        if file in plots:
            blocks.append(("img", file, plots[file]))
        for p in pts:
            for k in keys:
                st = p.stats[k]
                rows_csv.append(
                    [path, p.series, json.dumps(p.value), k, st.mean, "" if st.std is None else st.std, st.n]
                )
    with (out / SENSITIVITY_FILE).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["parameter", "series", "value", "metric", "mean", "std", "n"])
        w.writerows(rows_csv)
    return blocks, plots, [SENSITIVITY_FILE]
