"""`fedreg compare`: the final table of the variants of a parent run, with learning curves."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedreg.errors import FedregError
from fedreg.outputs import plot_curves, write_csv
from fedreg.tracking import tracking_uri

#: (column header, metric key in the child run)
COLUMNS: list[tuple[str, str]] = [
    ("global acc (final)", "final_global_acc"),
    ("global acc (last-10 mean)", "last10_global_acc"),
    ("local acc mean (last-10 mean)", "last10_local_acc_mean"),
    ("worst participant of the round, local acc (last-10 mean)", "last10_local_acc_worst"),
    ("global NFR (last-10 mean)", "last10_global_nfr"),
    ("BwT (last-10 mean)", "last10_bwt"),
    ("global consistency (last-10 mean)", "last10_global_consistency"),
    ("wall time s", "wall_time_s"),
]

NOTE = (
    "'final' is the last evaluated round; 'last-10 mean' averages the last 10 evaluated rounds (never "
    "best-so-far). Local accuracy is each round's participating clients' trained models on their own "
    "local test sets (personal models where the method has them); 'worst participant of the round' is the "
    "worse of that round's sampled clients, not the worst client of the federation: 'fedreg report' gives "
    "the worst client (each client at its last participation, the minimum over all clients)."
)

CURVE_KEYS = ("global_acc", "local_acc_mean", "local_acc_worst", "global_nfr")


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.4f}"


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


def table_rows(children) -> list[dict]:
    rows = []
    for ch in children:
        row = {
            "variant": ch.data.tags.get("fedreg.variant", ch.info.run_name),
            "status": ch.info.status,
            "run_id": ch.info.run_id,
        }
        for header, key in COLUMNS:
            row[header] = ch.data.metrics.get(key)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    headers = ["variant"] + [h for h, _ in COLUMNS] + ["status"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append(
            "| " + " | ".join([r["variant"]] + [_fmt(r[h]) for h, _ in COLUMNS] + [r["status"]]) + " |"
        )
    return "\n".join(lines) + "\n\n" + NOTE + "\n"


def compare(parent_id: str, tracking: str | None = None, log: bool = True, echo=print) -> int:
    client = MlflowClient(tracking_uri(tracking))
    parent, children = collect(client, parent_id)
    rows = table_rows(children)
    text = markdown(rows)
    echo(text)
    if log:
        histories = {}
        for ch in children:
            name = ch.data.tags.get("fedreg.variant", ch.info.run_name)
            per_round: dict[int, dict] = {}
            for key in CURVE_KEYS:
                for m in client.get_metric_history(ch.info.run_id, key):
                    per_round.setdefault(m.step, {"round": m.step})[key] = m.value
            histories[name] = [per_round[s] for s in sorted(per_round)]
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "table.md").write_text(text)
            write_csv(d / "table.csv", rows, list(rows[0]))
            plot_curves(histories, d / "curves.png", CURVE_KEYS)
            for name in ("table.md", "table.csv", "curves.png"):
                client.log_artifact(parent_id, str(d / name), "compare")
        echo(f"logged compare/table.md, compare/table.csv and compare/curves.png to run {parent_id}")
    return 0
