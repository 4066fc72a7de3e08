"""The runs of a comparison, read from MLflow: :class:`RunData` (one child run, reduced to what the report
needs), :func:`read_run` and :func:`collect` (every child run of the parents, finished or not, the latest
run of each method and seed kept), and the parsers of a run's artifacts (:func:`last_at_participation`,
:func:`participants_of`, :func:`local_test_sizes_of`)."""

from __future__ import annotations

import csv
import functools
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedreg.errors import FedregError
from fedreg.outputs import MetricNames
from fedreg.registry import installed_figures
from fedreg.stores import quiet_artifact_transfers
from fedreg.sweep import failure_summary
from fedreg_report.metrics import CLIENT_METRIC_PREFIX, HISTORY_KEYS, OPTIONAL_KEYS
from fedreg_report.store import find_runs


@dataclass
class RunData:
    """One child run, reduced to what the report needs."""

    run_id: str
    method: str
    seed: int | None
    status: str
    parent_id: str | None = None
    name: str = ""
    start_time: int = 0
    end_time: int | None = None
    last_round: int | None = None
    #: the run's latest metrics (final_*, last10_*, ...)
    summary: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    #: metric key -> [(round, value)]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    #: client -> (round, local accuracy) at the client's last participation
    clients: dict[int, tuple[int, float]] = field(default_factory=dict)
    #: the per_client.csv metric the client values come from
    client_metric: str | None = None
    #: clients that trained at least once (train_loss rows)
    participants: set[int] = field(default_factory=set)
    #: client -> local test size (partition stats)
    local_test_sizes: dict[int, int] = field(default_factory=dict)
    num_clients: int | None = None


@dataclass
class Collection:
    """What :func:`collect` found."""

    tracking_uri: str
    parents: list[Any]  # mlflow Run objects
    finished: list[RunData]
    incomplete: list[RunData]
    #: runs of a (method, seed) that has a later finished run, or that did not finish and has a later run
    superseded: list[RunData]
    methods: list[str]  # in spec order
    experiment: str | None = None


def method_of(run) -> str:
    """A run's method: its ``fedreg.variant`` tag (with its grid point, ``kd.tau=2``, in a grid), else its
    name without the ``.seed<N>`` suffix."""
    tags = run.data.tags
    if tags.get("fedreg.variant"):
        point = tags.get("fedreg.grid_label")
        return f"{tags['fedreg.variant']}.{point}" if point else tags["fedreg.variant"]
    name = run.info.run_name or tags.get("fedreg.spec") or run.info.run_id
    return re.sub(r"\.seed\d+$", "", name)


def seed_of(run) -> int | None:
    s = run.data.tags.get("fedreg.seed")
    try:
        return int(s) if s is not None else None
    except ValueError:
        return None


def last_at_participation(
    rows: Iterable[dict[str, Any]], prefix: str = CLIENT_METRIC_PREFIX
) -> tuple[dict[int, tuple[int, float]], str | None]:
    """Each client's value of the first metric named ``prefix...`` at the last round in which it has one
    (for local accuracy: its last participation). Rows are per_client.csv rows (round, client, metric,
    value). Returns ``({client: (round, value)}, metric name)``."""
    out: dict[int, tuple[int, float]] = {}
    metric = None
    for r in rows:
        name = r["metric"]
        if not str(name).startswith(prefix):
            continue
        if metric is None:
            metric = name
        elif name != metric:
            continue
        rnd, cid, val = int(float(r["round"])), int(float(r["client"])), float(r["value"])
        if math.isnan(val):
            continue
        if cid not in out or rnd >= out[cid][0]:
            out[cid] = (rnd, val)
    return out, metric


def _with_final_values(summary: dict[str, float]) -> dict[str, float]:
    """The end-of-run figures (logged once, at the last round, and not as summaries) as their ``final_``
    keys: their latest value is their final value."""
    for key in OPTIONAL_KEYS:
        base = key.removeprefix("final_")
        if key not in summary and base in summary:
            summary[key] = summary[base]
    return summary


@functools.cache
def metric_names() -> MetricNames:
    """The MLflow names of the installed metrics' keys (runs logged before names existed read by key)."""
    return MetricNames(installed_figures())


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    pts = {}
    for m in metric_names().history(client, run_id, key):
        pts[int(m.step)] = float(m.value)  # the latest value of a step (a resumed run may repeat one)
    return sorted((s, v) for s, v in pts.items() if not math.isnan(v))


def _run_artifacts(client, run_id: str) -> tuple[list[dict[str, str]], dict | None]:
    """A run's metrics/per_client.csv rows and partition/stats.json (each empty/None when not logged)."""
    import json
    import tempfile

    from mlflow.exceptions import MlflowException

    rows: list[dict[str, str]] = []
    stats = None
    with tempfile.TemporaryDirectory() as d, quiet_artifact_transfers():
        try:
            path = client.download_artifacts(run_id, "metrics/per_client.csv", d)
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        except (MlflowException, OSError):
            pass
        try:
            path = client.download_artifacts(run_id, "partition/stats.json", d)
            stats = json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            pass
    return rows, stats


def participants_of(rows: Iterable[dict[str, Any]]) -> set[int]:
    """The clients that trained at least once: those with a train_loss row in per_client.csv."""
    return {int(float(r["client"])) for r in rows if r.get("metric") == "train_loss"}


def why_incomplete(rd: RunData, limit: int = 160) -> str:
    """Why a run did not finish, from its ``fedreg.failure`` tag (:func:`fedreg.sweep.failure_summary`): a
    failure from a non-finite training loss reads "diverged: ..." with the round; other failures their
    reason, cut at ``limit`` characters; "" when the run recorded none (still running, or stopped from
    outside)."""
    return failure_summary(rd.tags.get("fedreg.failure", ""), limit)


def local_test_sizes_of(stats: dict | None) -> dict[int, int]:
    """client -> local test size, from a run's partition/stats.json (``clients[i].local_test``)."""
    out = {}
    for row in (stats or {}).get("clients", []):
        try:
            out[int(row["client"])] = int(row["local_test"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def read_run(client, run, details: bool = True) -> RunData:
    """A child run as RunData; with ``details``, its curves, per-client values and local test sizes too."""
    rd = RunData(
        run_id=run.info.run_id,
        method=method_of(run),
        seed=seed_of(run),
        status=run.info.status,
        parent_id=run.data.tags.get("mlflow.parentRunId"),
        name=run.info.run_name or "",
        start_time=run.info.start_time or 0,
        end_time=run.info.end_time,
        summary=_with_final_values(metric_names().read_metrics(run.data.metrics)),
        tags=dict(run.data.tags),
        params=dict(run.data.params),
    )
    elapsed = _history(client, rd.run_id, "elapsed_s")
    rd.last_round = elapsed[-1][0] if elapsed else None
    if details:
        rd.curves["elapsed_s"] = elapsed
        rd.curves["cpu_s"] = _history(client, rd.run_id, "cpu_s")
        for key in HISTORY_KEYS:
            rd.curves[key] = _history(client, rd.run_id, key)
        rows, stats = _run_artifacts(client, rd.run_id)
        rd.clients, rd.client_metric = last_at_participation(rows)
        rd.participants = participants_of(rows)
        rd.local_test_sizes = local_test_sizes_of(stats)
        n = (stats or {}).get("num_clients") or rd.params.get("data.num_clients")
        try:
            rd.num_clients = int(n) if n is not None else None
        except (TypeError, ValueError):
            rd.num_clients = None
    return rd


def run_key(rd: RunData) -> tuple:
    """(method, seed) of a run; a run without a seed stands alone (its run id instead)."""
    return (rd.method, rd.seed if rd.seed is not None else rd.run_id)


def collect(
    client, run_ids: Sequence[str] = (), experiment: str | None = None, progress: bool = True
) -> Collection:
    """Read the runs of a comparison. Finished runs carry curves and per-client values; others are listed as
    incomplete. Of several finished runs of one (method, seed), the latest is kept."""
    from tqdm.auto import tqdm

    parents, children = find_runs(client, run_ids, experiment)
    finished_runs = [r for r in children if r.info.status == "FINISHED"]
    others = [r for r in children if r.info.status != "FINISHED"]
    incomplete = [read_run(client, r, details=False) for r in others]
    if not finished_runs:
        what = f"experiment '{experiment}'" if experiment else "run(s) " + ", ".join(run_ids)
        state = "; ".join(f"{r.name or r.run_id}: {r.status}, round {r.last_round or 0}" for r in incomplete)
        raise FedregError(
            f"no finished child runs in {what} yet ({state}). Report when at least one has "
            f"finished; a run that is not RUNNING any more continues with 'fedreg run SPEC --resume'"
        )
    bar = tqdm(
        finished_runs,
        desc="reading runs",
        unit="run",
        file=sys.stderr,
        leave=False,
        disable=not progress or len(finished_runs) < 4,
    )
    finished = []
    for r in bar:
        bar.set_postfix_str(r.info.run_name or r.info.run_id, refresh=False)
        finished.append(read_run(client, r))
    bar.close()
    latest: dict[tuple, RunData] = {}
    superseded = []
    for rd in finished:
        key = run_key(rd)
        old = latest.get(key)
        if old is None or (rd.end_time or 0) >= (old.end_time or 0):
            if old is not None:
                superseded.append(old)
            latest[key] = rd
        else:
            superseded.append(rd)
    kept = [rd for rd in finished if latest[run_key(rd)] is rd]
    # an unfinished run that a later run of its method and seed replaced (a spec fixed after it failed)
    started: dict[tuple, int] = {}
    for rd in [*kept, *incomplete]:
        key = run_key(rd)
        started[key] = max(started.get(key, 0), rd.start_time)
    replaced = [rd for rd in incomplete if rd.seed is not None and rd.start_time < started[run_key(rd)]]
    incomplete = [rd for rd in incomplete if rd not in replaced]
    superseded += replaced
    order: list[str] = []
    for p in parents:
        order += [v for v in p.data.tags.get("fedreg.variants", "").split(",") if v]
    order += [rd.method for rd in sorted(kept, key=lambda rd: rd.start_time)]
    present = {rd.method for rd in kept}
    methods = [m for m in dict.fromkeys(order) if m in present]
    return Collection(client.tracking_uri, parents, kept, incomplete, superseded, methods, experiment)


def uniq(values: Iterable[str | None]) -> list[str]:
    """The distinct non-empty values, in first-seen order."""
    return [v for v in dict.fromkeys(values) if v]


def datasets_of(runs: Iterable[RunData]) -> list[str]:
    """The datasets of the runs (tag ``fedreg.dataset``, else param ``data.dataset.name``)."""
    return uniq(rd.tags.get("fedreg.dataset") or rd.params.get("data.dataset.name") for rd in runs)
