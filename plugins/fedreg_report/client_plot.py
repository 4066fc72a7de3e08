"""The client-level figure: each client's local accuracy at its last participation, per method (all
seeds), and one heatmap per seed (methods x clients)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fedreg_report.runs import RunData


def plot_clients(by_method: dict[str, list[RunData]], path: Path) -> None:
    """Top: every client's final local accuracy (at its last participation) per method, all seeds, with the
    median; bottom: a heatmap per seed (methods x clients; a seed's variants share its partition)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(by_method)
    seeds = sorted(
        {rd.seed for rs in by_method.values() for rd in rs if rd.clients}, key=lambda s: (s is None, s or 0)
    )
    n_clients = 1 + max((c for rs in by_method.values() for rd in rs for c in rd.clients), default=0)
    markers = "os^Dv<>p*h"
    fig = plt.figure(
        figsize=(
            max(9.0, 0.7 * len(methods) + 3, 0.32 * n_clients + 3),
            4.2 + (0.3 * len(methods) + 1.2) * len(seeds),
        )
    )
    grid = fig.add_gridspec(1 + len(seeds), 1, height_ratios=[4.2] + [0.3 * len(methods) + 0.9] * len(seeds))
    ax = fig.add_subplot(grid[0])
    rng = np.random.default_rng(0)  # jitter only
    labelled = set()
    for i, m in enumerate(methods):
        allv = []
        for rd in by_method[m]:
            vals = [v * 100 for _, v in rd.clients.values()]
            allv += vals
            k = seeds.index(rd.seed) if rd.seed in seeds else 0
            ax.scatter(
                i + rng.uniform(-0.22, 0.22, len(vals)),
                vals,
                s=12,
                alpha=0.6,
                marker=markers[k % len(markers)],
                color=f"C{k % 10}",
                label=None if k in labelled or not vals else f"seed {rd.seed}",
            )
            if vals:
                labelled.add(k)
        if allv:
            ax.hlines(np.median(allv), i - 0.32, i + 0.32, color="black", linewidth=2)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("local accuracy at last participation (%)")
    ax.set_title(
        "each client's final local accuracy (dots; black bar: median over clients and seeds)", fontsize=10
    )
    ax.grid(axis="y", alpha=0.3)
    if labelled:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    lowest = min((v for rs in by_method.values() for rd in rs for _, v in rd.clients.values()), default=0.0)
    vmin = min(
        50.0, 10.0 * math.floor(lowest * 10)
    )  # contrast where the values are, on one scale for all seeds
    for j, seed in enumerate(seeds):
        hax = fig.add_subplot(grid[1 + j])
        mat = np.full((len(methods), n_clients), np.nan)
        for i, m in enumerate(methods):
            for rd in by_method[m]:
                if rd.seed == seed:
                    for c, (_, v) in rd.clients.items():
                        mat[i, c] = v * 100
        cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
        im = hax.imshow(mat, aspect="auto", cmap=cmap, vmin=vmin, vmax=100, interpolation="nearest")
        hax.set_yticks(range(len(methods)), methods, fontsize=7)
        hax.set_xticks(range(n_clients), [str(c) for c in range(n_clients)], fontsize=7)
        hax.set_xlabel(f"client (seed {seed}; grey: never participated)", fontsize=8)
        if n_clients * len(methods) <= 400:
            for (i, c), v in np.ndenumerate(mat):
                if not math.isnan(v):
                    hax.text(
                        c,
                        i,
                        f"{v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if v < vmin + 0.45 * (100 - vmin) else "black",
                    )
        fig.colorbar(im, ax=hax, fraction=0.025, pad=0.01, label="%")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
