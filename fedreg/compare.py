"""`fedreg compare`: the final table of the variants of a parent run, with learning curves."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedreg.describe import TABLE_FILE
from fedreg.describe import fmt as _fmt
from fedreg.errors import FedregError
from fedreg.figures import TIME_COLUMNS, WINDOW, Figure, curve_keys, table_columns
from fedreg.outputs import MetricNames, plot_curves, write_csv
from fedreg.registry import installed_figures
from fedreg.stores import open_store
from fedreg.tracking import log_table

NOTE = (
    "'final' is the last evaluated round; 'last-{w} mean' averages the last {w} evaluated rounds (never "
    "best-so-far)."
)


def columns(figures: list[Figure], evaluated: int | None = None) -> list[tuple[str, str]]:
    """(header, summary key in the child run): the declared table figures, then the wall and CPU time."""
    return [*table_columns(figures, evaluated), *TIME_COLUMNS]


def evaluated_rounds(children) -> int | None:
    """The fewest evaluated rounds of the child runs (from their params), for honest window labels."""
    counts = []
    for ch in children:
        try:
            rounds = int(ch.data.params["federation.rounds"])
            every = int(ch.data.params.get("evaluation.every", 1))
        except (KeyError, ValueError):
            continue
        counts.append(-(-rounds // every))
    return min(counts) if counts else None


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


def figure_of(key: str, figures: list[Figure]) -> Figure | None:
    """The figure a summary key (``final_global_acc``, ``last10_global_nfr``) summarises."""
    base = key.split("_", 1)[1] if key.startswith(("final_", f"last{WINDOW}_")) else key
    return next((f for f in figures if f.key == base), None)


def cell(v: float | None, fig: Figure | None) -> str:
    """A value as tables show it: a percentage figure in percent (1 decimal), others as :func:`_fmt`."""
    if fig is not None and fig.percent and v is not None and not math.isnan(v):
        return f"{100 * v:.1f}"
    return _fmt(v)


def winners(rows: list[dict], cols: list[tuple[str, str]], figures: list[Figure]) -> dict[str, set[int]]:
    """Per column header, the rows holding its best value (higher or lower as the figure says)."""
    out: dict[str, set[int]] = {}
    for header, key in cols:
        fig = figure_of(key, figures)
        vals = {i: r[header] for i, r in enumerate(rows) if isinstance(r.get(header), int | float)}
        vals = {i: v for i, v in vals.items() if not math.isnan(v)}
        if not vals or fig is None or len(vals) < 2:
            continue
        best = (max if fig.higher_is_better else min)(vals.values())
        out[header] = {i for i, v in vals.items() if v == best}
    return out


def markdown(rows: list[dict], cols: list[tuple[str, str]], note: str, figures: Sequence[Figure] = ()) -> str:
    figures = list(figures)
    best = winners(rows, cols, figures)
    headers = ["variant"] + [h for h, _ in cols] + ["status"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for i, r in enumerate(rows):
        cells = [
            f"**{cell(r[h], figure_of(k, figures))}**"
            if i in best.get(h, ())
            else cell(r[h], figure_of(k, figures))
            for h, k in cols
        ]
        lines.append("| " + " | ".join([r["variant"], *cells, r["status"]]) + " |")
    return "\n".join(lines) + "\n\n" + note + "\n"


def terminal(rows: list[dict], cols: list[tuple[str, str]], figures: list[Figure], width: int = 100) -> str:
    """The table for a terminal: one line per figure, one column per run, in blocks of runs that fit
    ``width`` characters; ``*`` marks each figure's best run."""
    best = winners(rows, cols, figures)
    label_w = min(max([len(h) for h, _ in cols] + [6]), 52)
    names = [r["variant"] for r in rows]
    col_w = [max(8, min(len(n), 18)) + 2 for n in names]
    blocks, start = [], 0
    while start < len(rows):
        end, used = start, label_w
        while end < len(rows) and (end == start or used + col_w[end] <= width):
            used += col_w[end]
            end += 1
        blocks.append(range(start, end))
        start = end
    out = []
    for block in blocks:
        head = "".ljust(label_w) + "".join(names[i][: col_w[i] - 2].rjust(col_w[i]) for i in block)
        out += [head, "-" * len(head)]
        for h, k in cols:
            fig = figure_of(k, figures)
            label = h if len(h) <= label_w else h[: label_w - 1] + "~"
            vals = "".join(
                (cell(rows[i][h], fig) + ("*" if i in best.get(h, ()) else " ")).rjust(col_w[i])
                for i in block
            )
            out.append(label.ljust(label_w) + vals)
        out.append("status".ljust(label_w) + "".join(rows[i]["status"][:8].rjust(col_w[i]) for i in block))
        out.append("")
    return "\n".join(out)


def compare(parent_id: str, tracking: str | None = None, log: bool = True, echo=print) -> int:
    client = open_store(tracking)  # a store that is not there is an error, not a new empty one
    parent, children = collect(client, parent_id)
    figures = installed_figures()
    names = MetricNames(figures)
    logged = [names.read_metrics(ch.data.metrics) for ch in children]
    # only the columns some child logged (a metric installed but not in the spec shows nothing)
    cols = [(h, k) for h, k in columns(figures, evaluated_rounds(children)) if any(k in m for m in logged)]
    rows = table_rows(children, cols, names)
    shown = {k for _, k in cols}
    note = notes([f for f in figures if any(k in shown for _, k in f.columns())])
    text = markdown(rows, cols, note, figures)
    echo(terminal(rows, cols, figures) + "* best of the column. " + note)
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
