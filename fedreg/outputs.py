"""What a run writes besides its per-round metrics: summary metrics, tables (CSV), curves, the partition's
statistics and the MLflow tags that name its components. ``fedreg compare`` plots with the same helpers.
"""

from __future__ import annotations

import csv
import json
import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedreg.components import StateDict
from fedreg.data import FederatedData, plot_label_histogram
from fedreg.evaluation import TIMING_KEYS  # noqa: F401 - also imported from here
from fedreg.figures import WINDOW, Figure
from fedreg.spec import ResolvedSpec
from fedreg.tracking import RunTracker, Tracker

#: the round loop's own per-round key: the mean training loss of the round's clients
TRAIN_LOSS = "train_loss"


#: MLflow names of the round loop's own per-round keys: the "training" and "timing" sections of MLflow's chart
#: view, after the metrics' sections (not "system/": MLflow plots its own system metrics against wall-clock)
CORE_NAMES = {
    TRAIN_LOSS: "training/loss",
    "lr": "training/lr",
    "clients_ok": "training/clients_ok",
    "clients_failed": "training/clients_failed",
    "round_time_s": "timing/round_time_s",
    "elapsed_s": "timing/elapsed_s",
    "cpu_s": "timing/cpu_s",
}
#: the names runs logged the core's keys under before (runs of older fedreg read the same)
LEGACY_NAMES = {
    "system/clients_ok": "clients_ok",
    "system/clients_failed": "clients_failed",
    "system/round_time_s": "round_time_s",
    "system/elapsed_s": "elapsed_s",
}
#: prefix of the summary figures of older runs in MLflow (``summary/accuracy.global.final``); summaries are
#: now named for reading in MLflow's runs table (``global acc final pct``), see :class:`MetricNames`
SUMMARY = "summary/"
#: the run's total wall time (a summary figure of the run, not of a per-round key)
WALL_TIME = "wall_time_s"
#: the CPU time of the run's process (all its threads), resumed parts included: robust to a busy machine
CPU_TIME = "cpu_time_s"
#: the run's summaries that measure time: they differ between identical runs
RUN_TIMES = (WALL_TIME, CPU_TIME)
_SUMMARY_NAME = re.compile(r"^(?P<label>[^/]+?)(?: (?P<win>final|last\d+|all\d+))?(?P<pct> pct)?$")


def is_summary(name: str) -> bool:
    """Whether an MLflow metric name is a run's summary (logged once, at step 0): a name without a '/'
    section and with a space (``global acc final pct``, ``wall time s``), or an older run's ``summary/...``.
    Per-round names have a section (``accuracy/global``) or are a metric's key (no spaces)."""
    return name.startswith(SUMMARY) or ("/" not in name and " " in name)


def window_tag(evaluated: int | None = None) -> str:
    """The window of a 'last-N' summary in its MLflow name: ``last10``, or ``all6`` for a run of 6
    evaluated rounds (the mean then covers them all)."""
    if evaluated is not None and evaluated < WINDOW:
        return f"all{evaluated}"
    return f"last{WINDOW}"


def mlflow_safe(text: str) -> str:
    """``text`` with only the characters MLflow allows in metric names on every system (letters, digits,
    ``_ - . /`` and spaces), runs of spaces collapsed."""
    return " ".join(re.sub(r"[^\w.\- /]", " ", text).split())


class MetricNames:
    """How the per-round keys of a run (``global_acc``, ``train_loss``) and their summaries
    (``final_global_acc``, ``last10_global_acc``) are named in MLflow: per-round keys by the ``tracked_as`` of
    the figures the metric components declare (``accuracy/global``), the round loop's own keys by
    :data:`CORE_NAMES`, other keys as they are. Summaries are named for reading in MLflow's runs table,
    ``<label> final`` or ``<label> last10`` (the mean of the last 10 evaluated rounds;
    ``all6`` when a run has only 6), with `` pct`` where the figure is a percentage (``Figure.percent``:
    logged x 100, rounded). Readers map MLflow names back to keys (and percentages back to fractions) with
    :meth:`key_of` and :meth:`read_metrics`; names of older runs (``summary/accuracy.global.final``,
    ``system/elapsed_s``) read the same."""

    def __init__(self, figures: Sequence[Figure] = ()):
        self.figures = {f.key: f for f in figures}
        self.names = {**CORE_NAMES, **{f.key: f.tracked_as for f in figures if f.tracked_as}}
        self.keys = {**LEGACY_NAMES, **{v: k for k, v in self.names.items()}}
        self.by_label = {mlflow_safe(f.label): f.key for f in figures}

    def name(self, key: str) -> str:
        return self.names.get(key, key)

    def per_round(self, scalars: dict[str, float]) -> dict[str, float]:
        return {self.name(k): v for k, v in scalars.items()}

    def label(self, key: str) -> str:
        fig = self.figures.get(key)
        return mlflow_safe(fig.label if fig else key.replace("_", " "))

    def percent(self, key: str) -> bool:
        fig = self.figures.get(key)
        return bool(fig and fig.percent)

    def summary_name(self, summary_key: str, evaluated: int | None = None) -> str:
        """``final_global_acc`` -> ``global acc final pct``; ``last10_global_acc`` -> ``global acc last10
        pct`` (``all6`` for a run of 6 evaluated rounds); ``wall_time_s`` -> ``wall time s`` (and so
        ``cpu_time_s``)."""
        for window in ("final", f"last{WINDOW}"):
            if summary_key.startswith(window + "_"):
                key = summary_key[len(window) + 1 :]
                fig = self.figures.get(key)
                span = " final" if window == "final" else " " + window_tag(evaluated)
                if fig is not None and not fig.mean:
                    span = ""  # a final-only figure (a running summary) is named by its label alone
                return f"{self.label(key)}{span}" + (" pct" if self.percent(key) else "")
        return summary_key.replace("_", " ")

    def summary(
        self, final: dict[str, float], figures: Sequence[Figure], evaluated: int | None = None
    ) -> dict[str, float]:
        """The summaries logged to MLflow: the comparison table's columns of ``figures``, the wall and CPU
        time (the others stay in the run's metrics/history.json), percentages x 100, rounded for reading."""
        wanted = {k for f in figures for _, k in f.columns()} | set(RUN_TIMES)
        out = {}
        for k, v in final.items():
            if k not in wanted:
                continue
            base = k.split("_", 1)[1] if k.startswith(("final_", f"last{WINDOW}_")) else k
            value = v * 100 if self.percent(base) else v
            out[self.summary_name(k, evaluated)] = round(value, 2 if self.percent(base) else 4)
        return out

    def key_of(self, name: str) -> str:
        """The key of an MLflow metric name: a per-round key, a summary key (``final_global_acc``), or the
        name itself (an undeclared key)."""
        if name.startswith(SUMMARY):  # an older run's summary
            rest = name[len(SUMMARY) :]
            for window in ("final", f"last{WINDOW}"):
                if rest.endswith("." + window):
                    base = rest[: -len(window) - 1]
                    return f"{window}_{self.keys.get(base.replace('.', '/'), base)}"
            return rest
        if is_summary(name):
            m = _SUMMARY_NAME.match(name)
            if m and (m["win"] or m["label"] in self.by_label):
                key = self.by_label.get(m["label"], m["label"].replace(" ", "_"))
                return f"last{WINDOW}_{key}" if m["win"] and m["win"] != "final" else f"final_{key}"
            return name.replace(" ", "_")
        return self.keys.get(name, name)

    def read_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """A run's latest metrics (``run.data.metrics``) by key, percentages as fractions; a key logged under
        both names keeps the new name's value."""
        out = dict(metrics)
        older = [n for n in metrics if n.startswith(SUMMARY) or n in LEGACY_NAMES]
        for n in [*older, *(n for n in metrics if n not in older)]:  # the new names win
            v = metrics[n]
            out[self.key_of(n)] = v / 100 if n.endswith(" pct") else v
        return out

    def history(self, client: Any, run_id: str, key: str) -> list:
        """The MLflow metric history of a per-round key, under its name (else an older run's name for it, else
        the key itself)."""
        for name in (self.name(key), *(old for old, k in LEGACY_NAMES.items() if k == key), key):
            hist = client.get_metric_history(run_id, name)
            if hist:
                return hist
        return []


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
    """MLflow tags naming the run's components and metrics, and in one tag (``fedreg.providers``) the
    distribution and version that provided each (``fedreg 0.9.0: dataset, model; other 1.0: metric.x``)."""
    tags = {}
    providers: dict[str, list[str]] = {}
    for kind, comp in rs.components.items():
        tags[f"fedreg.{kind}"] = comp.name
        providers.setdefault(comp.info.provider, []).append(kind)
    tags["fedreg.metrics"] = ",".join(m.name for m in rs.metrics)
    tags["fedreg.local_model_role"] = rs.components["objective"].info.cls.local_model_role
    tags["fedreg.global_model_role"] = rs.components["objective"].info.cls.global_model_role
    for m in rs.metrics:
        providers.setdefault(m.info.provider, []).append(f"metric.{m.name}")
    tags["fedreg.providers"] = "; ".join(f"{p}: {', '.join(what)}" for p, what in providers.items())
    return tags


def log_partition(tracker: Tracker, run_id: str, fed: FederatedData) -> None:
    """The partition's statistics, label counts and label histogram (artifacts), its size range (params
    ``partition.train_size_min``/``_max``: facts of the data, not a chart)."""
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
    tracker.log_params(
        run_id,
        {
            "partition.train_size_min": stats["train_size_min"],
            "partition.train_size_max": stats["train_size_max"],
        },
    )
