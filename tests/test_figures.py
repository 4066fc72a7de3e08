"""Metric components declare how their numbers read (fedreg.figures); the core's tables and curves come
from those declarations, never from metric keys written in the core."""

from __future__ import annotations

import pytest

from fedreg.figures import Figure, curve_keys, figures_of, progress_keys, table_columns
from fedreg.outputs import TIMING_KEYS
from fedreg.registry import installed_figures
from fedreg.testing import tiny_federation

FIRST_PARTY_METRICS = [
    "personalization",
    "global_accuracy",
    "local_accuracy",
    "global_on_local",
    "flips",
    "bwt",
    "auc",
    "ece",
    "brier",
]


def test_figures_are_sorted_by_order_and_a_key_keeps_its_first_declaration():
    class A:
        figures = (Figure("b", "B", order=2), Figure("a", "A", order=1))

    class B:
        figures = (Figure("a", "A again", order=0), Figure("c", "C", column=True, final=True, order=3))

    figs = figures_of([A, B])
    assert [f.key for f in figs] == ["a", "b", "c"] and figs[0].label == "A"
    assert table_columns(figs) == [("C (final)", "final_c"), ("C (mean of last 10 rounds)", "last10_c")]
    # a window longer than the runs says what it covers
    assert table_columns(figs, 6)[1] == ("C (mean of all 6 rounds)", "last10_c")


def test_first_party_headline_figures(registry):
    figs = installed_figures(registry)
    assert curve_keys(figs) == ("global_acc", "local_acc_mean", "local_acc_worst", "global_nfr", "bwt")
    assert progress_keys(figs) == ("global_acc", "local_acc_mean")
    assert [k for _, k in table_columns(figs)] == [
        "final_global_acc",
        "last10_global_acc",
        "final_worst_client_acc",
        "last10_local_acc_mean",
        "last10_local_acc_worst",
        "last10_global_nfr",
        "last10_bwt",
        "last10_global_consistency",
        "last10_global_auc",
        "last10_global_ece",
        "last10_global_brier",
    ]
    lower_is_better = {f.key for f in figs if not f.higher_is_better}
    assert {"global_nfr", "global_ece", "global_brier"} <= lower_is_better
    assert "global_auc" not in lower_is_better


def test_every_scalar_a_first_party_metric_logs_is_declared(registry):
    res = tiny_federation({"metrics": FIRST_PARTY_METRICS, "federation.rounds": 2}, registry=registry)
    declared = {f.key for f in installed_figures(registry)}
    metric_keys = set().union(*(row.keys() for row in res.history))
    core_keys = {"round", "lr", "train_loss", "clients_ok", "clients_failed", *TIMING_KEYS}
    assert metric_keys - core_keys <= declared, metric_keys - core_keys - declared
    assert declared <= metric_keys  # and nothing is declared that no metric logs


def test_mlflow_names_group_the_chart_view_and_read_back(registry):
    """Keys are logged under '/'-grouped names (MLflow's chart view sections: accuracy first; the round loop's
    timings under timing/, not MLflow's system/); summaries named for reading, percentages x 100 and rounded;
    readers map names back (percentages to fractions), and an old run's names read as they did."""
    from fedreg.outputs import MetricNames

    figs = installed_figures(registry)
    names = MetricNames(figs)
    logged = names.per_round({"global_acc": 0.5, "bwt": -0.1, "train_loss": 1.0, "elapsed_s": 3.0})
    assert logged == {
        "accuracy/global": 0.5,
        "forgetting/bwt": -0.1,
        "training/loss": 1.0,
        "timing/elapsed_s": 3.0,
    }
    final = {
        "final_global_acc": 0.51234,
        "last10_global_acc": 0.4,
        "final_global_bacc": 0.3,
        "final_worst_client_acc": 0.25,
        "last10_global_ece": 0.123456,
        "wall_time_s": 9.0,
    }
    summary = names.summary(final, figs)
    assert summary == {
        "global acc final pct": 51.23,
        "global acc last10 pct": 40.0,
        "worst-client local acc at last participation pct": 25.0,
        "global ECE last10": 0.1235,
        "wall time s": 9.0,
    }
    assert set(names.summary(final, figs, evaluated=6)) >= {"global acc all6 pct", "global ECE all6"}
    read = names.read_metrics({**logged, **summary})
    assert read["last10_global_acc"] == 0.4 and read["final_worst_client_acc"] == 0.25
    assert read["final_global_acc"] == pytest.approx(0.5123) and read["elapsed_s"] == 3.0
    # an older run's names
    old = {"summary/accuracy.global.final": 0.5, "summary/wall_time_s": 9.0, "system/elapsed_s": 3.0}
    read = names.read_metrics(old)
    assert read["final_global_acc"] == 0.5 and read["wall_time_s"] == 9.0 and read["elapsed_s"] == 3.0
    assert (
        names.key_of("forgetting/nfr") == "global_nfr"
        and names.key_of("last10_global_acc") == "last10_global_acc"
    )
    sections = sorted({n.rsplit("/", 1)[0] for f in figs if (n := names.name(f.key)) and "/" in n})
    assert sections[0] == "accuracy"
