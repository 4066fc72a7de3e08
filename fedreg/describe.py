"""What the MLflow UI shows about a comparison besides metrics: the descriptions of the parent and child runs
(the ``mlflow.note.content`` tag, rendered as markdown on the run page and in the runs table), the params
the variants share (logged on the parent run) and the comparison table as an MLflow table
(``compare/table.json``, shown by the UI's evaluation view)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fedreg
from fedreg.figures import TIME_COLUMNS, Figure, figures_of, table_columns
from fedreg.outputs import component_tags
from fedreg.spec import ResolvedSpec
from fedreg.sweep import grid_tags, group_tag
from fedreg.tracking import fedreg_commit, flatten, git_commit

#: the MLflow tag holding a run's description
DESCRIPTION = "mlflow.note.content"
#: where the comparison table is logged as an MLflow table (in the parent run)
TABLE_FILE = "compare/table.json"
#: the longest description MLflow keeps (its limit on a tag's value, ``MAX_TAG_VAL_LENGTH``)
DESCRIPTION_MAX = 8000


def overrides_of(original: Mapping[str, Any] | None, variant: str | None) -> dict[str, str]:
    """A variant's overrides as written in the spec, flattened to dotted keys (``federation.aggregation``:
    ``fedavg``); {} for the base spec."""
    if not original or variant is None:
        return {}
    over = (original.get("variants") or {}).get(variant) or {}
    return flatten(over) if isinstance(over, dict) else {}


def overrides_text(overrides: Mapping[str, str]) -> str:
    """``federation.aggregation=fedavg, method=fedavg``, or 'the base spec' without overrides."""
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the base spec"


def describe_child(rs: ResolvedSpec, overrides: Mapping[str, str] | None = None) -> str:
    """A child run's description in one line: its variant and what it overrides in the base spec
    (``overrides``, see :func:`overrides_of`), its grid point and, in a seed sweep, its seed."""
    parts = [overrides_text(overrides or {})]
    grid = getattr(rs, "grid", None)  # the run's grid point (issue 15's grid:)
    if grid:
        parts.append("grid: " + ", ".join(f"{k}={v}" for k, v in grid.items()))
    if rs.swept:
        parts.append(f"seed {rs.spec.seed}")
    name = f"variant `{rs.variant}`" if rs.variant else f"`{rs.spec.name}`"
    return f"{name} of `{rs.spec.name}`: " + "; ".join(parts)


def shared_params(specs: Sequence[ResolvedSpec]) -> dict[str, str]:
    """The flattened resolved params every run of the comparison has with the same value."""
    flat = [flatten(rs.resolved_dict()) for rs in specs]
    if not flat:
        return {}
    return {k: v for k, v in flat[0].items() if all(f.get(k) == v for f in flat[1:])}


def fmt(v: float | None) -> str:
    """A figure in a table: 4 decimals, 1 from 10 up, '-' when missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.4f}"


def comparison_rows(
    runs: Sequence[tuple[str, str, Mapping[str, float]]], figures: Sequence[Figure]
) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the comparison table: per run (name, overrides text, summary values by key) the
    figures' table columns some run has, then the wall and CPU time."""
    every = [*table_columns(figures), *TIME_COLUMNS]
    cols = [(h, k) for h, k in every if any(k in s for *_, s in runs)]
    headers = ["variant", "overrides", *(h for h, _ in cols)]
    rows = [[name, over, *(fmt(s.get(k)) for _, k in cols)] for name, over, s in runs]
    return headers, rows


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def report_link(experiment_id: str, run_id: str) -> str:
    """Where ``fedreg report`` logs the report of a parent run, as a link within the MLflow UI."""
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/report/report.html"


def describe_parent(
    name: str,
    source: str | None,
    experiment_id: str,
    run_id: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    shared: int,
) -> str:
    """The parent run's description: what was compared, the table (each variant's overrides, and its
    figures once the variants have finished), where the shared params are, and the report. Within MLflow's
    limit on a tag (:data:`DESCRIPTION_MAX`): a table too long for it shows its first rows, and says where
    the whole table is."""
    what = f"`{source}`" if source else f"`{name}`"
    intro = (
        f"**{name}**: {len(rows)} runs of {what}. Each row says what the variant overrides in the base "
        f"spec; the {shared} params the runs share are this run's params."
    )
    outro = (
        f"Report: `fedreg report {run_id}` writes report.html and logs it here: "
        f"[report/report.html]({report_link(experiment_id, run_id)}). "
        f"Table in the Evaluation/Artifacts view: `{TABLE_FILE}`."
    )
    text = "\n\n".join([intro, markdown_table(headers, rows), outro])
    shown = len(rows)
    while len(text) > DESCRIPTION_MAX and shown > 0:  # the first rows, then how many more and where
        shown = min(shown - 1, shown * DESCRIPTION_MAX // len(text))
        more = f"... and {len(rows) - shown} more runs: the whole table is `{TABLE_FILE}` (`fedreg compare`)."
        text = "\n\n".join([intro, markdown_table(headers, rows[:shown]), more, outro])
    return text[:DESCRIPTION_MAX]


class ParentRun:
    """What a parent run shows of its comparison: called when the parent opens (the variants and their
    overrides, the shared params) and when its runs have finished (their figures, the table)."""

    def __init__(self, tracker: Any, parent: str, specs: Sequence[ResolvedSpec], original, source):
        self.tracker, self.parent, self.specs = tracker, parent, list(specs)
        self.original, self.source = original, source
        self.figures = figures_of(m.info.cls for rs in self.specs for m in rs.metrics)

    @classmethod
    def of(cls, exp: Any) -> ParentRun:
        """The parent run of an :class:`~fedreg.experiment.Experiment`."""
        return cls(exp.tracker, exp.parent, exp.specs, exp.original, exp.source)

    def name(self, rs: ResolvedSpec) -> str:
        return rs.key or rs.spec.name

    def opened(self) -> None:
        shared = shared_params(self.specs)
        self.tracker.log_params(self.parent, shared)
        self.describe({}, len(shared))

    def finished(self, results: Sequence[Any]) -> None:
        """``results``: the :class:`~fedreg.rounds.RunResult` of the runs that finished (``final``); a run
        that did not finish shows '-'."""
        by_id = {r.run_id: r.final for r in results}
        ids = self.run_ids()
        finals = {self.name(rs): by_id.get(ids.get(self.name(rs), ""), {}) for rs in self.specs}
        headers, rows = self.describe(finals, len(shared_params(self.specs)))
        self.tracker.log_table(self.parent, headers, rows, TABLE_FILE)
        self.save_views()

    def save_views(self) -> None:
        """The comparison's saved views in MLflow's runs page (:mod:`fedreg.mlflow_view`); a store that cannot
        take them now only loses the links (``fedreg ui`` writes them when it opens the comparison)."""
        from fedreg.mlflow_view import write_views

        try:
            write_views(
                self.tracker.client,
                self.tracker.experiment_id,
                self.parent,
                self.specs[0].spec.name,
                self.figures,
            )
        except Exception:  # noqa: BLE001 - the runs are logged; only the view is missing
            pass

    def run_ids(self) -> dict[str, str]:
        """Child run name -> run id, read from the store (a resumed run keeps its id, a re-run gets a new one:
        the latest of each name counts)."""
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent}'",
            order_by=["attributes.start_time ASC"],
            max_results=1000,
        )
        return {r.info.run_name: r.info.run_id for r in runs}

    def describe(self, finals: Mapping[str, Mapping[str, float]], shared: int):
        runs = []
        for rs in self.specs:
            over = overrides_text(overrides_of(self.original, rs.variant))
            runs.append((self.name(rs), over, finals.get(self.name(rs), {})))
        headers, rows = comparison_rows(runs, self.figures)
        text = describe_parent(
            self.specs[0].spec.name,
            self.source,
            self.tracker.experiment_id,
            self.parent,
            headers,
            rows,
            shared,
        )
        self.tracker.set_tags(self.parent, {DESCRIPTION: text})
        return headers, rows


__all__ = [
    "DESCRIPTION",
    "TABLE_FILE",
    "comparison_rows",
    "describe_child",
    "describe_parent",
    "markdown_table",
    "overrides_of",
    "overrides_text",
    "report_link",
    "shared_params",
    "ParentRun",
]


def provenance_tags(spec_name: str, source: str | None) -> dict[str, str]:
    """Tags every run of an invocation carries: fedreg's version (and commit, from a source checkout), the
    spec's name and file, and the commit of the repository holding the spec."""
    tags = {"fedreg.version": fedreg.__version__, "fedreg.spec": spec_name}
    if own := fedreg_commit():  # fedreg's own source checkout, not the spec's repository
        tags["fedreg.commit"] = own
    if source:
        tags["fedreg.spec_file"] = str(source)
    if commit := git_commit(Path(source).parent if source else "."):
        tags["mlflow.source.git.commit"] = commit
    return tags


def child_tags(
    rs: ResolvedSpec, fed: Any, base: dict[str, str], parent: str | None, original: dict | None
) -> dict[str, str]:
    """The tags of a variant's MLflow run (``base``: :func:`provenance_tags`; ``fed``: its
    :class:`~fedreg.data.FederatedData`): its components, role, dataset, variant, description, seed, the
    group it is compared in and its grid point."""
    tags = {
        **base,
        **component_tags(rs),
        "fedreg.role": "child" if parent else "single",
        "fedreg.dataset.md5": fed.dataset.checksum,
        "fedreg.dataset": fed.dataset.name,
    }
    if rs.variant:
        tags["fedreg.variant"] = rs.variant
    tags[DESCRIPTION] = describe_child(rs, overrides_of(original, rs.variant))
    tags["fedreg.seed"] = str(rs.spec.seed)
    tags["fedreg.group"] = group_tag(rs, parent)
    tags.update(grid_tags(rs))
    return tags
