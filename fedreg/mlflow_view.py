"""A comparison as a saved view of MLflow's runs page: the link that opens one parent run's children, sorted
by the headline figure, with the headline columns shown and the chart sections in a fixed order.

MLflow's UI (3.x) restores a whole view (search filter, sort, columns, column widths, group-by, chart
sections and cards) from an experiment tag ``mlflow.sharedViewState.<key>`` when the runs page is opened with
``?viewStateShareKey=<key>``: its own "Save view" / "Copy share link" mechanism. The tag holds a JSON
envelope ``{"name", "createdAt", "state"}`` whose ``state`` is ``"deflate;" + base64(zlib(JSON))``. The URL
must carry no search parameter of its own (the UI then ignores the view), and a view sorted by start time
would nest children under their parent, so the view sorts by a metric. What MLflow cannot do (column display
names, rounding of displayed values, highlighting a column's best value) is done by the names and values
fedreg logs (``global acc final pct``, rounded) and by the sort order.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from fedreg.figures import Figure
from fedreg.outputs import MetricNames, is_summary

#: the experiment tag prefix MLflow's UI reads a shared view from
VIEW_TAG = "mlflow.sharedViewState."
#: MLflow's limit on an experiment tag's value (``MAX_EXPERIMENT_TAG_VAL_LENGTH``)
MAX_TAG = 20_000
#: the per-round names shown first, in this order, as the headline curves (those a run logged)
HEADLINE_CURVES = (
    "accuracy/global",
    "accuracy/worst_client",
    "accuracy/local_mean",
    "forgetting/nfr",
    "forgetting/bwt",
    "forgetting/consistency",
)
#: the summary keys shown as columns, in this order (those a run logged)
HEADLINE_COLUMNS = (
    "final_global_acc",
    "last10_global_acc",
    "final_worst_client_acc",
    "last10_global_nfr",
    "last10_bwt",
    "last10_global_consistency",
)
#: chart sections after the headline one, in this order (a name's section is its prefix before the last '/')
SECTION_ORDER = (
    "accuracy",
    "forgetting",
    "personalization",
    "global_on_local",
    "balanced_accuracy",
    "probabilities",
    "training",
    "summary",
    "timing",
)
#: sections shown folded
FOLDED = ("balanced_accuracy", "probabilities", "training", "summary", "timing")


#: the runs table's id of the run-name column (the names are the variants, grid points and seeds)
RUN_NAME = "attributes.`Run Name`"
#: the child-run tag naming the headline columns in which the run has the comparison's best value
BEST = "fedreg.best"


def view_key(parent_id: str, grouped: bool = False) -> str:
    return f"fedreg-{parent_id}" + ("-groups" if grouped else "")


def encode(state: dict[str, Any]) -> str:
    """MLflow's compressed form of a view state: ``deflate;`` + base64 of the zlib stream of its JSON."""
    raw = json.dumps(state, separators=(",", ":")).encode()
    return "deflate;" + base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def decode(value: str) -> dict[str, Any]:
    """The view state of a saved-view tag value (the envelope or the bare compressed state)."""
    if value.startswith("{"):
        value = json.loads(value)["state"]
    return json.loads(zlib.decompress(base64.b64decode(value[len("deflate;") :])))


def column(kind: str, key: str) -> str:
    """The runs table's key of a column: ``metrics.`summary/global acc final pct```."""
    return f"{kind}.`{key}`"


def _section(name: str) -> str:
    if is_summary(name):
        return "summary"
    return name.rsplit("/", 1)[0] if "/" in name else "other"


def comparison_state(
    parent_id: str,
    logged: Iterable[str],
    figures: Sequence[Figure],
    grouped: bool = False,
    once: Iterable[str] = (),
) -> dict[str, Any]:
    """The view of one comparison: ``logged`` are the metric names its child runs logged, ``once`` those
    logged at one round only (end-of-run figures: bars, not lines)."""
    once = set(once)
    names = MetricNames(figures)
    logged = set(logged)
    rank = {k: i for i, k in enumerate(HEADLINE_COLUMNS)}
    summaries = [n for n in logged if is_summary(n)]
    columns = sorted((n for n in summaries if names.key_of(n) in rank), key=lambda n: rank[names.key_of(n)])
    columns += sorted(n for n in summaries if n not in columns)
    sort = columns[1] if len(columns) > 1 else (columns[0] if columns else None)
    curves = [n for n in HEADLINE_CURVES if n in logged]
    sections = [{"uuid": "headline", "name": "headline", "display": True, "isReordered": True}]
    rest = sorted(n for n in logged if n not in curves)
    found = {_section(n) for n in rest}
    order = [s for s in SECTION_ORDER if s in found] + sorted(found - set(SECTION_ORDER))
    for s in order:
        sections.append({"uuid": s, "name": s, "display": s not in FOLDED, "isReordered": True})
    labels = {names.name(f.key): f for f in figures}
    cards = [_card(n, "headline", labels.get(n), n in once) for n in curves]
    cards += [_card(n, _section(n), labels.get(n), n in once) for n in rest]
    state: dict[str, Any] = {
        "searchFilter": f"tags.mlflow.parentRunId = '{parent_id}'",
        "orderByKey": column("metrics", sort) if sort else "attributes.run_name",
        "orderByAsc": sort is None,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": [column("tags", BEST), column("tags", "fedreg.group")]
        + [column("metrics", n) for n in columns],
        # the UI applies widths only to the columns it is given an order for
        "columnOrder": [
            RUN_NAME,
            column("tags", BEST),
            *(column("metrics", n) for n in columns),
            column("tags", "fedreg.group"),
            "runDateAndNestInfo",
            "duration",
        ],
        "columnWidths": {column("metrics", n): 26 + int(6.3 * len(n)) for n in columns}
        | {column("tags", BEST): 160, RUN_NAME: 260},
        "runsHiddenMode": "SHOW_ALL",
        "compareRunSections": sections,
        "compareRunCharts": cards,
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
        "viewMaximized": False,
        "runListHidden": False,
        "groupBy": None,
        "groupsExpanded": {},
        "useGroupedValuesInCharts": grouped,
    }
    if grouped:
        state["groupBy"] = {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": "fedreg.group"}],
        }
    return state


def _card(name: str, section: str, fig: Figure | None, once: bool = False) -> dict[str, Any]:
    """One chart: a line per child run over the rounds (a bar for a summary or a figure logged once)."""
    base = {
        "uuid": f"chart:{name}",
        "runsCountToCompare": 100,
        "metricSectionId": section,
        "deleted": False,
        "isGenerated": False,
        "metricKey": name,
        "selectedMetricKeys": [name],
    }
    if is_summary(name) or once:
        return {**base, "type": "BAR"}
    title = f"{fig.label}{' (fraction)' if fig.percent else ''}" if fig else name
    # fractions on a 0..1 axis: a figure that stays at 0 (no forgetting) does not get a negative axis
    y = {"yMin": 0, "yMax": 1} if fig is not None and fig.percent and fig.key != "bwt" else {}
    return {
        **base,
        "type": "LINE",
        "displayName": title,
        "lineSmoothness": 0,
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "range": y,
        "xAxisKey": "step",
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": False,
        "useGlobalLineSmoothing": False,
    }


def envelope(name: str, state: dict[str, Any]) -> str:
    """The saved-view tag value MLflow's UI writes and lists under "Views"."""
    now = int(time.time() * 1000)
    value = json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": encode(state)})
    if len(value) > MAX_TAG:
        raise ValueError(f"the view of {name!r} is {len(value)} characters, over MLflow's {MAX_TAG}")
    return value


def write_views(
    client: Any, experiment_id: str, parent_id: str, title: str, figures: Sequence[Figure]
) -> None:
    """Save the comparison's two views (runs, and runs grouped over seeds) as experiment tags, from the
    metric names its child runs logged."""
    children = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000
    )
    logged = {k for ch in children for k in ch.data.metrics}
    mark_best(client, children, figures)
    first = children[0].info.run_id if children else None
    once = {
        n for n in logged if first and not is_summary(n) and len(client.get_metric_history(first, n)) <= 1
    }
    for grouped in (False, True):
        state = comparison_state(parent_id, logged, figures, grouped, once)
        name = f"{title} ({parent_id[:8]})" + (", mean over seeds" if grouped else "")
        client.set_experiment_tag(
            experiment_id, VIEW_TAG + view_key(parent_id, grouped), envelope(name, state)
        )


def best_runs(children: Sequence[Any], figures: Sequence[Figure]) -> dict[str, list[str]]:
    """Per child run id, the headline columns (short labels) in which it holds the best value of the
    comparison (higher or lower as the figure says; ties all count; a column all runs tie on marks none)."""
    names = MetricNames(figures)
    out: dict[str, list[str]] = {ch.info.run_id: [] for ch in children}
    for key in HEADLINE_COLUMNS:
        fig = figures_by_key(figures).get(key.split("_", 1)[1])
        vals = {}
        for ch in children:
            got = names.read_metrics(ch.data.metrics).get(key)
            if isinstance(got, float) and got == got:
                vals[ch.info.run_id] = got
        if fig is None or len(set(vals.values())) < 2:
            continue
        best = (max if fig.higher_is_better else min)(vals.values())
        span = "" if key.startswith("final_") else f" ({key.split('_', 1)[0]})"
        for rid, v in vals.items():
            if v == best:
                out[rid].append(fig.label + span)
    return out


def figures_by_key(figures: Sequence[Figure]) -> dict[str, Figure]:
    return {f.key: f for f in figures}


def mark_best(client: Any, children: Sequence[Any], figures: Sequence[Figure]) -> None:
    """Tag each child run with the headline columns it is best in (:data:`BEST`), the MLflow table's way to
    find a column's best value at a glance."""
    for rid, cols in best_runs(children, figures).items():
        client.set_tag(rid, BEST, "; ".join(cols) if cols else "-")


def routes(experiment_id: str, parent_id: str) -> dict[str, str]:
    """The routes of MLflow's UI (after its ``#``) that open the comparison's views: its runs table, its
    charts, and both grouped over seeds. No search parameter of its own: the UI would ignore the view."""
    page = f"/experiments/{experiment_id}/runs?viewStateShareKey="
    out = {}
    for grouped, what in ((False, "runs"), (True, "groups")):
        key = view_key(parent_id, grouped)
        out[what] = f"{page}{key}&compareRunsMode=TABLE&workflowType=machine_learning"
        out[f"{what} charts"] = f"{page}{key}&compareRunsMode=CHART&workflowType=machine_learning"
    return out


def links(base: str, experiment_id: str, parent_id: str) -> dict[str, str]:
    """The comparison's links on the server at ``base``, through fedreg's ``/fedreg/open`` page (which
    keeps every page in MLflow's model-training mode, :mod:`fedreg.mlflow_app`)."""
    from fedreg.mlflow_app import open_url

    return {what: open_url(base, route) for what, route in routes(experiment_id, parent_id).items()}
