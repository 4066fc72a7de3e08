"""`fedreg report`: a markdown and HTML report of a comparison (the variants of one or more parent runs, or
every child run of an experiment), with statistics over seeds, curves, a client-level view and a
matched time budget comparison (on CPU time where every run logged it, else wall-clock time).

The steps are plain functions, one module each:

- :mod:`~fedreg_report.store` finds the runs (:func:`find_runs`) in the store the core's
  :func:`fedreg.stores.open_store` opens; :mod:`~fedreg_report.runs` reads them into :class:`RunData`
  records (:func:`collect`).
- :mod:`~fedreg_report.stats` holds the statistics as small plain functions on plain values:
  :class:`Stat` (mean ± sample std over seeds), :func:`worst_client` (the worst client's local accuracy at
  its last participation), :func:`window_means` and :func:`window_label` (means over all rounds and over
  the last :data:`WINDOW`), :func:`t_interval` and :func:`paired_differences`.
  :mod:`~fedreg_report.summary` applies them to runs: :func:`run_values`, :func:`aggregate`,
  :func:`matched_budget`.
- :mod:`~fedreg_report.paired` compares two methods seed by seed, with the verdict wordings
  (:func:`gap_verdict`, :func:`direction_verdict`); :mod:`~fedreg_report.claims` judges the paper's claims
  (:func:`judge_claims`), the only place that names methods: the variants in :data:`CLAIM_VARIANTS`; the
  section is left out when the comparison does not hold them.
- :mod:`~fedreg_report.protocol`: which protocol each run used (:func:`protocol_of`).
- :mod:`~fedreg_report.plots` and :mod:`~fedreg_report.client_plot` draw the figures (:func:`make_plots`).
- :mod:`~fedreg_report.layout` lays the report out as blocks (:func:`build_blocks`), with the sections
  of :mod:`~fedreg_report.sections` and :mod:`~fedreg_report.protocol`; :mod:`~fedreg_report.render`
  renders them with the Jinja2 templates in ``templates/`` (:func:`render_markdown`,
  :func:`render_html`); :mod:`~fedreg_report.tables` writes the CSV files.
- :mod:`~fedreg_report.command`: :func:`report`, the command itself.

Methods are the runs' ``fedreg.variant`` tags. Which metric keys are read and shown:
:mod:`~fedreg_report.metrics`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it; imported on first use, so that loading the `report` command
#: (every `fedreg` invocation builds its parser) does not import MLflow, matplotlib, SciPy and Jinja2
_WHERE = {
    "ABLATIONS": "fedreg_report.claims",
    "BALANCE_KEY": "fedreg_report.metrics",
    "Block": "fedreg_report.render",
    "BudgetRow": "fedreg_report.summary",
    "CLAIMED_GAP": "fedreg_report.claims",
    "CLAIMS_FILE": "fedreg_report.metrics",
    "CLAIM_VARIANTS": "fedreg_report.claims",
    "CLIENT_METRIC_PREFIX": "fedreg_report.metrics",
    "CURVE_KEYS": "fedreg_report.metrics",
    "CURVE_TITLES": "fedreg_report.metrics",
    "Claim": "fedreg_report.claims",
    "Clock": "fedreg_report.summary",
    "Collection": "fedreg_report.runs",
    "Comparison": "fedreg_report.paired",
    "EXTRA_KEYS": "fedreg_report.metrics",
    "FORGETTING": "fedreg_report.metrics",
    "HISTORY_KEYS": "fedreg_report.metrics",
    "Interval": "fedreg_report.stats",
    "MethodSummary": "fedreg_report.summary",
    "PROTOCOL_FIELDS": "fedreg_report.protocol",
    "REPORT_FILES": "fedreg_report.metrics",
    "RunData": "fedreg_report.runs",
    "SETTING_KEYS": "fedreg_report.metrics",
    "SMALL_LOCAL_TEST": "fedreg_report.metrics",
    "Stat": "fedreg_report.stats",
    "TABLE": "fedreg_report.metrics",
    "TABLE_KEYS": "fedreg_report.metrics",
    "WINDOW": "fedreg_report.metrics",
    "WORST_KEY": "fedreg_report.metrics",
    "WindowMeans": "fedreg_report.stats",
    "WorstClient": "fedreg_report.stats",
    "aggregate": "fedreg_report.summary",
    "all_label": "fedreg_report.stats",
    "build_blocks": "fedreg_report.layout",
    "claims_blocks": "fedreg_report.sections",
    "clock_of": "fedreg_report.summary",
    "collect": "fedreg_report.runs",
    "compare_pair": "fedreg_report.paired",
    "curve_over_seeds": "fedreg_report.stats",
    "default_out": "fedreg_report.command",
    "direction_verdict": "fedreg_report.paired",
    "find_runs": "fedreg_report.store",
    "forgetting_blocks": "fedreg_report.sections",
    "gap_verdict": "fedreg_report.paired",
    "group": "fedreg_report.summary",
    "judge_claims": "fedreg_report.claims",
    "last_at_participation": "fedreg_report.runs",
    "local_test_sizes_of": "fedreg_report.runs",
    "make_plots": "fedreg_report.plots",
    "matched_budget": "fedreg_report.summary",
    "method_of": "fedreg_report.runs",
    "paired_differences": "fedreg_report.stats",
    "participants_of": "fedreg_report.runs",
    "plot_clients": "fedreg_report.client_plot",
    "plot_curves": "fedreg_report.plots",
    "plot_small_multiples": "fedreg_report.plots",
    "plot_time": "fedreg_report.plots",
    "protocol_blocks": "fedreg_report.protocol",
    "protocol_of": "fedreg_report.protocol",
    "protocols": "fedreg_report.protocol",
    "rank_per_seed": "fedreg_report.stats",
    "ranked_others": "fedreg_report.stats",
    "read_run": "fedreg_report.runs",
    "render_html": "fedreg_report.render",
    "render_markdown": "fedreg_report.render",
    "report": "fedreg_report.command",
    "results_blocks": "fedreg_report.sections",
    "results_headers": "fedreg_report.sections",
    "round_to_round_swing": "fedreg_report.summary",
    "run_values": "fedreg_report.summary",
    "seed_of": "fedreg_report.runs",
    "t_interval": "fedreg_report.stats",
    "time_blocks": "fedreg_report.sections",
    "total_time": "fedreg_report.summary",
    "trailing_mean": "fedreg_report.stats",
    "window_label": "fedreg_report.stats",
    "window_means": "fedreg_report.stats",
    "within_budget": "fedreg_report.stats",
    "worst_client": "fedreg_report.stats",
    "worst_client_blocks": "fedreg_report.sections",
    "worst_of": "fedreg_report.summary",
    "write_tables": "fedreg_report.tables",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
