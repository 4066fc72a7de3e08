"""`fedreg compare`: the final table of the variants of a parent run, with learning curves."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedreg.describe import TABLE_FILE
from fedreg.describe import fmt as _fmt
from fedreg.errors import FedregError
from fedreg.figures import WINDOW, Figure, curve_keys, installed_figures, table_columns
from fedreg.outputs import MetricNames, plot_curves, write_csv
from fedreg.tracking import log_table, tracking_uri

NOTE = (
    "'final' is the last evaluated round; 'last-{w} mean' averages the last {w} evaluated rounds (never "
    "best-so-far)."
)


def columns(figures: list[Figure]) -> list[tuple[str, str]]:
    """(header, summary key in the child run): the declared table figures, then the wall time."""
    return [*table_columns(figures), ("wall time s", "wall_time_s")]


def notes(figures: list[Figure]) -> str:
    return " ".join([NOTE.format(w=WINDOW), *(f.note for f in figures if f.column and f.note)])


def collect(client: MlflowClient, parent_id: str):
    try:
        parent = client.get_run(parent_id)
    except MlflowException:
        raise FedregError(
            f"no MLflow run '{parent_id}' in {client.tracking_uri}; pass the parent run id "
            f"printed by 'fedreg run' (and --tracking-uri if the store is elsewhere)"
        ) from None
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    if not children:
        raise FedregError(
            f"run '{parent_id}' has no child runs: 'fedreg compare' takes the parent run of a "
            f"spec with variants"
        )
    return parent, children


def table_rows(children, cols: list[tuple[str, str]], names: MetricNames | None = None) -> list[dict]:
    """One row per child run: its variant, status, run id and the summary values of ``cols`` (read under
    their MLflow names, or an old run's keys)."""
    names = names or MetricNames()
    rows = []
    for ch in children:
        metrics = names.read_metrics(ch.data.metrics)
        row = {
            "variant": ch.data.tags.get("fedreg.variant", ch.info.run_name),
            "status": ch.info.status,
            "run_id": ch.info.run_id,
        }
        for header, key in cols:
            row[header] = metrics.get(key)
        rows.append(row)
    return rows


def markdown(rows: list[dict], cols: list[tuple[str, str]], note: str) -> str:
    headers = ["variant"] + [h for h, _ in cols] + ["status"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join([r["variant"]] + [_fmt(r[h]) for h, _ in cols] + [r["status"]]) + " |")
    return "\n".join(lines) + "\n\n" + note + "\n"


def compare(parent_id: str, tracking: str | None = None, log: bool = True, echo=print) -> int:
    client = MlflowClient(tracking_uri(tracking))
    parent, children = collect(client, parent_id)
    figures = installed_figures()
    names = MetricNames(figures)
    logged = [names.read_metrics(ch.data.metrics) for ch in children]
    # only the columns some child logged (a metric installed but not in the spec shows nothing)
    cols = [(h, k) for h, k in columns(figures) if any(k in m for m in logged)]
    rows = table_rows(children, cols, names)
    shown = {k for _, k in cols}
    text = markdown(rows, cols, notes([f for f in figures if any(k in shown for _, k in f.columns())]))
    echo(text)
    if log:
        histories = {}
        for ch in children:
            name = ch.data.tags.get("fedreg.variant", ch.info.run_name)
            per_round: dict[int, dict] = {}
            for key in curve_keys(figures):
                for m in names.history(client, ch.info.run_id, key):
                    per_round.setdefault(m.step, {"round": m.step})[key] = m.value
            histories[name] = [per_round[s] for s in sorted(per_round)]
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "table.md").write_text(text)
            write_csv(d / "table.csv", rows, list(rows[0]))
            plot_curves(histories, d / "curves.png", [f for f in figures if f.curve])
            for name in ("table.md", "table.csv", "curves.png"):
                client.log_artifact(parent_id, str(d / name), "compare")
        headers = ["variant"] + [h for h, _ in cols] + ["status"]
        cells = [[r["variant"], *(_fmt(r[h]) for h, _ in cols), r["status"]] for r in rows]
        log_table(client, parent_id, headers, cells, TABLE_FILE)
        echo(
            f"logged compare/table.md, table.csv, curves.png and {TABLE_FILE} (an MLflow table) to run "
            f"{parent_id}"
        )
    return 0
