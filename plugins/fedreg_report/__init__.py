"""`fedreg report`: a markdown and HTML report of a comparison (the variants of one or more parent runs, or
every child run of an experiment), with statistics over seeds, curves, a client-level view and a
matched wall-clock budget comparison.

The steps are plain functions, one module each:

- :mod:`~fedreg_report.store` opens the MLflow store and finds the runs (:func:`open_store`,
  :func:`find_runs`); :mod:`~fedreg_report.runs` reads them into :class:`RunData` records
  (:func:`collect`).
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

from fedreg_report.claims import CLAIM_VARIANTS, CLAIMED_GAP, Claim, judge_claims
from fedreg_report.client_plot import plot_clients
from fedreg_report.command import default_out, report
from fedreg_report.layout import build_blocks
from fedreg_report.metrics import (
    BALANCE_KEY,
    CLAIMS_FILE,
    CLIENT_METRIC_PREFIX,
    CURVE_KEYS,
    CURVE_TITLES,
    EXTRA_KEYS,
    FORGETTING,
    HISTORY_KEYS,
    REPORT_FILES,
    SETTING_KEYS,
    SMALL_LOCAL_TEST,
    TABLE,
    TABLE_KEYS,
    WINDOW,
    WORST_KEY,
)
from fedreg_report.paired import Comparison, compare_pair, direction_verdict, gap_verdict
from fedreg_report.plots import make_plots, plot_curves, plot_small_multiples, plot_time
from fedreg_report.protocol import PROTOCOL_FIELDS, protocol_blocks, protocol_of, protocols
from fedreg_report.render import Block, render_html, render_markdown
from fedreg_report.runs import (
    Collection,
    RunData,
    collect,
    last_at_participation,
    local_test_sizes_of,
    method_of,
    participants_of,
    read_run,
    seed_of,
)
from fedreg_report.sections import (
    claims_blocks,
    forgetting_blocks,
    results_blocks,
    results_headers,
    time_blocks,
    worst_client_blocks,
)
from fedreg_report.stats import (
    Interval,
    Stat,
    WindowMeans,
    WorstClient,
    all_label,
    curve_over_seeds,
    paired_differences,
    rank_per_seed,
    ranked_others,
    t_interval,
    trailing_mean,
    window_label,
    window_means,
    within_budget,
    worst_client,
)
from fedreg_report.store import find_runs, open_store
from fedreg_report.summary import (
    BudgetRow,
    MethodSummary,
    aggregate,
    group,
    matched_budget,
    round_to_round_swing,
    run_values,
    total_time,
    worst_of,
)
from fedreg_report.tables import write_tables

__all__ = [
    "BALANCE_KEY",
    "CLAIMED_GAP",
    "CLAIMS_FILE",
    "CLAIM_VARIANTS",
    "CLIENT_METRIC_PREFIX",
    "CURVE_KEYS",
    "CURVE_TITLES",
    "EXTRA_KEYS",
    "FORGETTING",
    "HISTORY_KEYS",
    "PROTOCOL_FIELDS",
    "REPORT_FILES",
    "SETTING_KEYS",
    "SMALL_LOCAL_TEST",
    "TABLE",
    "TABLE_KEYS",
    "WINDOW",
    "WORST_KEY",
    "Block",
    "BudgetRow",
    "Claim",
    "Collection",
    "Comparison",
    "Interval",
    "MethodSummary",
    "RunData",
    "Stat",
    "WindowMeans",
    "WorstClient",
    "aggregate",
    "all_label",
    "build_blocks",
    "claims_blocks",
    "collect",
    "compare_pair",
    "curve_over_seeds",
    "default_out",
    "direction_verdict",
    "find_runs",
    "forgetting_blocks",
    "gap_verdict",
    "group",
    "judge_claims",
    "last_at_participation",
    "local_test_sizes_of",
    "make_plots",
    "matched_budget",
    "method_of",
    "open_store",
    "paired_differences",
    "participants_of",
    "plot_clients",
    "plot_curves",
    "plot_small_multiples",
    "plot_time",
    "protocol_blocks",
    "protocol_of",
    "protocols",
    "rank_per_seed",
    "ranked_others",
    "read_run",
    "render_html",
    "render_markdown",
    "report",
    "results_blocks",
    "results_headers",
    "round_to_round_swing",
    "run_values",
    "seed_of",
    "t_interval",
    "time_blocks",
    "total_time",
    "trailing_mean",
    "window_label",
    "window_means",
    "within_budget",
    "worst_client",
    "worst_client_blocks",
    "worst_of",
    "write_tables",
]
