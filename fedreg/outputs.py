"""What a run writes besides its per-round metrics: summary metrics, tables (CSV), curves, the partition's
statistics and the MLflow tags that name its components. ``fedreg compare`` plots with the same helpers.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedreg.components import StateDict
from fedreg.data import FederatedData, plot_label_histogram
from fedreg.figures import Figure
from fedreg.spec import ResolvedSpec
from fedreg.tracking import RunTracker

#: per-round metrics that measure time, not learning: they differ between identical runs
TIMING_KEYS = ("round_time_s", "elapsed_s")
#: the round loop's own per-round key: the mean training loss of the round's clients
TRAIN_LOSS = "train_loss"


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def summarize(history: list[dict[str, float]], window: int = 10) -> dict[str, float]:
    """final_<m> (last evaluated round) and last10_<m> (mean over the last ``window`` evaluated rounds)."""
    out: dict[str, float] = {}
    keys = sorted({k for h in history for k in h if k not in ("round", "lr", *TIMING_KEYS)})
    for k in keys:
        vals = [h[k] for h in history if k in h and not (isinstance(h[k], float) and math.isnan(h[k]))]
        if vals:
            out[f"final_{k}"] = float(vals[-1])
            out[f"last{window}_{k}"] = float(np.mean(vals[-window:]))
    return out


def plot_curves(histories: dict[str, list[dict[str, float]]], path, figures: Sequence[Figure] = ()):
    """One panel per curve figure that some history holds (train loss when none does), one line per
    history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [f for f in figures if f.curve and any(f.key in h for hist in histories.values() for h in hist)]
    if not present:
        present = [Figure(TRAIN_LOSS, "train loss", higher_is_better=False)]
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.4), squeeze=False)
    for ax, fig_ in zip(axes[0], present, strict=True):
        key = fig_.key
        for label, hist in histories.items():
            pts = [(h["round"], h[key]) for h in hist if key in h]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=label, linewidth=1.1)
        ax.set_title(fig_.label)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_run_outputs(
    tracker: RunTracker,
    run_id: str,
    label: str,
    history: list[dict[str, float]],
    global_state: StateDict,
    per_client_rows: list[dict[str, Any]],
    failure_rows: list[dict[str, Any]],
    log_model: bool,
    figures: Sequence[Figure] = (),
) -> None:
    """A finished run's artifacts: per-client and failure tables, the history, its curves, the weights."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        tables = (
            ("per_client.csv", per_client_rows, ["round", "client", "metric", "value"]),
            ("failures.csv", failure_rows, ["round", "client", "stage", "error"]),
        )
        for name, rows, fields in tables:
            if rows:
                write_csv(d / name, rows, fields)
                tracker.log_file(run_id, d / name, "metrics")
        p = d / "history.json"
        p.write_text(json.dumps(history))
        tracker.log_file(run_id, p, "metrics")
        if history:
            p = d / "curves.png"
            plot_curves({label: history}, p, figures)
            tracker.log_file(run_id, p, "plots")
        if log_model:
            p = d / "global_weights.pt"
            torch.save(global_state, p)
            tracker.log_file(run_id, p, "model")


def component_tags(rs: ResolvedSpec) -> dict[str, str]:
    """MLflow tags naming the run's components, metrics and their providers."""
    tags = {}
    for kind, comp in rs.components.items():
        tags[f"fedreg.{kind}"] = comp.name
        tags[f"fedreg.{kind}.provider"] = comp.info.provider
    tags["fedreg.metrics"] = ",".join(m.name for m in rs.metrics)
    tags["fedreg.local_model_role"] = rs.components["objective"].info.cls.local_model_role
    tags["fedreg.global_model_role"] = rs.components["objective"].info.cls.global_model_role
    for m in rs.metrics:
        tags[f"fedreg.metric.{m.name}.provider"] = m.info.provider
    return tags


def log_partition(tracker: RunTracker, run_id: str, fed: FederatedData) -> None:
    """The partition's statistics, label counts and label histogram (artifacts), its size range (metrics)."""
    stats = fed.stats()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "stats.json").write_text(json.dumps(stats, indent=1))
        with (d / "label_counts.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["client", "split"] + [f"class_{c}" for c in range(stats["num_classes"])])
            for row in stats["clients"]:
                w.writerow([row["client"], "train"] + row["train_label_counts"])
                w.writerow([row["client"], "local_test"] + row["local_test_label_counts"])
        plot_label_histogram(stats, str(d / "label_histogram.png"))
        for name in ("stats.json", "label_counts.csv", "label_histogram.png"):
            tracker.log_file(run_id, d / name, "partition")
    tracker.log_metrics(
        run_id,
        {
            "partition_train_size_min": stats["train_size_min"],
            "partition_train_size_max": stats["train_size_max"],
        },
        step=0,
    )
