"""`fedreg report`: a markdown and HTML report of a comparison (the variants of one or more parent runs, or
every child run of an experiment), with statistics over seeds, curves, a client-level view and a
matched wall-clock budget comparison.

The steps are plain functions: :func:`collect` reads the runs from MLflow into :class:`RunData` records,
:func:`aggregate` and :func:`matched_budget` compute the statistics over seeds, :func:`make_plots` draws the
figures, :func:`build_blocks` lays the report out, :func:`render_markdown` and :func:`render_html` write it.
Methods are the runs' ``fedreg.variant`` tags. Only the paper-claims section (:func:`judge_claims`) names
methods: it judges FedKPer's published claims when the comparison holds the variants named in
:data:`CLAIM_VARIANTS`, and is left out otherwise.

Statistics are small plain functions: :func:`worst_client` (the worst client's local accuracy at its last
participation), :func:`window_means` and :func:`window_label` (means over all rounds and over the last
:data:`WINDOW`), :func:`t_interval`, :func:`paired_differences` and the verdict wordings
(:func:`gap_verdict`, :func:`direction_verdict`), :func:`protocol_of` (which protocol a run used).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as _dt
import html
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedreg.errors import FedregError

#: trailing window of the 'last-10' figures and of the smoothed curves (evaluated rounds)
WINDOW = 10
#: per-round metrics read for the curves (besides elapsed_s)
CURVE_KEYS = ("global_acc", "local_acc_worst", "global_nfr")
CURVE_TITLES = {
    "global_acc": "global accuracy",
    "local_acc_worst": "local accuracy of the round's worst participant",
    "global_nfr": "global NFR",
}
#: forgetting metrics: (per-round key, title, higher is better); local ones are shown where a run logged them
FORGETTING: list[tuple[str, str, bool]] = [
    ("global_nfr", "global NFR", False),
    ("global_pfr", "global PFR", True),
    ("global_consistency", "global consistency", True),
    ("bwt", "BwT", True),
    ("local_nfr", "local NFR", False),
    ("local_pfr", "local PFR", True),
    ("local_consistency", "local consistency", True),
]
#: every per-round metric history a report reads (curves, window means, the window labels)
HISTORY_KEYS = tuple(dict.fromkeys((*CURVE_KEYS, "local_acc_mean", *(k for k, _, _ in FORGETTING))))
#: per-client metric (in metrics/per_client.csv) for the client-level view; the role follows in brackets
CLIENT_METRIC_PREFIX = "local_acc["
#: a local test set smaller than this is flagged where it decides the worst client (one sample >= 5 points)
SMALL_LOCAL_TEST = 20
#: derived per-run values (not MLflow metrics): the worst client's local accuracy at its last participation,
#: and the balance of global and local accuracy
WORST_KEY = "worst_client_local_acc"
BALANCE_KEY = "balance_global_local_acc"
#: table columns: (header, metric key, scale for display, decimals). 'worst-client' is the minimum over all
#: clients of each client's local accuracy at its last participation; the per-round worst participant
#: (last10_local_acc_worst) is not in the headline table (see the worst-client section)
TABLE: list[tuple[str, str, float, int]] = [
    ("global acc (final)", "final_global_acc", 100.0, 1),
    ("global acc (last-10 mean)", "last10_global_acc", 100.0, 1),
    ("local acc mean (last-10 mean)", "last10_local_acc_mean", 100.0, 1),
    ("worst-client local acc (at last participation)", WORST_KEY, 100.0, 1),
    ("global NFR (last-10 mean)", "last10_global_nfr", 100.0, 2),
    ("BwT (last-10 mean)", "last10_bwt", 100.0, 2),
    ("global consistency (last-10 mean)", "last10_global_consistency", 100.0, 2),
    ("wall time s", "wall_time_s", 1.0, 0),
]
#: the metric keys of TABLE, in its order
TABLE_KEYS: tuple[str, ...] = tuple(k for _, k, _, _ in TABLE)
#: run parameters that describe the setting; shown in the header, and flagged when runs differ in them
SETTING_KEYS = (
    "data.dataset.name",
    "data.num_clients",
    "data.partition.name",
    "data.partition.params.alpha",
    "data.local_test_fraction",
    "data.local_test.rule",
    "data.local_test.fraction",
    "data.size",
    "federation.rounds",
    "federation.clients_per_round",
    "federation.selection.name",
    "training.local_epochs",
    "training.batch_size",
    "training.optimizer.lr",
    "model.name",
)

REPORT_FILES = ("report.md", "report.html", "summary.csv", "runs.csv", "clients.csv")
#: written when the comparison holds the paper's methods (see judge_claims)
CLAIMS_FILE = "claims.csv"


# ---------------------------------------------------------------------------------------------------------
# Per-run data
# ---------------------------------------------------------------------------------------------------------


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
    summary: dict[str, float] = field(
        default_factory=dict
    )  # the run's latest metrics (final_*, last10_*, ...)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> [(round, value)]
    clients: dict[int, tuple[int, float]] = field(default_factory=dict)  # client -> (round, local accuracy)
    client_metric: str | None = None  # the per_client.csv metric the client values come from
    participants: set[int] = field(
        default_factory=set
    )  # clients that trained at least once (train_loss rows)
    local_test_sizes: dict[int, int] = field(
        default_factory=dict
    )  # client -> local test size (partition stats)
    num_clients: int | None = None


@dataclass
class Collection:
    """What :func:`collect` found."""

    tracking_uri: str
    parents: list[Any]  # mlflow Run objects
    finished: list[RunData]
    incomplete: list[RunData]
    superseded: list[RunData]  # finished runs of a (method, seed) that has a later finished run
    methods: list[str]  # in spec order
    experiment: str | None = None


def method_of(run) -> str:
    """A run's method: its ``fedreg.variant`` tag, else its name without the ``.seed<N>`` suffix."""
    tags = run.data.tags
    if tags.get("fedreg.variant"):
        return tags["fedreg.variant"]
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


# ---------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------


def open_store(uri: str | None):
    """An MlflowClient on ``uri`` (default: as ``fedreg run``), checked to exist and answer. A report only
    reads: a local store that is not there is an error, never created."""
    from mlflow.tracking import MlflowClient

    from fedreg.tracking import _is_outage, tracking_uri

    uri = tracking_uri(uri)
    hint = (
        "pass --tracking-uri with the store 'fedreg run' printed (e.g. sqlite:////path/to/mlflow.db), or "
        "set MLFLOW_TRACKING_URI"
    )
    path = None
    if uri.startswith("sqlite:"):
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        if path in ("", ":memory:"):
            raise FedregError(f"'{uri}' is not a store with runs in it; {hint}")
    elif uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        path = unquote(urlparse(uri).path)
    elif "://" not in uri:
        path = uri
    if path is not None and not Path(path).exists():
        raise FedregError(f"no MLflow tracking store at '{uri}' ('{path}' does not exist); {hint}")
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001
        why = (
            "the server cannot be reached"
            if _is_outage(exc)
            else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        raise FedregError(
            f"cannot read the MLflow tracking store '{uri}': {why}. Start the server, or {hint}"
        ) from None
    return client


def _search_all(client, experiment_ids: list[str], filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_runs(client, run_ids: Sequence[str] = (), experiment: str | None = None) -> tuple[list, list]:
    """The parent runs and their child runs: of the given parent run ids, or of every child run of
    ``experiment``. Raises FedregError for an unknown id, a run that is not a parent, an unknown
    experiment."""
    from mlflow.exceptions import MlflowException

    if bool(run_ids) == bool(experiment):
        raise FedregError("give parent run ids or --experiment NAME (one of the two)")
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise FedregError(
                f"no experiment '{experiment}' in {client.tracking_uri}; experiments there: "
                f"{', '.join(names) or 'none'} (the name is the spec's tracking.experiment)"
            )
        children = [
            r for r in _search_all(client, [exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId")
        ]
        if not children:
            raise FedregError(
                f"experiment '{experiment}' has no child runs; 'fedreg report' compares the variants "
                f"or seeds of a spec (run one with 'variants:' or 'seeds:')"
            )
        parents = []
        for pid in dict.fromkeys(r.data.tags["mlflow.parentRunId"] for r in children):
            try:
                parents.append(client.get_run(pid))
            except MlflowException:
                pass  # a deleted parent: its children still count
        return parents, children
    parents, children = [], []
    for rid in dict.fromkeys(run_ids):
        try:
            run = client.get_run(rid)
        except MlflowException:
            raise FedregError(
                f"no MLflow run '{rid}' in {client.tracking_uri}; pass the parent run id printed by "
                f"'fedreg run' (and --tracking-uri if the store is elsewhere)"
            ) from None
        tags = run.data.tags
        if tags.get("mlflow.parentRunId"):
            raise FedregError(
                f"run '{rid}' ({run.info.run_name}) is a child run, not a parent; report on its "
                f"parent: fedreg report {tags['mlflow.parentRunId']}"
            )
        kids = _search_all(client, [run.info.experiment_id], f"tags.mlflow.parentRunId = '{rid}'")
        if not kids:
            raise FedregError(
                f"run '{rid}' ({run.info.run_name}) has no child runs: 'fedreg report' takes the "
                f"parent run of a spec with variants or seeds (or use --experiment NAME)"
            )
        parents.append(run)
        children.extend(kids)
    return parents, children


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    pts = {}
    for m in client.get_metric_history(run_id, key):
        pts[int(m.step)] = float(m.value)  # the latest value of a step (a resumed run may repeat one)
    return sorted((s, v) for s, v in pts.items() if not math.isnan(v))


@contextlib.contextmanager
def _quiet_downloads():
    """No MLflow download progress bar per artifact (the report shows one bar for all runs)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _run_artifacts(client, run_id: str) -> tuple[list[dict[str, str]], dict | None]:
    """A run's metrics/per_client.csv rows and partition/stats.json (each empty/None when not logged)."""
    import json
    import tempfile

    from mlflow.exceptions import MlflowException

    rows: list[dict[str, str]] = []
    stats = None
    with tempfile.TemporaryDirectory() as d, _quiet_downloads():
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
        summary=dict(run.data.metrics),
        tags=dict(run.data.tags),
        params=dict(run.data.params),
    )
    elapsed = _history(client, rd.run_id, "elapsed_s")
    rd.last_round = elapsed[-1][0] if elapsed else None
    if details:
        rd.curves["elapsed_s"] = elapsed
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
        key = (rd.method, rd.seed if rd.seed is not None else rd.run_id)
        old = latest.get(key)
        if old is None or (rd.end_time or 0) >= (old.end_time or 0):
            if old is not None:
                superseded.append(old)
            latest[key] = rd
        else:
            superseded.append(rd)
    kept = [rd for rd in finished if latest[(rd.method, rd.seed if rd.seed is not None else rd.run_id)] is rd]
    order: list[str] = []
    for p in parents:
        order += [v for v in p.data.tags.get("fedreg.variants", "").split(",") if v]
    order += [rd.method for rd in sorted(kept, key=lambda rd: rd.start_time)]
    present = {rd.method for rd in kept}
    methods = [m for m in dict.fromkeys(order) if m in present]
    return Collection(client.tracking_uri, parents, kept, incomplete, superseded, methods, experiment)


# ---------------------------------------------------------------------------------------------------------
# Statistics over seeds
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) of the finite values; std is None below two values."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not xs:
            return cls(math.nan, None, 0)
        return cls(float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else None, len(xs))

    def fmt(self, scale: float = 1.0, decimals: int = 2, n_expected: int | None = None) -> str:
        if self.n == 0:
            return "-"
        s = f"{self.mean * scale:.{decimals}f}"
        if self.std is not None:
            s += f" ± {self.std * scale:.{decimals}f}"
        if n_expected is not None and self.n != n_expected:
            s += f" (n={self.n})"
        return s


@dataclass
class MethodSummary:
    method: str
    seeds: list[int | None]
    stats: dict[str, Stat]  # metric key -> Stat over seeds
    rounds: list[int]
    local_model_role: str


def group(runs: Iterable[RunData], methods: Sequence[str] | None = None) -> dict[str, list[RunData]]:
    out: dict[str, list[RunData]] = {m: [] for m in (methods or [])}
    for rd in runs:
        out.setdefault(rd.method, []).append(rd)
    for rs in out.values():
        rs.sort(key=lambda rd: (rd.seed is None, rd.seed if rd.seed is not None else 0, rd.run_id))
    return {m: rs for m, rs in out.items() if rs}


def aggregate(
    runs: Iterable[RunData],
    methods: Sequence[str] | None = None,
    keys: Sequence[str] = TABLE_KEYS,
) -> list[MethodSummary]:
    """Per method: mean ± sample std over its runs (seeds) of each summary metric (and derived value, see
    :func:`run_values`)."""
    out = []
    for m, rs in group(runs, methods).items():
        roles = sorted({rd.tags.get("fedreg.local_model_role", "") for rd in rs} - {""})
        vals = [run_values(rd) for rd in rs]
        out.append(
            MethodSummary(
                m,
                [rd.seed for rd in rs],
                {k: Stat.of(v.get(k) for v in vals) for k in keys},
                [rd.last_round for rd in rs if rd.last_round is not None],
                "/".join(roles) or "?",
            )
        )
    return out


def trailing_mean(values: Sequence[float], window: int = WINDOW) -> list[float]:
    """Mean of the last ``window`` values up to each position (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=float))])
    return [
        float((c[i + 1] - c[max(0, i + 1 - window)]) / (i + 1 - max(0, i + 1 - window)))
        for i in range(len(values))
    ]


def curve_over_seeds(
    curves: Sequence[Sequence[tuple[int, float]]], smooth: int | None = None
) -> list[tuple[int, float, float, float, int]]:
    """Per round: (round, mean, min, max, n) over the seeds' curves (each optionally smoothed first by a
    trailing mean over ``smooth`` evaluated rounds)."""
    by_round: dict[int, list[float]] = {}
    for pts in curves:
        if not pts:
            continue
        steps = [s for s, _ in pts]
        vals = [v for _, v in pts]
        if smooth:
            vals = trailing_mean(vals, smooth)
        for s, v in zip(steps, vals, strict=True):
            by_round.setdefault(s, []).append(v)
    return [
        (s, float(np.mean(v)), float(np.min(v)), float(np.max(v)), len(v))
        for s, v in sorted(by_round.items())
    ]


def within_budget(
    elapsed: Sequence[tuple[int, float]],
    values: Sequence[tuple[int, float]],
    budget: float,
    window: int = WINDOW,
) -> tuple[int, float, float]:
    """A run stopped at wall-clock time ``budget``: (rounds completed by then, the value at the last of them,
    the mean over the last ``window`` of them). NaNs when no round had finished by then."""
    done = {s for s, t in elapsed if t <= budget}
    vals = [v for s, v in values if s in done]
    if not done or not vals:
        return (len(done), math.nan, math.nan)
    return (max(done), vals[-1], float(np.mean(vals[-window:])))


def total_time(rd: RunData) -> float | None:
    el = rd.curves.get("elapsed_s")
    if el:
        return el[-1][1]
    return rd.summary.get("wall_time_s")


@dataclass
class BudgetRow:
    method: str
    total_time: Stat
    rounds: Stat
    at_budget: Stat
    last10_at_budget: Stat
    full_last10: Stat


def matched_budget(
    by_method: dict[str, list[RunData]], key: str = "global_acc", budget: float | None = None
) -> tuple[float, list[BudgetRow]]:
    """Every method cut at the same wall-clock time T (default: the shortest mean total wall time among the
    methods): rounds reached, ``key`` at T and its mean over the last 10 rounds before T, over seeds."""
    totals = {m: Stat.of(total_time(rd) for rd in rs) for m, rs in by_method.items()}
    if budget is None:
        finite = [s.mean for s in totals.values() if s.n]
        if not finite:
            return math.nan, []
        budget = min(finite)
    rows = []
    for m, rs in by_method.items():
        cut = [within_budget(rd.curves.get("elapsed_s", []), rd.curves.get(key, []), budget) for rd in rs]
        full = [
            float(np.mean([v for _, v in rd.curves.get(key, [])][-WINDOW:])) if rd.curves.get(key) else None
            for rd in rs
        ]
        rows.append(
            BudgetRow(
                m,
                totals[m],
                Stat.of(c[0] for c in cut),
                Stat.of(c[1] for c in cut),
                Stat.of(c[2] for c in cut),
                Stat.of(full),
            )
        )
    return budget, rows


def round_to_round_swing(runs: Iterable[RunData], key: str = "global_acc") -> tuple[float, float] | None:
    """Median and 90th percentile of |change of ``key`` between consecutive evaluated rounds| in the second
    half of each run (after most of the learning), over runs; None without two such rounds."""
    diffs = []
    for rd in runs:
        vals = [v for _, v in rd.curves.get(key, [])]
        diffs += list(np.abs(np.diff(vals[len(vals) // 2 :])))
    if not diffs:
        return None
    return float(np.median(diffs)), float(np.percentile(diffs, 90))


# ---------------------------------------------------------------------------------------------------------
# Worst client, window means, derived per-run values
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorstClient:
    """The worst client of one run: the lowest local accuracy at last participation over all clients."""

    client: int
    value: float
    round: int  # the client's last participation (with a local accuracy)
    local_test: int | None  # its local test size; None when the run logged no partition statistics
    covered: int  # clients that participated at least once
    num_clients: int | None = None

    @property
    def few(self) -> bool:
        """Its local test holds fewer than SMALL_LOCAL_TEST samples: the value moves in coarse steps."""
        return self.local_test is not None and self.local_test < SMALL_LOCAL_TEST


def worst_client(
    clients: dict[int, tuple[int, float]],
    local_test_sizes: dict[int, int] | None = None,
    participants: Iterable[int] = (),
    num_clients: int | None = None,
) -> WorstClient | None:
    """The minimum over every client that has a value of its value at its last participation (``clients``:
    client -> (round, value), as :func:`last_at_participation` gives). Ties go to the lower client id.
    ``covered`` counts the clients that participated: those in ``participants`` or with a value. None when no
    client has a finite value."""
    vals = {c: (r, v) for c, (r, v) in clients.items() if v is not None and math.isfinite(v)}
    if not vals:
        return None
    c = min(vals, key=lambda c: (vals[c][1], c))
    covered = len(set(participants) | set(clients))
    return WorstClient(
        c, float(vals[c][1]), int(vals[c][0]), (local_test_sizes or {}).get(c), covered, num_clients
    )


def worst_of(rd: RunData) -> WorstClient | None:
    return worst_client(rd.clients, rd.local_test_sizes, rd.participants, rd.num_clients)


@dataclass(frozen=True)
class WindowMeans:
    """A per-round metric's mean over all evaluated rounds with a value and over the last ``window`` of
    them."""

    all_mean: float
    all_n: int
    last_mean: float
    last_n: int


def window_means(points: Sequence[tuple[int, float]], window: int = WINDOW) -> WindowMeans:
    """``points``: (round, value) in round order; NaNs are not rounds with a value."""
    vals = [float(v) for _, v in points if v is not None and math.isfinite(float(v))]
    if not vals:
        return WindowMeans(math.nan, 0, math.nan, 0)
    last = vals[-window:]
    return WindowMeans(float(np.mean(vals)), len(vals), float(np.mean(last)), len(last))


def _rounds(n: int) -> str:
    return f"{n} round" + ("" if n == 1 else "s")


def window_label(counts: Iterable[int], window: int = WINDOW) -> str:
    """What 'the last ``window`` rounds' really is for runs with ``counts`` rounds with a value: 'last 10
    rounds', 'last 4 rounds (all)' when every run is shorter, or a note when some are."""
    ns = sorted({int(n) for n in counts if n})
    if not ns or ns[0] >= window:
        return f"last {_rounds(window)}"
    if len(ns) == 1:
        return f"last {_rounds(ns[0])} (all)"
    if ns[-1] <= window:
        return f"last {ns[0]}-{ns[-1]} rounds (all of each run)"
    return f"last {_rounds(window)} (all rounds of shorter runs: {ns[0]} in the shortest)"


def all_label(counts: Iterable[int]) -> str:
    """'all 199 rounds', or 'all rounds (12-30 per run)' when the runs differ."""
    ns = sorted({int(n) for n in counts if n})
    if not ns:
        return "all rounds"
    if len(ns) == 1:
        return f"all {_rounds(ns[0])}" if ns[0] > 1 else "its only round"
    return f"all rounds ({ns[0]}-{ns[-1]} per run)"


def _counts(runs: Iterable[RunData], key: str) -> list[int]:
    return [window_means(rd.curves.get(key, [])).all_n for rd in runs if rd.curves.get(key)]


def run_values(rd: RunData) -> dict[str, float]:
    """A run's summary metrics plus derived values: ``worst_client_local_acc`` (:func:`worst_client`), for
    each forgetting metric ``all_<key>`` (mean over all rounds with a value) and ``last10_<key>`` (when the
    run did not log it), and ``balance_global_local_acc`` (mean of the global and mean local last-10
    means)."""
    out = dict(rd.summary)
    w = worst_of(rd)
    out[WORST_KEY] = w.value if w else math.nan
    for key, _, _ in FORGETTING:
        wm = window_means(rd.curves.get(key, []))
        out[f"all_{key}"] = wm.all_mean
        if out.get(f"last{WINDOW}_{key}") is None:
            out[f"last{WINDOW}_{key}"] = wm.last_mean
    g, loc = out.get(f"last{WINDOW}_global_acc"), out.get(f"last{WINDOW}_local_acc_mean")
    out[BALANCE_KEY] = (g + loc) / 2 if g is not None and loc is not None else math.nan
    return out


# ---------------------------------------------------------------------------------------------------------
# Paired comparisons over seeds: t-intervals and verdicts
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences with its t-interval over seeds; lo/hi are None below two values."""

    mean: float
    lo: float | None
    hi: float | None
    n: int
    std: float | None = None
    level: float = 0.95

    def fmt(self, decimals: int = 1) -> str:
        if self.n == 0:
            return "-"
        if self.lo is None:
            return f"{self.mean:+.{decimals}f} (one seed: no interval)"
        return f"{self.mean:+.{decimals}f} [{self.lo:+.{decimals}f}, {self.hi:+.{decimals}f}]"


def t_interval(values: Iterable[float], level: float = 0.95) -> Interval:
    """mean ± t_{(1+level)/2, n-1} · s / sqrt(n) over the finite values (s: sample std, n - 1)."""
    from scipy import stats

    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return Interval(math.nan, None, None, 0, None, level)
    m = float(np.mean(xs))
    if len(xs) == 1:
        return Interval(m, None, None, 1, None, level)
    sd = float(np.std(xs, ddof=1))
    h = float(stats.t.ppf((1 + level) / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return Interval(m, m - h, m + h, len(xs), sd, level)


def paired_differences(a: dict[Any, float], b: dict[Any, float]) -> dict[Any, float]:
    """a[s] - b[s] for every seed s with a finite value in both, in a's order."""
    return {
        s: a[s] - b[s]
        for s in a
        if s in b and a[s] is not None and b[s] is not None and math.isfinite(a[s]) and math.isfinite(b[s])
    }


def _iv(iv: Interval, decimals: int) -> str:
    zero = " (zero width: every seed gave the same difference)" if iv.lo == iv.hi else ""
    return f"[{iv.lo:+.{decimals}f}, {iv.hi:+.{decimals}f}]{zero}"


def gap_verdict(iv: Interval, claimed: float, decimals: int = 1) -> tuple[str, str]:
    """(status, wording) for the claim 'the mean paired difference is ``claimed`` (points)', from the
    interval: 'holds' only when the whole interval lies above the claimed gap, 'not supported' when it lies
    below it, else 'consistent'."""
    if iv.n == 0:
        return "not judged", "not judged: no seed has both methods"
    if iv.lo is None or iv.hi is None:
        return "not judged", (
            f"one seed: no interval (the difference is {iv.mean:+.{decimals}f} points, the claim "
            f"{claimed:+.{decimals}f}); more seeds are needed to judge it"
        )
    where = _iv(iv, decimals)
    if iv.lo > claimed:
        return "holds", f"holds: the interval {where} lies above the claimed {claimed:+.{decimals}f}"
    if iv.hi < claimed:
        tail = (
            "FedKPer is ahead, by less than claimed"
            if iv.lo > 0
            else "FedKPer is behind"
            if iv.hi < 0
            else "it contains 0: FedKPer is not shown ahead at all"
        )
        return "not supported", (
            f"not supported: the interval {where} excludes the claimed {claimed:+.{decimals}f} ({tail})"
        )
    tail = "" if iv.lo > 0 else " (it also contains 0: FedKPer is not shown ahead at all)"
    return "consistent", (
        f"consistent with the claim: the interval {where} contains the claimed {claimed:+.{decimals}f}{tail}"
    )


def direction_verdict(iv: Interval, higher_is_better: bool = True, decimals: int = 1) -> tuple[str, str]:
    """(status, wording) for 'the first method is better than the second' from the interval of their paired
    difference (first minus second): 'supported' when it lies on the better side of 0, 'contradicted' when
    on the worse side, else 'not shown'."""
    if iv.n == 0:
        return "not judged", "not judged: no seed has both methods"
    if iv.lo is None or iv.hi is None:
        return "not judged", (
            f"one seed: no interval (the difference is {iv.mean:+.{decimals}f}); more seeds "
            "are needed to judge it"
        )
    where = _iv(iv, decimals)
    good = "above" if higher_is_better else "below"
    bad = "below" if higher_is_better else "above"
    if (iv.lo > 0) if higher_is_better else (iv.hi < 0):
        return "supported", f"supported: the interval {where} lies {good} 0 (better)"
    if (iv.hi < 0) if higher_is_better else (iv.lo > 0):
        return "contradicted", f"contradicted: the interval {where} lies {bad} 0 (worse)"
    return "not shown", f"not shown: the interval {where} contains 0"


def rank_per_seed(
    values: dict[str, dict[Any, float]], method: str, higher_is_better: bool = True
) -> dict[Any, tuple[int, int]]:
    """Per seed: (rank of ``method`` among the methods with a value at that seed (1 = best; ties share the
    better rank), number of such methods)."""
    out = {}
    for s, v in values.get(method, {}).items():
        if v is None or not math.isfinite(v):
            continue
        others = [
            vals[s]
            for m, vals in values.items()
            if m != method and s in vals and vals[s] is not None and math.isfinite(vals[s])
        ]
        better = sum(1 for o in others if (o > v if higher_is_better else o < v))
        out[s] = (1 + better, 1 + len(others))
    return out


def ranked_others(
    values: dict[str, dict[Any, float]], method: str, higher_is_better: bool = True
) -> list[str]:
    """The other methods with a value, best first by their mean over seeds."""
    means = {m: Stat.of(v.values()).mean for m, v in values.items() if m != method}
    means = {m: x for m, x in means.items() if math.isfinite(x)}
    return sorted(means, key=lambda m: (-means[m] if higher_is_better else means[m], m))


# ---------------------------------------------------------------------------------------------------------
# The paper's claims
# ---------------------------------------------------------------------------------------------------------

#: the variants the claims are about (FedKPer, Fowler and AlRegib, ICIP 2026);
#: the claims section needs 'method'
CLAIM_VARIANTS = {"method": "fedkper", "fedavg": "fedavg", "kd": "kd-only", "agg": "agg-only"}
#: the paper's global-accuracy lead over the next best method, in points, per dataset
CLAIMED_GAP = {"bloodmnist": 9.8}


@dataclass
class Comparison:
    """One paired comparison over seeds: ``a`` minus ``b`` on a figure, in points."""

    figure: str
    a: str
    b: str
    why: str  # how b was chosen
    diffs: dict[Any, float]
    interval: Interval
    status: str
    verdict: str
    decimals: int = 1
    ranks: dict[Any, tuple[int, int]] = field(default_factory=dict)  # a's rank per seed, where it matters

    def per_seed(self) -> str:
        return (
            ", ".join(
                f"{s}: {d:+.{self.decimals}f}"
                + (f" (rank {self.ranks[s][0]} of {self.ranks[s][1]})" if s in self.ranks else "")
                for s, d in self.diffs.items()
            )
            or "-"
        )


@dataclass
class Claim:
    title: str
    measured_as: str
    comparisons: list[Comparison]
    verdict: str


def _by_seed(runs: Iterable[RunData], key: str) -> dict[str, dict[Any, float]]:
    """method -> seed -> run_values(rd)[key] (finite values only)."""
    out: dict[str, dict[Any, float]] = {}
    for rd in runs:
        v = run_values(rd).get(key)
        if v is not None and math.isfinite(v):
            out.setdefault(rd.method, {})[rd.seed if rd.seed is not None else rd.run_id] = float(v)
    return out


def compare_pair(
    values: dict[str, dict[Any, float]],
    a: str,
    b: str,
    figure: str,
    why: str,
    higher_is_better: bool = True,
    claimed: float | None = None,
    decimals: int = 1,
    scale: float = 100.0,
) -> Comparison:
    """``a`` minus ``b`` per seed (times ``scale``: points), its t-interval and the verdict: against the
    claimed gap when ``claimed`` is given, else on the direction."""
    diffs = {s: d * scale for s, d in paired_differences(values.get(a, {}), values.get(b, {})).items()}
    iv = t_interval(diffs.values())
    status, verdict = (
        gap_verdict(iv, claimed, decimals)
        if claimed is not None
        else direction_verdict(iv, higher_is_better, decimals)
    )
    return Comparison(figure, a, b, why, diffs, iv, status, verdict, decimals)


def _tally(comps: Sequence[Comparison]) -> str:
    counts: dict[str, int] = {}
    for c in comps:
        counts[c.status] = counts.get(c.status, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def judge_claims(runs: Sequence[RunData], methods: Sequence[str], dataset: str | None = None) -> list[Claim]:
    """The paper's claims, each judged by paired differences over seeds with a 95% t-interval. Empty when the
    comparison has no runs of CLAIM_VARIANTS['method']."""
    me, fedavg, kd, agg = (CLAIM_VARIANTS[k] for k in ("method", "fedavg", "kd", "agg"))
    present = {rd.method for rd in runs}
    if me not in present:
        return []
    wl = window_label(_counts(runs, "global_acc"))
    claims: list[Claim] = []

    def missing(*ms: str) -> str | None:
        gone = [m for m in ms if m not in present]
        return f"not judged: no finished runs of {', '.join(gone)}" if gone else None

    # 1. global accuracy: X points above the next best method
    gap = CLAIMED_GAP.get((dataset or "").lower())
    comps = []
    for key, fig in (
        (f"last{WINDOW}_global_acc", f"global accuracy, mean of the {wl}"),
        ("final_global_acc", "global accuracy, final round"),
    ):
        vals = _by_seed(runs, key)
        others = ranked_others(vals, me)
        if others:
            c = compare_pair(
                vals,
                me,
                others[0],
                fig,
                "next best by mean over seeds",
                claimed=gap if gap is not None else None,
            )
            c.ranks = rank_per_seed(vals, me)
            comps.append(c)
    if gap is not None:
        title = f"Global accuracy {gap:g} points above the next best method ({dataset})"
    else:
        title = "Global accuracy above the next best method"
    verdict = "; ".join(f"{c.figure}: {c.status}" for c in comps) if comps else "not judged: no other method"
    if gap is None and comps:
        verdict += (
            f" (the paper's gap for {dataset or 'this dataset'} is not recorded here: judged against 0)"
        )
    claims.append(
        Claim(
            title,
            "per seed FedKPer minus the next best method (the best other method by its mean "
            "over seeds of the same figure), in points",
            comps,
            verdict,
        )
    )

    # 2. worst-client local accuracy: best or second-best
    vals = _by_seed(runs, WORST_KEY)
    others = ranked_others(vals, me)
    comps = []
    fig = "worst-client local accuracy (at last participation)"
    ranks = rank_per_seed(vals, me)
    for i, o in enumerate(others[:2]):
        c = compare_pair(
            vals, me, o, fig, ("best" if i == 0 else "second-best") + " other method by mean over seeds"
        )
        c.ranks = ranks
        comps.append(c)
    if me not in vals:
        verdict = "not judged: FedKPer has no per-client local accuracy (add the local_accuracy metric)"
    elif not comps:
        verdict = "not judged: no other method has a worst-client value"
    else:
        best, second = comps[0], comps[1] if len(comps) > 1 else None
        rank_text = "; FedKPer's rank per seed: " + ", ".join(
            f"{s}: {r} of {n}" for s, (r, n) in ranks.items()
        )
        if best.interval.lo is None:
            verdict = "not judged: one seed, no interval" + rank_text
        elif best.status == "supported":
            verdict = (
                f"holds: FedKPer is above the best other method ({best.b}), interval excludes 0" + rank_text
            )
        elif second is None or second.status == "supported":
            verdict = (
                "holds: FedKPer is above the second-best other method"
                + (f" ({second.b})" if second else "")
                + ", so at worst second"
                + rank_text
            )
        elif second.status == "contradicted":
            verdict = (
                f"not supported: {second.b} (second-best other) is above FedKPer with an interval that "
                f"excludes 0, and {best.b} is ahead of it on average" + rank_text
            )
        else:
            verdict = (
                "consistent with the claim, not shown: the intervals against the best and second-best "
                "other methods contain 0" + rank_text
            )
    claims.append(
        Claim(
            "Best or second-best worst-client local accuracy",
            "per seed FedKPer minus the best and the second-best other method (by mean over seeds); "
            "each run's value is the minimum over all clients of the local accuracy at the client's "
            "last participation",
            comps,
            verdict,
        )
    )

    # 3. forgetting: better than FedAvg and than the best other method
    comps = []
    for key, title, higher in FORGETTING:
        if key not in ("global_nfr", "global_consistency", "bwt"):
            continue
        counts = _counts(runs, key)
        for win, label in (("all", all_label(counts)), (f"last{WINDOW}", window_label(counts))):
            vals = _by_seed(runs, f"{win}_{key}")
            if me not in vals:
                continue
            if fedavg in vals:
                comps.append(
                    compare_pair(
                        vals, me, fedavg, f"{title}, mean over {label}", "FedAvg", higher, decimals=2
                    )
                )
            others = ranked_others(vals, me, higher)
            if others:
                comps.append(
                    compare_pair(
                        vals,
                        me,
                        others[0],
                        f"{title}, mean over {label}",
                        "best other by mean over seeds",
                        higher,
                        decimals=2,
                    )
                )
    vs_avg = [c for c in comps if c.why == "FedAvg"]
    vs_best = [c for c in comps if c.why != "FedAvg"]
    verdict = (
        "; ".join(
            x
            for x in (
                f"against FedAvg: {_tally(vs_avg)}" if vs_avg else (missing(fedavg) or ""),
                f"against the best other method: {_tally(vs_best)}" if vs_best else "",
            )
            if x
        )
        or "not judged"
    )
    claims.append(
        Claim(
            "Better forgetting metrics (global NFR, consistency, BwT)",
            "per seed FedKPer minus FedAvg and minus the best other method on each figure (NFR: lower "
            "is better; consistency and BwT: higher), in points",
            comps,
            verdict,
        )
    )

    # 4. ablations
    for who, key, fig, title in (
        (
            kd,
            f"last{WINDOW}_local_acc_mean",
            f"local accuracy mean, mean of the {wl}",
            "Ablation: KD-only improves local accuracy over FedAvg",
        ),
        (
            agg,
            f"last{WINDOW}_global_acc",
            f"global accuracy, mean of the {wl}",
            "Ablation: Agg-only improves global accuracy over FedAvg",
        ),
    ):
        gone = missing(who, fedavg)
        vals = _by_seed(runs, key)
        comps = [] if gone else [compare_pair(vals, who, fedavg, fig, "FedAvg")]
        claims.append(
            Claim(title, f"per seed {who} minus FedAvg, in points", comps, gone or comps[0].verdict)
        )

    # 5. the balance of global and local accuracy
    vals = _by_seed(runs, BALANCE_KEY)
    others = ranked_others(vals, me)
    comps = []
    if others:
        c = compare_pair(
            vals,
            me,
            others[0],
            f"mean of global accuracy and local accuracy mean ({wl})",
            "best other by mean over seeds",
        )
        c.ranks = rank_per_seed(vals, me)
        comps.append(c)
    claims.append(
        Claim(
            "Both together: the best balance of global and local accuracy",
            "per seed FedKPer minus the best other method on (global + local accuracy mean) / 2",
            comps,
            comps[0].verdict if comps else "not judged: no other method",
        )
    )
    return claims


# ---------------------------------------------------------------------------------------------------------
# Protocol
# ---------------------------------------------------------------------------------------------------------

PROTOCOL_FIELDS = ("dataset", "partition", "local test", "model", "selection")


def _component(params: dict[str, str], prefix: str) -> str:
    name = params.get(f"{prefix}.name", "?")
    ps = sorted(
        (k[len(prefix) + len(".params.") :], v)
        for k, v in params.items()
        if k.startswith(f"{prefix}.params.")
    )
    return name + (f" ({', '.join(f'{k}={v}' for k, v in ps)})" if ps else "")


def protocol_of(params: dict[str, str]) -> dict[str, str]:
    """The protocol a run used, from its params (the flattened resolved spec): dataset, partition with its
    params, local-test rule (``data.local_test.{rule,fraction,...}``; runs from before it have
    ``data.local_test_fraction``, whose rule is 'stratified'), model and client selection with their
    params."""
    lt = {k[len("data.local_test.") :]: v for k, v in params.items() if k.startswith("data.local_test.")}
    if lt:
        rule = lt.pop("rule", "?")
        local_test = rule + (f" ({', '.join(f'{k}={v}' for k, v in sorted(lt.items()))})" if lt else "")
    elif "data.local_test_fraction" in params:
        local_test = f"stratified (fraction={params['data.local_test_fraction']})"
    else:
        local_test = "?"
    return {
        "dataset": params.get("data.dataset.name", "?"),
        "partition": _component(params, "data.partition"),
        "local test": local_test,
        "model": _component(params, "model"),
        "selection": _component(params, "federation.selection"),
    }


def protocols(
    runs: Sequence[RunData], methods: Sequence[str] | None = None
) -> list[tuple[dict[str, str], dict[str, list[Any]]]]:
    """Distinct protocols, each with the methods (and their seeds) that used it, in first-use order."""
    out: dict[tuple, tuple[dict[str, str], dict[str, list[Any]]]] = {}
    for m, rs in group(runs, methods).items():
        for rd in rs:
            p = protocol_of(rd.params)
            key = tuple(p[f] for f in PROTOCOL_FIELDS)
            out.setdefault(key, (p, {}))[1].setdefault(m, []).append(rd.seed)
    return list(out.values())


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------


def _styles(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    import matplotlib.pyplot as plt

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


def _legend(fig, axes, n: int) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(n, 7), fontsize=8, frameon=False)


def plot_curves(
    by_method: dict[str, list[RunData]], path: Path, smooth: int | None, band: str = "minmax"
) -> None:
    """One panel per curve key; a line per method (mean over seeds), min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = _styles(list(by_method))
    keys = [k for k in CURVE_KEYS if any(rd.curves.get(k) for rs in by_method.values() for rd in rs)]
    rows = math.ceil(len(by_method) / 7)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.4 + 0.25 * rows), squeeze=False)
    axes = axes[0]
    for ax, key in zip(axes, keys, strict=True):
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
        ax.set_title(
            CURVE_TITLES.get(key, key) + (f" (trailing {smooth}-round mean)" if smooth else ""), fontsize=10
        )
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        f"{CURVE_TITLES.get(key, key)} (trailing {smooth}-round mean)\nline: mean over seeds; band: "
        "min-max over seeds; grey: the other methods' means",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_time(
    by_method: dict[str, list[RunData]], path: Path, budget: float | None, smooth: int = WINDOW
) -> None:
    """Global accuracy (trailing mean, mean over seeds) against wall-clock time (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = _styles(list(by_method))
    fig, ax = plt.subplots(figsize=(9, 5.2))
    lines = {}
    for m, rs in by_method.items():
        acc = curve_over_seeds([rd.curves.get("global_acc", []) for rd in rs], smooth)
        t = dict((p[0], p[1]) for p in curve_over_seeds([rd.curves.get("elapsed_s", []) for rd in rs]))
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
    ax.set_xlabel(f"wall-clock time since the run started ({unit}, mean over seeds)")
    ax.set_ylabel(f"global accuracy, trailing {smooth}-round mean (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def make_plots(
    by_method: dict[str, list[RunData]], out: Path, time_methods: Sequence[str] | None, budget: float | None
) -> dict[str, str]:
    """Write the PNGs; returns {file name: caption}."""
    import matplotlib

    matplotlib.use("Agg")
    plots: dict[str, str] = {}
    plot_curves(by_method, out / "curves.png", smooth=WINDOW)
    plots["curves.png"] = (
        f"Global accuracy, the local accuracy of each round's worst participant (the worse of that round's "
        f"sampled clients: not the worst client, see the worst-client section) and global NFR per round, "
        f"each smoothed by a trailing {WINDOW}-round mean within each seed; line: mean over seeds, "
        f"shaded band: min-max over seeds."
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
    plot_time(tm, out / "accuracy_vs_time.png", budget)
    plots["accuracy_vs_time.png"] = (
        f"Global accuracy (trailing {WINDOW}-round mean, mean over seeds) against wall-clock time since "
        "the run started (elapsed_s, mean over seeds); dotted line: the matched budget T."
    )
    return plots


# ---------------------------------------------------------------------------------------------------------
# Layout and rendering
# ---------------------------------------------------------------------------------------------------------

# blocks: ("h", level, text) | ("p", text) | ("ul", [text]) | ("table", headers, rows)
#       | ("img", file, caption)


def _seeds_text(seeds: Sequence[int | None]) -> str:
    return f"{len(seeds)} ({', '.join('?' if s is None else str(s) for s in seeds)})"


def _uniq(values: Iterable[str | None]) -> list[str]:
    return [v for v in dict.fromkeys(values) if v]


def _settings(runs: Sequence[RunData]) -> tuple[dict[str, str], dict[str, dict[str, list[str]]]]:
    """Settings shared by all runs, and those that differ (key -> method -> values)."""
    same, differ = {}, {}
    for key in SETTING_KEYS:
        vals = _uniq(rd.params.get(key) for rd in runs)
        if len(vals) == 1:
            same[key] = vals[0]
        elif len(vals) > 1:
            per: dict[str, list[str]] = {}
            for rd in runs:
                per.setdefault(rd.method, [])
                v = rd.params.get(key, "?")
                if v not in per[rd.method]:
                    per[rd.method].append(v)
            differ[key] = per
    return same, differ


def results_headers(runs: Sequence[RunData]) -> list[str]:
    """The Results table's metric headers; a 'last-10 mean' header says what it is when runs are shorter."""
    out = []
    for h, k, _, _ in TABLE:
        if k.startswith(f"last{WINDOW}_"):
            label = window_label(_counts(runs, k[len(f"last{WINDOW}_") :]))
            if label != f"last {_rounds(WINDOW)}":
                h = h.replace(f" (last-{WINDOW} mean)", f", mean of the {label}")
        out.append(h if k == "wall_time_s" else f"{h} %")
    return out


def _seed_name(s: Any) -> str:
    return "?" if s is None else str(s)


def _worst_text(w: WorstClient | None, seed: Any) -> str:
    if w is None:
        return f"seed {_seed_name(seed)}: -"
    size = (
        "local test size ?"
        if w.local_test is None
        else (f"{w.local_test} local test samples" + (" (few)" if w.few else ""))
    )
    return f"seed {_seed_name(seed)}: client {w.client}, {w.value * 100:.1f}% on {size}, round {w.round}"


def worst_client_blocks(by_method: dict[str, list[RunData]]) -> list[tuple]:
    B: list[tuple] = [("h", 2, "Worst-client local accuracy")]
    B.append(
        (
            "p",
            "Per run (one method, one seed): each client's local accuracy at its last participation (its "
            "trained model, or personal model where the method has one, on its own local test set, in the "
            "last evaluated round in which it trained), then the minimum over every client that "
            "participated. Per method: mean ± sample std over seeds, and for each seed the worst client, "
            "its value, the size of its local test set (from the run's partition/stats.json) and the round. "
            f"'(few)': the local test holds fewer than {SMALL_LOCAL_TEST} samples, so one sample moves the "
            "value by 5 points or more and the minimum over clients favours such clients. Covered: clients "
            "that participated at least once, of all clients. The last column is a different, per-round "
            f"figure: the worse of each round's sampled clients, averaged over the last {WINDOW} rounds; it "
            "is not the worst client.",
        )
    )
    rows, few, total = [], 0, 0
    for m, rs in by_method.items():
        ws = [worst_of(rd) for rd in rs]
        few += sum(1 for w in ws if w and w.few)
        total += sum(1 for w in ws if w)
        n = len(rs)
        covered = ", ".join(
            f"{w.covered}/{w.num_clients if w.num_clients else '?'}" if w else "-" for w in ws
        )
        part = Stat.of(rd.summary.get(f"last{WINDOW}_local_acc_worst") for rd in rs)
        rows.append(
            [
                m,
                _seeds_text([rd.seed for rd in rs]),
                Stat.of(w.value if w else None for w in ws).fmt(100, 1, n),
                "; ".join(_worst_text(w, rd.seed) for w, rd in zip(ws, rs, strict=True)),
                covered,
                part.fmt(100, 1, n),
            ]
        )
    B.append(
        (
            "table",
            [
                "method",
                "seeds (n)",
                "worst-client local acc %",
                "worst client per seed",
                "clients covered (per seed)",
                f"worst participant of the round, last-{WINDOW} mean %",
            ],
            rows,
        )
    )
    if few:
        B.append(
            (
                "p",
                f"Note: in {few} of {total} runs the worst client's local test holds fewer than "
                f"{SMALL_LOCAL_TEST} samples (marked 'few'): its value is coarse, "
                "and the worst-client figure of those runs is decided by a handful of test images.",
            )
        )
    return B


def forgetting_blocks(by_method: dict[str, list[RunData]]) -> list[tuple]:
    runs = [rd for rs in by_method.values() for rd in rs]
    keys = [(k, t, hb) for k, t, hb in FORGETTING if any(rd.curves.get(k) for rd in runs)]
    if not keys:
        return []
    B: list[tuple] = [("h", 2, "Forgetting")]
    B.append(
        (
            "p",
            "Each forgetting metric over two windows, per run, then mean ± sample std over seeds: the mean "
            f"over all rounds with a value and the mean over the last {WINDOW} of them (a run with fewer "
            "has all of its rounds in both; the headers say how many). NFR, PFR and consistency compare "
            "with the previous evaluation, so they start at the second one; BwT starts once a client has "
            "been sampled before; local NFR, PFR and consistency average the round's participants that were "
            "evaluated before. NFR: lower is better; PFR, consistency, BwT: higher is better. In percent "
            "(BwT in points).",
        )
    )
    for win, title in (
        ("all", "Mean over all rounds"),
        (f"last{WINDOW}", f"Mean over the last {WINDOW} rounds"),
    ):
        heads = []
        for k, t, _ in keys:
            counts = _counts(runs, k)
            heads.append(f"{t}, {all_label(counts) if win == 'all' else window_label(counts)} %")
        rows = []
        for m, rs in by_method.items():
            vals = [run_values(rd) for rd in rs]
            rows.append(
                [m, _seeds_text([rd.seed for rd in rs])]
                + [Stat.of(v.get(f"{win}_{k}") for v in vals).fmt(100, 2, len(rs)) for k, _, _ in keys]
            )
        B.append(("h", 3, title))
        B.append(("table", ["method", "seeds (n)"] + heads, rows))
    return B


def protocol_blocks(runs: Sequence[RunData], methods: Sequence[str]) -> list[tuple]:
    protos = protocols(runs, methods)
    B: list[tuple] = [("h", 2, "Protocol")]
    B.append(
        (
            "p",
            "Read from each run's params (the resolved spec): the dataset, the partition and its params, "
            "the local-test rule (runs logged before `data.local_test` existed have "
            "`data.local_test_fraction`, whose rule is stratified), the model and the client selection. One "
            "row per distinct protocol, with the methods and seeds that used it.",
        )
    )
    rows = [
        [p[f] for f in PROTOCOL_FIELDS]
        + ["; ".join(f"{m} ({', '.join(_seed_name(s) for s in ss)})" for m, ss in who.items())]
        for p, who in protos
    ]
    B.append(("table", list(PROTOCOL_FIELDS) + ["methods (seeds)"], rows))
    if len(protos) > 1:
        fields = [f for f in PROTOCOL_FIELDS if len({p[f] for p, _ in protos}) > 1]
        B.append(
            (
                "p",
                f"Warning: the methods of this comparison used {len(protos)} different protocols (they "
                f"differ in: {', '.join(fields)}). Differences between methods mix the method with the "
                "protocol; compare only methods that share one.",
            )
        )
    return B


def claims_blocks(claims: Sequence[Claim]) -> list[tuple]:
    if not claims:
        return []
    B: list[tuple] = [("h", 2, "The paper's claims, across seeds")]
    B.append(
        (
            "p",
            "Each claim of FedKPer's paper (Fowler and AlRegib, ICIP 2026) is judged on paired per-seed "
            "differences: the two methods of one seed share the partition and the client-sampling stream, "
            "so each seed gives one difference. The mean difference over seeds carries a 95% t-interval "
            "(mean ± t(0.975, n-1) · s / sqrt(n)); with one seed there is no interval and nothing is judged. "
            "A comparison is 'supported' when the whole interval lies on the claimed side of 0, "
            "'contradicted' when it lies on the other side, 'not shown' when it contains 0; a claimed gap "
            "'holds' only when the whole interval lies above it, is 'not supported' when the interval lies "
            "below it, and the data are 'consistent' with it when the interval contains it. With 2 or 3 "
            "seeds the intervals are wide. The method compared with is chosen by its mean over seeds of "
            "the same figure and named in each row.",
        )
    )
    for c in claims:
        B.append(("h", 3, c.title))
        B.append(("p", f"Measured as: {c.measured_as}."))
        if c.comparisons:
            B.append(
                (
                    "table",
                    [
                        "figure",
                        "difference",
                        "chosen as",
                        "per seed (points)",
                        "mean [95% interval] (points)",
                        "verdict",
                    ],
                    [
                        [
                            x.figure,
                            f"{x.a} − {x.b}",
                            x.why,
                            x.per_seed(),
                            x.interval.fmt(x.decimals),
                            x.verdict,
                        ]
                        for x in c.comparisons
                    ],
                )
            )
        B.append(("p", f"Verdict: {c.verdict}."))
    return B


def build_blocks(
    col: Collection,
    summaries: list[MethodSummary],
    budget: float,
    budget_rows: list[BudgetRow],
    plots: dict[str, str],
    time_methods: Sequence[str] | None,
    generated: str,
    claims: Sequence[Claim] | None = None,
) -> list[tuple]:
    runs = col.finished
    parents = col.parents
    by_method = group(runs, col.methods)
    B: list[tuple] = []
    specs = _uniq(
        [p.data.tags.get("fedreg.spec") for p in parents] + [rd.tags.get("fedreg.spec") for rd in runs]
    )
    datasets = _uniq(rd.tags.get("fedreg.dataset") or rd.params.get("data.dataset.name") for rd in runs)
    title = "Report: " + (", ".join(specs) or col.experiment or "comparison")
    B.append(("h", 1, title))
    commits = _uniq(
        [p.data.tags.get("mlflow.source.git.commit") for p in parents]
        + [rd.tags.get("mlflow.source.git.commit") for rd in runs]
    )
    versions = _uniq(
        [p.data.tags.get("fedreg.version") for p in parents] + [rd.tags.get("fedreg.version") for rd in runs]
    )
    seeds = sorted({rd.seed for rd in runs if rd.seed is not None})
    same, differ = _settings(runs)
    header = [
        f"spec: {', '.join(f'`{s}`' for s in specs) or '?'}",
        f"dataset: {', '.join(datasets) or '?'}",
        (
            f"experiment: `{col.experiment}` (every finished child run)"
            if col.experiment
            else "parent run(s): " + ", ".join(f"`{p.info.run_id}` ({p.info.status})" for p in parents)
        ),
        f"tracking store: `{col.tracking_uri}`",
        f"git commit(s): {', '.join(f'`{c}`' for c in commits) or 'not recorded'}",
        f"fedreg version(s): {', '.join(versions) or '?'}",
        f"seeds: {', '.join(map(str, seeds)) or '?'}; methods: {len(summaries)}; finished runs: {len(runs)}"
        + (f"; incomplete runs (left out): {len(col.incomplete)}" if col.incomplete else ""),
        "settings: " + (", ".join(f"{k}={v}" for k, v in same.items()) or "?"),
        f"generated: {generated}",
    ]
    n_protocols = len(protocols(runs, col.methods))
    if n_protocols > 1:
        header.append(f"Warning: the methods used {n_protocols} different protocols (see Protocol)")
    B.append(("ul", header))
    if differ:
        items = []
        for k, per in differ.items():
            items.append(f"`{k}`: " + "; ".join(f"{m}: {'/'.join(v)}" for m, v in per.items()))
        B.append(("p", "Warning: the runs differ in settings other than the method; compare with care:"))
        B.append(("ul", items))

    # -- main table --
    B.append(("h", 2, "Results"))
    headers = ["method", "seeds (n)"] + results_headers(runs)
    rows = []
    for s in summaries:
        n = len(s.seeds)
        rows.append(
            [s.method, _seeds_text(s.seeds)] + [s.stats[k].fmt(scale, dec, n) for _, k, scale, dec in TABLE]
        )
    B.append(("table", headers, rows))
    B.append(
        (
            "p",
            "Each cell: mean ± sample standard deviation (n - 1) over seeds; n is in the seeds column "
            "(a cell that has fewer values says so), and with one seed the cell is that seed's value. "
            "Accuracies, NFR, BwT and consistency in percent; wall time in seconds. Worst-client local "
            "accuracy: the minimum over all clients of each client's local accuracy at its last "
            "participation (see the worst-client section).",
        )
    )
    B += protocol_blocks(runs, col.methods)

    # -- what the numbers are --
    B.append(("h", 2, "What the numbers are"))
    B.append(
        (
            "p",
            f"'final' is the global model at the last round; 'last-10 mean' averages the last {WINDOW} "
            "evaluated rounds. Neither is a best-so-far value: no round is picked after the fact. Global "
            "accuracy is the global model on the dataset's official test split. Local accuracy is, each "
            "round, every participating client's model on that client's own local test set; 'mean' averages "
            "the round's participants. Worst-client local accuracy takes, per run, each client's local "
            "accuracy at its last participation and the minimum over all clients that participated (the "
            "per-round 'worst participant of the round', the worse of the few clients sampled that round, "
            "is a different figure and is shown apart). Global NFR "
            "(negative flip rate) is the share of test samples the global model got right at the previous "
            "evaluation and gets wrong now; consistency is the share whose correctness did not change; BwT "
            "is the global model's accuracy now on the local test sets of earlier participants minus its "
            "accuracy right after their last participation (negative: forgetting). Wall time is the run's "
            "total, which depends on the machine and on what else ran on it.",
        )
    )
    roles: dict[str, list[str]] = {}
    for s in summaries:
        roles.setdefault(s.local_model_role, []).append(s.method)
    role_text = {
        "local": "the client's trained copy of the global model",
        "personal": "the client's personal model",
    }
    items = [f"{role_text.get(r, f'model role {r!r}')} (`{r}`): {', '.join(ms)}" for r, ms in roles.items()]
    B.append(("p", "Which model local accuracy measures, per method (tag `fedreg.local_model_role`):"))
    B.append(("ul", items))
    personal = roles.get("personal", [])
    if personal:
        B.append(
            (
                "p",
                f"Methods with personal models ({', '.join(personal)}) are scored locally on a model that "
                "never leaves the client, the others on the model they send back: their local accuracies "
                "measure different things.",
            )
        )
    swing = round_to_round_swing(runs)
    part = same.get("data.partition.name")
    setting = []
    if part:
        alpha = same.get("data.partition.params.alpha")
        setting.append(f"{part} partition" + (f" with alpha {alpha}" if alpha else ""))
    if same.get("federation.clients_per_round"):
        setting.append(
            f"{same['federation.clients_per_round']} of {same.get('data.num_clients', '?')} clients per round"
        )
    measured = (
        f" Here it changed by a median of {swing[0] * 100:.1f} points between consecutive rounds in the "
        f"second half of the runs (90th percentile {swing[1] * 100:.1f} points)."
        if swing
        else ""
    )
    B.append(
        (
            "p",
            "Round-to-round variability: "
            + (f"with a {' and '.join(setting)}, " if setting else "")
            + "each round's global model averages the updates of few clients with skewed label mixes, so "
            "global accuracy swings by several points from one round to the next."
            + measured
            + " A single round of a single seed decides nothing: read the last-10 means and their spread "
            "over seeds.",
        )
    )
    if col.superseded:
        B.append(
            (
                "p",
                "Left out as superseded (a later finished run of the same method and seed is used): "
                + ", ".join(f"{rd.name or rd.run_id} (`{rd.run_id}`)" for rd in col.superseded),
            )
        )

    B += worst_client_blocks(by_method)
    B += forgetting_blocks(by_method)
    if claims is None:
        claims = judge_claims(runs, col.methods, datasets[0] if len(datasets) == 1 else None)
    B += claims_blocks(claims)

    # -- curves --
    B.append(("h", 2, "Curves"))
    for name in ("curves.png", "curves_by_method.png", "curves_raw.png"):
        if name in plots:
            B.append(("img", name, plots[name]))

    # -- clients --
    B.append(("h", 2, "Clients"))
    if "clients.png" in plots:
        metrics = _uniq(rd.client_metric for rd in runs)
        B.append(
            (
                "p",
                f"Per-client values are `{', '.join(metrics)}` from each run's metrics/per_client.csv, "
                "taken at each client's last participation (a client is scored only when it trains). "
                "clients.csv holds them.",
            )
        )
        B.append(("img", "clients.png", plots["clients.png"]))
    else:
        B.append(
            (
                "p",
                "No per-client local accuracy was logged (metrics/per_client.csv has no "
                f"`{CLIENT_METRIC_PREFIX}...]` rows): add the local_accuracy metric to the spec.",
            )
        )

    # -- time --
    B.append(("h", 2, "Accuracy against wall-clock time"))
    if time_methods:
        B.append(("p", f"Methods shown (--time-methods): {', '.join(time_methods)}."))
    B.append(("img", "accuracy_vs_time.png", plots["accuracy_vs_time.png"]))
    if budget_rows:
        B.append(
            (
                "p",
                f"Matched budget: every method cut at T = {budget:.0f} s ({budget / 60:.1f} min), the "
                "shortest mean total wall time among the methods shown. For each seed: the rounds it "
                "completed by T, its global accuracy at the last of them, and the mean over its last "
                f"{WINDOW} rounds before T; then mean ± std over seeds. Timings depend on the machine and "
                "its load: runs that shared the machine with other work are slower.",
            )
        )
        head = [
            "method",
            "total wall time s",
            "rounds by T",
            "global acc at T %",
            f"global acc last-{WINDOW} mean at T %",
            f"global acc last-{WINDOW} mean, full run %",
        ]
        brows = []
        for b in budget_rows:
            n = len(by_method[b.method])
            brows.append(
                [
                    b.method,
                    b.total_time.fmt(1, 0, n),
                    b.rounds.fmt(1, 1, n),
                    b.at_budget.fmt(100, 1, n),
                    b.last10_at_budget.fmt(100, 1, n),
                    b.full_last10.fmt(100, 1, n),
                ]
            )
        B.append(("table", head, brows))

    # -- incomplete --
    if col.incomplete:
        B.append(("h", 2, "Incomplete runs (left out of the statistics)"))
        B.append(
            (
                "table",
                ["run", "method", "seed", "status", "last round", "run id"],
                [
                    [
                        rd.name,
                        rd.method,
                        "?" if rd.seed is None else str(rd.seed),
                        rd.status,
                        str(rd.last_round or 0),
                        f"`{rd.run_id}`",
                    ]
                    for rd in col.incomplete
                ],
            )
        )
    B.append(("h", 2, "Runs"))
    B.append(
        ("p", "Every run used, with its values, is in runs.csv; the per-method statistics in summary.csv.")
    )
    return B


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[tuple]) -> str:
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "ul":
            out.append("\n".join(f"- {x}" for x in b[1]))
        elif b[0] == "table":
            lines = ["| " + " | ".join(_md_cell(h) for h in b[1]) + " |", "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b[2]]
            out.append("\n".join(lines))
        elif b[0] == "img":
            out.append(f"![{b[1]}]({b[1]})\n\n*{b[2]}*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """HTML-escape, then `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text), quote=False))


CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.88em;margin:.8em 0}th,td{border:1px solid #ccc;padding:.3em .55em;
text-align:right;white-space:nowrap}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr:nth-child(even){background:#fafafa}code{background:#f2f2f2;padding:0 .25em;border-radius:3px}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#555}"""


def render_html(blocks: Sequence[tuple], image_dir: Path, title: str = "fedreg report") -> str:
    """A self-contained page: the images are embedded as base64 PNG."""
    out = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
    ]
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
        elif b[0] == "table":
            out.append(
                "<table><thead><tr>"
                + "".join(f"<th>{_inline(h)}</th>" for h in b[1])
                + "</tr></thead><tbody>"
            )
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b[2]]
            out.append("</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode((image_dir / b[1]).read_bytes()).decode("ascii")
            out.append(
                f"<figure><img alt='{html.escape(b[1])}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{_inline(b[2])}</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _write_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


#: per-run derived values written to runs.csv and summary.csv besides the TABLE columns
EXTRA_KEYS = (
    f"last{WINDOW}_local_acc_worst",
    BALANCE_KEY,
    *(f"{w}_{k}" for k, _, _ in FORGETTING for w in ("all", f"last{WINDOW}")),
)


def write_tables(
    out: Path,
    col: Collection,
    summaries: list[MethodSummary],
    budget: float,
    budget_rows: list[BudgetRow],
    claims: Sequence[Claim] = (),
) -> list[str]:
    """summary.csv (tidy: method, metric, mean, std, n), runs.csv (one row per run and metric), clients.csv
    (one row per run and client) and, with claims, claims.csv (one row per paired comparison). Returns the
    names of the files written."""

    def num(v):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))

    keys = list(dict.fromkeys([k for _, k, _, _ in TABLE] + list(EXTRA_KEYS)))
    by_method = group(col.finished, col.methods)
    rows = []
    for s in summaries:
        run_vals = [run_values(rd) for rd in by_method.get(s.method, [])]
        for k in keys:
            st = s.stats[k] if k in s.stats else Stat.of(v.get(k) for v in run_vals)
            if k in s.stats or st.n:
                rows.append([s.method, k, num(st.mean), num(st.std), st.n, ""])
    for b in budget_rows:
        for k, st in (
            ("wall_time_total_s", b.total_time),
            ("rounds_by_T", b.rounds),
            ("global_acc_at_T", b.at_budget),
            ("last10_global_acc_at_T", b.last10_at_budget),
        ):
            rows.append([b.method, k, num(st.mean), num(st.std), st.n, num(budget)])
    _write_rows(out / "summary.csv", ["method", "metric", "mean", "std", "n", "budget_T_s"], rows)
    table_keys = {k for _, k, _, _ in TABLE}
    rrows = []
    for rd in col.finished:
        head = [rd.method, "" if rd.seed is None else rd.seed, rd.run_id, rd.parent_id or ""]
        vals = run_values(rd)
        for k in keys:
            if k in table_keys or (vals.get(k) is not None and math.isfinite(vals[k])):
                rrows.append(head + [k, num(vals.get(k))])
        w = worst_of(rd)
        if w is not None:
            for k, v in (
                ("worst_client_id", w.client),
                ("worst_client_round", w.round),
                ("worst_client_local_test_size", w.local_test),
                ("clients_covered", w.covered),
                ("num_clients", w.num_clients),
            ):
                rrows.append(head + [k, "" if v is None else v])
    _write_rows(out / "runs.csv", ["method", "seed", "run_id", "parent_run_id", "metric", "value"], rrows)
    crows = [
        [
            rd.method,
            "" if rd.seed is None else rd.seed,
            rd.run_id,
            c,
            r,
            rd.client_metric,
            repr(v),
            rd.local_test_sizes.get(c, ""),
        ]
        for rd in col.finished
        for c, (r, v) in sorted(rd.clients.items())
    ]
    _write_rows(
        out / "clients.csv",
        ["method", "seed", "run_id", "client", "last_round", "metric", "value", "local_test_size"],
        crows,
    )
    written = list(REPORT_FILES[2:])
    if claims:
        crow = []
        for c in claims:
            for x in c.comparisons:
                iv = x.interval
                crow.append(
                    [
                        c.title,
                        x.figure,
                        x.a,
                        x.b,
                        x.why,
                        "; ".join(f"{s}:{d!r}" for s, d in x.diffs.items()),
                        iv.n,
                        num(iv.mean),
                        num(iv.lo),
                        num(iv.hi),
                        x.status,
                        x.verdict,
                    ]
                )
        _write_rows(
            out / CLAIMS_FILE,
            [
                "claim",
                "figure",
                "method",
                "compared_with",
                "chosen_as",
                "per_seed_difference_points",
                "n",
                "mean_points",
                "ci95_low",
                "ci95_high",
                "status",
                "verdict",
            ],
            crow,
        )
        written.append(CLAIMS_FILE)
    return written


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def default_out(run_ids: Sequence[str], experiment: str | None) -> Path:
    name = run_ids[0] if run_ids else re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment or "report")
    return Path(f"report-{name}")


def report(
    run_ids: Sequence[str] = (),
    experiment: str | None = None,
    tracking: str | None = None,
    out: str | os.PathLike | None = None,
    log: bool = True,
    time_methods: Sequence[str] | None = None,
    progress: bool = True,
    echo=print,
) -> Path:
    """Write the report of the runs to ``out``; log it to each parent run under ``report/`` if ``log``.
    Returns the output folder."""
    client = open_store(tracking)
    col = collect(client, run_ids, experiment, progress)
    by_method = group(col.finished, col.methods)
    if time_methods:
        unknown = [m for m in time_methods if m not in by_method]
        if unknown:
            raise FedregError(
                f"--time-methods: no finished runs of {', '.join(unknown)}; the methods are: "
                f"{', '.join(by_method)}"
            )
    out = Path(out) if out else default_out(run_ids, experiment)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedregError(
            f"cannot create the report folder '{out}': {exc.strerror}; pass --out DIR"
        ) from None
    summaries = aggregate(col.finished, col.methods)
    tm = {m: by_method[m] for m in (time_methods or by_method)}
    budget, budget_rows = matched_budget(tm)
    plots = make_plots(by_method, out, time_methods, budget)
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    datasets = _uniq(
        rd.tags.get("fedreg.dataset") or rd.params.get("data.dataset.name") for rd in col.finished
    )
    claims = judge_claims(col.finished, col.methods, datasets[0] if len(datasets) == 1 else None)
    blocks = build_blocks(col, summaries, budget, budget_rows, plots, time_methods, generated, claims)
    (out / "report.md").write_text(render_markdown(blocks))
    (out / "report.html").write_text(render_html(blocks, out, title=str(blocks[0][2])))
    files = (
        list(REPORT_FILES[:2]) + write_tables(out, col, summaries, budget, budget_rows, claims) + list(plots)
    )
    echo(render_markdown([b for b in blocks if b[0] == "table"][:1]).rstrip())
    echo(f"wrote {', '.join(files)} to {out}/")
    if col.incomplete:
        echo(
            f"left out {len(col.incomplete)} incomplete run(s): "
            + ", ".join(
                f"{rd.name or rd.run_id} ({rd.status}, round {rd.last_round or 0})" for rd in col.incomplete
            )
        )
    if log:
        targets = [p.info.run_id for p in col.parents]
        for pid in targets:
            for name in files:
                client.log_artifact(pid, str(out / name), "report")
        if targets:
            echo(f"logged them under report/ to run(s) {', '.join(targets)}")
    return out
