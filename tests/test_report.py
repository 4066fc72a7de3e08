"""`fedreg report`: the statistics over seeds on hand-built inputs, the command on a hand-built MLflow store
(fast), and the whole pipeline on real BloodMNIST (every variant of the paper spec, two seeds)."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import shutil
import time

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from fedreg import environment
from fedreg.cli import main
from fedreg.outputs import summarize
from fedreg_report import (
    TABLE,
    Interval,
    RunData,
    Stat,
    aggregate,
    all_label,
    clock_of,
    curve_over_seeds,
    direction_verdict,
    gap_verdict,
    judge_claims,
    last_at_participation,
    local_test_sizes_of,
    matched_budget,
    paired_differences,
    participants_of,
    protocol_blocks,
    protocol_of,
    protocols,
    rank_per_seed,
    ranked_others,
    render_html,
    render_markdown,
    run_values,
    t_interval,
    total_time,
    trailing_mean,
    window_label,
    window_means,
    within_budget,
    worst_client,
)
from fedreg_report.layout import not_in_table_blocks, settings
from fedreg_report.runs import Collection
from fedreg_report.summary import CPU, WALL
from testhelpers import REPO

PLOTS = ("curves.png", "curves_by_method.png", "curves_raw.png", "clients.png", "accuracy_vs_time.png")


# ---------------------------------------------------------------------------------------------------------
# The math, on hand-built inputs
# ---------------------------------------------------------------------------------------------------------


def test_stat_is_mean_and_sample_std_over_seeds():
    s = Stat.of([0.80, 0.90, 1.00])
    assert s.n == 3 and s.mean == pytest.approx(0.90) and s.std == pytest.approx(0.10)  # ddof=1, not 0.0816
    assert s.fmt(100, 1) == "90.0 ± 10.0"
    one = Stat.of([0.7])
    assert (one.mean, one.std, one.n) == (pytest.approx(0.7), None, 1) and one.fmt(100, 1) == "70.0"
    # missing and non-finite values are not seeds; a cell with fewer values than the method's seeds says so
    part = Stat.of([0.5, None, math.nan])
    assert part.n == 1 and part.fmt(100, 1, n_expected=3) == "50.0 (n=1)"
    assert Stat.of([]).fmt() == "-" and Stat.of([None]).n == 0


def rd(method, seed, summary=None, role="local", **curves):
    return RunData(
        run_id=f"{method}-{seed}",
        method=method,
        seed=seed,
        status="FINISHED",
        summary=summary or {},
        tags={"fedreg.local_model_role": role},
        curves=curves,
    )


def test_aggregate_groups_by_method_in_the_given_order():
    runs = [
        rd("b", 1, {"final_global_acc": 0.6, "wall_time_s": 10.0}, role="personal"),
        rd("a", 2, {"final_global_acc": 0.7, "wall_time_s": 30.0}),
        rd("a", 1, {"final_global_acc": 0.5, "wall_time_s": 20.0}),
        rd("b", 2, {"final_global_acc": 0.8}, role="personal"),
    ]
    out = {s.method: s for s in aggregate(runs, methods=["b", "a"])}
    assert list(out) == ["b", "a"]
    a, b = out["a"], out["b"]
    assert a.seeds == [1, 2] and a.local_model_role == "local" and b.local_model_role == "personal"
    assert a.stats["final_global_acc"].mean == pytest.approx(0.6)
    assert a.stats["final_global_acc"].std == pytest.approx(math.sqrt(0.02))
    assert a.stats["wall_time_s"].mean == pytest.approx(25.0) and a.stats["wall_time_s"].n == 2
    assert b.stats["wall_time_s"].n == 1 and b.stats["wall_time_s"].std is None  # seed 2 did not log it
    assert b.stats["last10_bwt"].n == 0  # a metric nobody logged
    assert set(a.stats) == {k for _, k, _, _ in TABLE}


def test_client_value_is_taken_at_its_last_participation():
    rows = [  # per_client.csv rows as csv.DictReader gives them (strings)
        {"round": "1", "client": "3", "metric": "local_acc[personal]", "value": "0.5"},
        {"round": "1", "client": "4", "metric": "local_acc[personal]", "value": "0.9"},
        {"round": "1", "client": "3", "metric": "train_loss", "value": "2.0"},
        {"round": "2", "client": "4", "metric": "local_bacc[personal]", "value": "0.1"},
        {"round": "4", "client": "3", "metric": "local_acc[personal]", "value": "0.75"},
        {"round": "4", "client": "4", "metric": "local_nfr", "value": "0.3"},
        {"round": "3", "client": "3", "metric": "local_acc[personal]", "value": "0.6"},  # out of order, older
    ]
    values, metric = last_at_participation(rows)
    assert metric == "local_acc[personal]"
    assert values == {3: (4, 0.75), 4: (1, 0.9)}
    assert last_at_participation([{"round": 1, "client": 0, "metric": "train_loss", "value": 1.0}]) == (
        {},
        None,
    )


def test_worst_client_is_the_minimum_over_all_clients_at_their_last_participation():
    rows = [  # per_client.csv rows: client 0 was bad early and good at its last participation
        {"round": "1", "client": "0", "metric": "train_loss", "value": "1.0"},
        {"round": "1", "client": "0", "metric": "local_acc[local]", "value": "0.4"},
        {"round": "2", "client": "1", "metric": "train_loss", "value": "1.0"},
        {"round": "2", "client": "1", "metric": "local_acc[local]", "value": "0.6"},
        {"round": "3", "client": "2", "metric": "train_loss", "value": "1.0"},
        {"round": "3", "client": "2", "metric": "local_acc[local]", "value": "0.8"},
        {"round": "4", "client": "2", "metric": "train_loss", "value": "1.0"},
        {"round": "4", "client": "2", "metric": "local_acc[local]", "value": "0.55"},
        {"round": "4", "client": "2", "metric": "local_bacc[local]", "value": "0.1"},  # another metric
        {"round": "5", "client": "0", "metric": "train_loss", "value": "1.0"},
        {"round": "5", "client": "0", "metric": "local_acc[local]", "value": "0.9"},
        {"round": "5", "client": "3", "metric": "train_loss", "value": "1.0"},  # trained, empty local test
        {"round": "5", "client": "3", "metric": "local_acc[local]", "value": "nan"},
    ]
    clients, _ = last_at_participation(rows)
    assert clients == {0: (5, 0.9), 1: (2, 0.6), 2: (4, 0.55)}
    stats = {
        "num_clients": 5,
        "clients": [{"client": c, "local_test": n} for c, n in enumerate([30, 40, 8, 0, 12])],
    }
    sizes = local_test_sizes_of(stats)
    assert sizes == {0: 30, 1: 40, 2: 8, 3: 0, 4: 12} and local_test_sizes_of(None) == {}
    assert participants_of(rows) == {0, 1, 2, 3}
    w = worst_client(clients, sizes, participants_of(rows), num_clients=5)
    # not client 0 (0.4 was an earlier round), not the last round's participants: client 2 at its round 4
    assert (w.client, w.value, w.round, w.local_test, w.covered, w.num_clients) == (2, 0.55, 4, 8, 4, 5)
    assert w.few  # 8 < 20 local test samples
    assert not worst_client({0: (1, 0.5)}, {0: 20}).few and worst_client({0: (1, 0.5)}).local_test is None
    assert worst_client({4: (1, 0.5), 1: (2, 0.5)}).client == 1  # ties: the lower id
    assert worst_client({}) is None and worst_client({0: (1, math.nan)}) is None
    run = rd("m", 1, {"last10_local_acc_worst_client": 3.0})
    run.clients, run.local_test_sizes = clients, sizes
    assert run_values(run)["worst_client_local_acc"] == pytest.approx(0.55)


def test_window_means_and_what_their_labels_say():
    pts = [(r, r / 100) for r in range(1, 13)] + [(13, math.nan)]
    wm = window_means(pts)
    assert wm.all_n == 12 and wm.all_mean == pytest.approx(0.065)  # mean of 1..12
    assert wm.last_n == 10 and wm.last_mean == pytest.approx(0.075)  # mean of 3..12
    short = window_means([(2, 0.1), (3, 0.3), (4, 0.2), (5, 0.6)])
    assert (short.all_n, short.last_n) == (4, 4) and short.all_mean == short.last_mean == pytest.approx(0.3)
    assert window_means([]).all_n == 0 and math.isnan(window_means([]).last_mean)
    assert window_label([12, 200]) == "last 10 rounds"
    assert window_label([4, 4]) == "last 4 rounds (all)" and window_label([1]) == "last 1 round (all)"
    assert window_label([4, 7]) == "last 4-7 rounds (all of each run)"
    assert window_label([4, 30]) == "last 10 rounds (all rounds of shorter runs: 4 in the shortest)"
    assert all_label([199, 199]) == "all 199 rounds" and all_label([12, 30]) == "all rounds (12-30 per run)"
    assert all_label([1]) == "its only round"
    # run_values: both windows of every forgetting metric from the curves; a logged last10_ is kept
    run = rd("m", 1, {"last10_global_nfr": 0.5}, global_nfr=pts, bwt=[(2, -0.1), (3, -0.3)])
    v = run_values(run)
    assert v["all_global_nfr"] == pytest.approx(0.065) and v["last10_global_nfr"] == 0.5
    assert v["all_bwt"] == v["last10_bwt"] == pytest.approx(-0.2)


def test_t_interval_is_the_formula_over_seeds():
    iv = t_interval([2.0, 3.0, 4.0])
    t975_2 = 4.302652729911275  # t_{0.975, 2}
    half = t975_2 * 1.0 / math.sqrt(3)  # s = 1
    assert (iv.mean, iv.n) == (pytest.approx(3.0), 3) and iv.std == pytest.approx(1.0)
    assert iv.lo == pytest.approx(3.0 - half) and iv.hi == pytest.approx(3.0 + half)  # [0.516, 5.484]
    assert iv.fmt(1) == "+3.0 [+0.5, +5.5]"
    two = t_interval([1.0, -1.0, math.nan])  # NaN is not a seed; t_{0.975, 1} = 12.706, s = sqrt(2)
    assert two.n == 2 and two.lo == pytest.approx(-12.7062047) and two.hi == pytest.approx(12.7062047)
    one = t_interval([1.5])
    assert (one.mean, one.lo, one.hi, one.n) == (1.5, None, None, 1) and "one seed: no interval" in one.fmt()
    assert t_interval([]).n == 0 and t_interval([]).fmt() == "-"
    # paired: only seeds both methods have
    assert paired_differences(
        {1: 0.8, 2: 0.82, 3: 0.84, 4: 0.9}, {1: 0.78, 2: 0.79, 3: 0.8, 5: 0.1}
    ) == pytest.approx({1: 0.02, 2: 0.03, 3: 0.04})


def test_verdicts_are_worded_from_the_interval():
    not_sup = gap_verdict(Interval(3.0, 0.52, 5.48, 3), 9.8)
    assert not_sup == (
        "not supported",
        "not supported: the interval [+0.5, +5.5] excludes the claimed +9.8 "
        "(FedKPer is ahead, by less than claimed)",
    )
    assert "FedKPer is behind" in gap_verdict(Interval(-3.0, -5.0, -1.0, 3), 9.8)[1]
    assert "contains 0" in gap_verdict(Interval(1.0, -2.0, 4.0, 3), 9.8)[1]
    status, text = gap_verdict(Interval(9.0, 7.0, 11.0, 3), 9.8)
    assert (
        status == "consistent"
        and text == "consistent with the claim: the interval [+7.0, +11.0] contains the claimed +9.8"
    )
    assert "also contains 0" in gap_verdict(Interval(5.0, -1.0, 11.0, 3), 9.8)[1]
    assert gap_verdict(Interval(12.0, 10.5, 13.5, 3), 9.8)[0] == "holds"  # only above the claimed gap
    assert gap_verdict(Interval(12.0, None, None, 1), 9.8) == (
        "not judged",
        "one seed: no interval (the difference is +12.0 points, the claim +9.8); more seeds are "
        "needed to judge it",
    )
    assert direction_verdict(Interval(2.0, 0.5, 3.5, 3)) == (
        "supported",
        "supported: the interval [+0.5, +3.5] lies above 0 (better)",
    )
    assert direction_verdict(Interval(-1.0, -2.0, -0.5, 3), higher_is_better=False)[0] == "supported"  # NFR
    assert direction_verdict(Interval(1.0, 0.5, 2.0, 3), higher_is_better=False)[0] == "contradicted"
    assert direction_verdict(Interval(-2.0, -3.0, -1.0, 3))[0] == "contradicted"
    assert (
        direction_verdict(Interval(0.0, -1.0, 1.0, 3))[1] == "not shown: the interval [-1.0, +1.0] contains 0"
    )
    assert direction_verdict(Interval(1.0, None, None, 1))[0] == "not judged"
    assert direction_verdict(t_interval([4.0, 4.0])) == (
        "supported",
        "supported: the interval [+4.0, +4.0] (zero width: every seed gave the same difference) lies "
        "above 0 (better)",
    )
    assert direction_verdict(Interval(math.nan, None, None, 0))[0] == "not judged"
    vals = {"a": {1: 0.5, 2: 0.9}, "b": {1: 0.7, 2: 0.9}, "c": {1: 0.6}}
    assert rank_per_seed(vals, "a") == {1: (3, 3), 2: (1, 2)}  # a tie shares the better rank
    assert rank_per_seed(vals, "a", higher_is_better=False) == {1: (1, 3), 2: (1, 2)}


def test_best_baseline_is_ranked_on_the_seeds_it_shares_with_fedkper():
    # b ran only the hard seed 2 (a diverged run elsewhere): its mean over seeds (0.59) is below a's (0.68),
    # but on the seed they share it trails FedKPer by 1 point against a's 2; c shares no seed: last
    vals = {
        "fedkper": {1: 0.80, 2: 0.60, 3: 0.70},
        "a": {1: 0.78, 2: 0.58, 3: 0.68},
        "b": {2: 0.59, 3: math.nan},
        "c": {4: 0.99},
    }
    assert ranked_others(vals, "fedkper") == ["b", "a", "c"]
    assert ranked_others(vals, "fedkper", higher_is_better=False) == ["a", "b", "c"]
    # with every seed present the paired order is the order of the means over seeds
    full = {"fedkper": {1: 0.8, 2: 0.6}, "a": {1: 0.7, 2: 0.5}, "b": {1: 0.9, 2: 0.2}}
    assert ranked_others(full, "fedkper") == ["a", "b"]
    # without values of the method itself: by each method's own mean
    assert ranked_others({"a": {1: 0.1}, "b": {2: 0.3}}, "fedkper") == ["b", "a"]
    # through the claims: a baseline with one finished seed is compared on that seed, not left out
    runs = _paper_runs()
    for r in [r for r in runs if r.method == "moon"]:
        if r.seed == 1:
            r.summary["last10_global_acc"] = 0.695
        else:
            runs.remove(r)
    gap = next(c for c in judge_claims(runs, [], "bloodmnist") if c.title.startswith("Global accuracy"))
    points = gap.comparisons[0]
    assert points.b == "moon" and points.why == "best baseline on the seeds shared with FedKPer"
    assert points.diffs == pytest.approx({1: 10.5}) and points.status == "not judged"


def _paper_runs(seeds=(1, 2, 3)):
    """fedkper, kd-only, agg-only, fedavg, moon with hand-set values per seed."""
    glob = {
        "fedkper": [0.80, 0.82, 0.84],
        "kd-only": [0.78, 0.79, 0.80],
        "agg-only": [0.72, 0.73, 0.75],
        "fedavg": [0.69, 0.70, 0.71],
        "moon": [0.60, 0.61, 0.62],
    }
    local = {
        "fedkper": [0.90, 0.90, 0.90],
        "kd-only": [0.93, 0.94, 0.95],
        "agg-only": [0.88, 0.89, 0.90],
        "fedavg": [0.91, 0.92, 0.93],
        "moon": [0.97, 0.97, 0.97],
    }
    worst = {
        "fedkper": [0.70, 0.72, 0.74],
        "kd-only": [0.60, 0.62, 0.61],
        "agg-only": [0.50, 0.50, 0.50],
        "fedavg": [0.55, 0.56, 0.57],
        "moon": [0.80, 0.85, 0.90],
    }
    nfr = {
        "fedkper": [0.02, 0.03, 0.02],
        "kd-only": [0.03, 0.03, 0.03],
        "agg-only": [0.05, 0.06, 0.05],
        "fedavg": [0.06, 0.06, 0.07],
        "moon": [0.10, 0.12, 0.11],
    }
    runs = []
    for m in glob:
        for i, s in enumerate(seeds):
            run = rd(
                m,
                s,
                {
                    "last10_global_acc": glob[m][i],
                    "final_global_acc": glob[m][i] + 0.01,
                    "last10_local_acc_mean": local[m][i],
                },
                global_nfr=[(r, nfr[m][i]) for r in range(2, 21)],
            )
            run.clients = {0: (3, worst[m][i] + 0.1), 1: (5, worst[m][i]), 2: (4, 0.99)}
            runs.append(run)
    return runs


def test_claims_are_judged_on_paired_differences_over_seeds():
    claims = {c.title.split(" (")[0]: c for c in judge_claims(_paper_runs(), [], "bloodmnist")}
    gap = claims["Global accuracy 9.8% above the next best method"]
    points, relative, final, final_relative = gap.comparisons
    # the next best *method*: the best baseline by its mean over seeds; kd-only (0.79 on average) and
    # agg-only are FedKPer's ablations, not methods
    assert (points.a, points.b) == ("fedkper", "fedavg") and final.b == final_relative.b == "fedavg"
    assert points.diffs == pytest.approx({1: 11.0, 2: 12.0, 3: 13.0}) and points.unit == "points"
    assert points.interval.lo == pytest.approx(12 - 4.302652729911275 / math.sqrt(3))
    assert points.status == "consistent" and "contains the claimed +9.8" in points.verdict
    # the same seeds read relative to FedAvg: 11/69, 12/70, 13/71 -> the interval lies above 9.8 %
    assert relative.unit == "%" and relative.diffs == pytest.approx(
        {1: 1100 / 69, 2: 1200 / 70, 3: 1300 / 71}
    )
    assert relative.status == "holds" and relative.verdict.endswith("lies above the claimed +9.8%")
    assert points.ranks == relative.ranks == {1: (1, 3), 2: (1, 3), 3: (1, 3)}  # among itself and baselines
    assert points.figure == "global accuracy, mean of the last 10 rounds, in points"
    assert relative.figure == "global accuracy, mean of the last 10 rounds, relative (%)"
    # worst client: moon is the best baseline, fedkper second in every seed, and above fedavg (second-best)
    w = claims["Best or second-best worst-client local accuracy"]
    best, second = w.comparisons
    assert (best.b, second.b) == ("moon", "fedavg")
    assert best.diffs == pytest.approx({1: -10.0, 2: -13.0, 3: -16.0}) and best.status == "contradicted"
    assert second.diffs == pytest.approx({1: 15.0, 2: 16.0, 3: 17.0}) and second.status == "supported"
    assert w.verdict.startswith(
        "holds: FedKPer is above the second-best baseline (fedavg), so at worst second"
    )
    assert "1: 2 of 3" in w.verdict
    # forgetting: NFR is lower (better) than FedAvg's, which is also the best baseline's (listed once), in
    # both windows
    f = claims["Better forgetting metrics"]
    by = {c.figure: c for c in f.comparisons}
    assert len(by) == len(f.comparisons) == 2
    vs_avg = by["global NFR, mean over all 19 rounds"]
    assert (
        vs_avg.b == "fedavg"
        and vs_avg.why == "FedAvg, also the best baseline on the seeds shared with FedKPer"
    )
    assert vs_avg.diffs == pytest.approx({1: -4.0, 2: -3.0, 3: -5.0}) and vs_avg.status == "supported"
    assert by["global NFR, mean over last 10 rounds"].b == "fedavg"
    assert f.verdict == "against FedAvg: supported 2; against the best baseline: supported 2"
    # a baseline that forgets less than FedAvg (MOON's NFR made 1 point) is compared with as well
    runs = _paper_runs()
    for r in runs:
        if r.method == "moon":
            r.curves["global_nfr"] = [(x, 0.01) for x, _ in r.curves["global_nfr"]]
    f2 = next(c for c in judge_claims(runs, [], "bloodmnist") if c.title.startswith("Better forgetting"))
    assert [(c.b, c.why) for c in f2.comparisons] == [
        ("fedavg", "FedAvg"),
        ("moon", "best baseline on the seeds shared with FedKPer"),
    ] * 2
    assert f2.verdict == "against FedAvg: supported 2; against the best baseline: not shown 2"
    # without the ablations' exclusion kd-only (NFR 0.03) would have been the best other method
    assert all(c.b not in ("kd-only", "agg-only") for c in f.comparisons)
    # ablations: KD-only raises local accuracy over FedAvg (+2 each seed); Agg-only raises global accuracy
    kd = claims["Ablation: KD-only improves local accuracy over FedAvg"]
    assert kd.comparisons[0].diffs == pytest.approx({1: 2.0, 2: 2.0, 3: 2.0}) and kd.verdict.startswith(
        "supported"
    )
    agg = claims["Ablation: Agg-only improves global accuracy over FedAvg"]
    assert agg.comparisons[0].diffs == pytest.approx({1: 3.0, 2: 3.0, 3: 4.0})
    bal = claims["Both together: the best balance of global and local accuracy"]
    assert bal.comparisons[0].b == "fedavg"
    # one seed: no interval, nothing judged; another dataset: the gap is judged against 0
    one = judge_claims(_paper_runs(seeds=(1,)), [], "bloodmnist")
    assert all(c.status == "not judged" for cl in one for c in cl.comparisons)
    assert "one seed: no interval (the difference is +11.0 points" in one[0].comparisons[0].verdict
    assert "(the difference is +15.9%, the claim +9.8%)" in one[0].comparisons[1].verdict
    ablations_only = [r for r in _paper_runs() if r.method in ("fedkper", "kd-only", "agg-only")]
    assert judge_claims(ablations_only, [], "bloodmnist")[0].verdict.startswith("not judged: no baseline")
    other = judge_claims(_paper_runs(), [], "organcmnist")[0]
    assert other.comparisons[0].status == "supported" and "not recorded here" in other.verdict
    assert judge_claims([r for r in _paper_runs() if r.method != "fedkper"], [], "bloodmnist") == []
    missing = {
        c.title: c
        for c in judge_claims([r for r in _paper_runs() if r.method != "kd-only"], [], "bloodmnist")
    }
    assert (
        missing["Ablation: KD-only improves local accuracy over FedAvg"].verdict
        == "not judged: no finished runs of kd-only"
    )


def test_the_time_axis_is_cpu_time_where_every_run_logged_it_in_its_own_process():
    """Two methods whose wall times are inflated by sharing the machine: CPU time decides the matched
    budget once every run has it to its last round, trained in its own process."""

    def run(method, seed, cpu_per_round, wall_per_round, rounds=10, backend="local", cpu_rounds=None):
        r = rd(
            method,
            seed,
            global_acc=[(i, 0.1 * i) for i in range(1, rounds + 1)],
            elapsed_s=[(i, wall_per_round * i) for i in range(1, rounds + 1)],
            cpu_s=[(i, cpu_per_round * i) for i in range(1, (cpu_rounds or rounds) + 1)],
        )
        r.last_round, r.params = rounds, {"execution.backend": backend}
        return r

    # 'a' costs 1 CPU s a round but ran beside other work (4 s of wall time a round); 'b' 2 CPU s, alone
    shown = {"a": [run("a", 1, 1.0, 4.0)], "b": [run("b", 1, 2.0, 2.0)]}
    assert clock_of(shown) is CPU
    budget, rows = matched_budget(shown, clock=CPU)
    assert budget == pytest.approx(10.0)  # a's 10 CPU s; on wall time it would be b's 20 s
    by = {r.method: r for r in rows}
    assert by["b"].rounds.mean == 5 and by["a"].rounds.mean == 10
    assert matched_budget(shown)[0] == pytest.approx(20.0)  # the wall clock, as before
    assert total_time(shown["a"][0], CPU) == pytest.approx(10.0)
    # any run without CPU time to its last round, or whose clients trained elsewhere: wall time for all
    for other in (
        run("c", 1, 1.0, 1.0, cpu_rounds=6),  # resumed from a checkpoint that did not carry CPU time
        run("c", 1, 1.0, 1.0, backend="ray"),  # CPU time of the server's process only
        rd("c", 1, global_acc=[(1, 0.5)], elapsed_s=[(1, 1.0)]),  # logged before CPU time existed
    ):
        assert clock_of({**shown, "c": [other]}) is WALL


def test_protocol_reads_old_and_new_local_test_params():
    old = {
        "data.dataset.name": "bloodmnist",
        "data.partition.name": "dirichlet",
        "data.partition.params.alpha": "0.1",
        "data.local_test_fraction": "0.2",
        "model.name": "cnn",
        "federation.selection.name": "uniform",
        "federation.rounds": "200",
        "federation.clients_per_round": "2",
        "data.num_clients": "20",
        "training.local_epochs": "5",
        "training.batch_size": "12",
        "training.optimizer.lr": "0.01",
        "training.optimizer.momentum": "0.9",
        "training.optimizer.nesterov": "False",
        "training.optimizer.weight_decay": "1e-05",
        "training.lr_schedule.gamma": "0.99",
        "training.lr_schedule.step_rounds": "1",
    }
    new = {
        **{k: v for k, v in old.items() if k != "data.local_test_fraction"},
        "data.local_test.rule": "stratified",
        "data.local_test.fraction": "0.2",
    }
    assert (
        protocol_of(old)
        == protocol_of(new)
        == {
            "dataset": "bloodmnist",
            "partition": "dirichlet (alpha=0.1)",
            "local test": "stratified (fraction=0.2)",
            "model": "cnn",
            "selection": "uniform",
            "training": "5 epochs, batch 12, lr 0.01, momentum 0.9, weight decay 1e-05, lr x0.99 every round",
            "federation": "200 rounds, 2 of 20 clients per round",
        }
    )
    sgd = protocol_of({**new, "training.optimizer.momentum": "0.0", "training.lr_schedule.gamma": "1.0"})
    assert sgd["training"] == "5 epochs, batch 12, lr 0.01, momentum 0.0, weight decay 1e-05"
    assert protocol_of({})["training"] == "?"  # a run that logged no training params
    equal = {**new, "data.local_test.rule": "per_class_equal"}
    assert protocol_of(equal)["local test"] == "per_class_equal (fraction=0.2)"
    assert protocol_of({})["local test"] == "?"
    runs = [rd("a", 1), rd("a", 2), rd("b", 1), rd("b", 2)]
    for r, params in zip(runs, (old, new, new, equal), strict=True):
        r.params = params
    protos = protocols(runs, ["a", "b"])
    assert [who for _, who in protos] == [{"a": [1, 2], "b": [1]}, {"b": [2]}]
    text = render_markdown(protocol_blocks(runs, ["a", "b"]))
    assert (
        "| bloodmnist | dirichlet (alpha=0.1) | stratified (fraction=0.2) | cnn | uniform | 5 epochs, "
        "batch 12, lr 0.01, momentum 0.9, weight decay 1e-05, lr x0.99 every round | 200 rounds, 2 of 20 "
        "clients per round | a (1, 2); b (1) |" in text
    )
    assert (
        "Warning: the methods of this comparison used 2 different protocols (they differ in: local test)"
        in text
    )
    assert "Warning" not in render_markdown(protocol_blocks(runs[:3], ["a", "b"]))


def test_settings_that_differ_between_runs_are_flagged_with_their_methods():
    base = {
        "data.dataset.name": "bloodmnist",
        "federation.clients_per_round": "2",
        "training.optimizer.lr": "0.01",
        "training.optimizer.momentum": "0.9",
        "training.lr_schedule.gamma": "0.99",
    }
    runs = [rd("fedavg", 1), rd("fedavg", 2), rd("scaffold-sgd", 1), rd("median", 1)]
    runs[0].params = runs[1].params = dict(base)
    runs[2].params = {**base, "training.optimizer.momentum": "0.0"}
    runs[3].params = {k: v for k, v in base.items() if k != "training.lr_schedule.gamma"}  # an older run
    runs[3].params["federation.clients_per_round"] = "5"
    same, differ = settings(runs)
    assert same["training.optimizer.lr"] == "0.01" and same["training.lr_schedule.gamma"] == "0.99"
    assert differ == {
        "federation.clients_per_round": {"fedavg": ["2"], "scaffold-sgd": ["2"], "median": ["5"]},
        "training.optimizer.momentum": {"fedavg": ["0.9"], "scaffold-sgd": ["0.0"], "median": ["0.9"]},
    }
    # methods in the spec's order, whatever order the runs started in (a sweep starts its longest first)
    _, differ = settings(runs, ["median", "scaffold-sgd", "fedavg"])
    assert list(differ["training.optimizer.momentum"]) == ["median", "scaffold-sgd", "fedavg"]


def test_trailing_mean_and_curves_over_seeds():
    assert trailing_mean([1, 2, 3, 4], window=2) == [1.0, 1.5, 2.5, 3.5]
    assert trailing_mean([4.0], window=10) == [4.0]
    seed1 = [(1, 0.2), (2, 0.4), (3, 0.6)]
    seed2 = [(1, 0.4), (2, 0.8)]  # a seed with fewer evaluated rounds
    pts = curve_over_seeds([seed1, seed2])
    assert [p[0] for p in pts] == [1, 2, 3]
    assert pts[0][1:4] == pytest.approx((0.3, 0.2, 0.4)) and pts[0][4] == 2
    assert pts[1][1:4] == pytest.approx((0.6, 0.4, 0.8))
    assert pts[2][1:4] == pytest.approx((0.6, 0.6, 0.6)) and pts[2][4] == 1
    smooth = curve_over_seeds([seed1, seed2], smooth=2)  # each seed smoothed before averaging
    assert smooth[1][1] == pytest.approx(((0.2 + 0.4) / 2 + (0.4 + 0.8) / 2) / 2)


def test_matched_budget_cuts_every_method_at_the_fastest_total_time():
    fast = [
        rd("fast", s, global_acc=[(1, 0.5), (2, 0.7)], elapsed_s=[(1, 5.0), (2, 10.0 + s)]) for s in (1, 2)
    ]
    # the slow method: 2 s per round, 10 rounds; accuracy 0.1 * round
    slow = [
        rd(
            "slow",
            1,
            global_acc=[(r, 0.1 * r) for r in range(1, 11)],
            elapsed_s=[(r, 2.0 * r) for r in range(1, 11)],
        )
    ]
    budget, rows = matched_budget({"fast": fast, "slow": slow})
    assert budget == pytest.approx(11.5)  # mean total time of 'fast' (11 s and 12 s), shorter than 20 s
    by = {r.method: r for r in rows}
    assert by["slow"].rounds.mean == 5  # rounds finished by 11.5 s: 2, 4, 6, 8, 10 s
    assert by["slow"].at_budget.mean == pytest.approx(0.5)
    assert by["slow"].last10_at_budget.mean == pytest.approx(0.3)  # mean of 0.1..0.5
    assert by["slow"].full_last10.mean == pytest.approx(0.55)
    assert by["slow"].total_time.mean == pytest.approx(20.0)
    # seed 1 of 'fast' finished by T (11 s), seed 2 (12 s) had only its first round
    assert by["fast"].rounds.mean == pytest.approx(1.5) and by["fast"].at_budget.mean == pytest.approx(0.6)
    assert within_budget([(1, 3.0)], [(1, 0.9)], budget=2.0)[0] == 0
    assert math.isnan(within_budget([(1, 3.0)], [(1, 0.9)], budget=2.0)[1])
    assert matched_budget({"fast": fast}, budget=5.0)[1][0].at_budget.mean == pytest.approx(0.5)


def test_markdown_and_html_render_the_same_blocks(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 3), "white").save(tmp_path / "p.png")
    blocks = [
        ("h", 1, "Report: x"),
        ("p", "a `code` <b> & b"),
        ("ul", ["one", "two"]),
        ("table", ["method", "v | w"], [["m1", "1.0 ± 0.1"]]),
        ("img", "p.png", "caption"),
    ]
    md = render_markdown(blocks)
    assert "# Report: x" in md and "| method | v \\| w |" in md and "| m1 | 1.0 ± 0.1 |" in md
    assert "![p.png](p.png)" in md and "- two" in md
    page = render_html(blocks, tmp_path)
    assert "<code>code</code> &lt;b&gt; &amp; b" in page and "<td>1.0 ± 0.1</td>" in page
    data = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1)
    assert base64.b64decode(data) == (tmp_path / "p.png").read_bytes()


# ---------------------------------------------------------------------------------------------------------
# The command on a hand-built store: two parents merged, incomplete and superseded runs, errors
# ---------------------------------------------------------------------------------------------------------


def _child(
    client,
    exp,
    parent,
    method,
    seed,
    accs,
    seconds_per_round,
    role="local",
    status="FINISHED",
    clients=None,
    tmp=None,
    dataset="toyset",
    params=None,
    stats=None,
    participants=(),
    extra=None,
):
    """A child run as 'fedreg run' logs it. ``extra``: more per-round metrics, key -> value per round (as
    runs logged them before a change, e.g. local_acc_worst_client)."""
    run = client.create_run(
        exp,
        run_name=f"{method}.seed{seed}",
        tags={
            "mlflow.parentRunId": parent,
            "fedreg.role": "child",
            "fedreg.variant": method,
            "fedreg.seed": str(seed),
            "fedreg.local_model_role": role,
            "fedreg.spec": "toy",
            "fedreg.dataset": dataset,
            "fedreg.version": "0.1.0",
            "mlflow.source.git.commit": "abc123",
        },
    )
    rid = run.info.run_id
    client.log_batch(
        rid,
        params=[
            Param(k, v)
            for k, v in {
                "data.num_clients": "4",
                "data.partition.name": "dirichlet",
                "data.partition.params.alpha": "0.1",
                "federation.clients_per_round": "2",
                "federation.rounds": str(len(accs)),
                **(params or {}),
            }.items()
        ],
    )
    hist = [
        {
            "round": r,
            "global_acc": a,
            "local_acc_mean": a + 0.1,
            "local_acc_worst": a - 0.1,
            "global_nfr": 0.05,
            "bwt": -0.01,
            "global_consistency": 0.9,
            "elapsed_s": seconds_per_round * r,
            **{k: v[r - 1] for k, v in (extra or {}).items()},
        }
        for r, a in enumerate(accs, 1)
    ]
    ts = int(time.time() * 1000)
    client.log_batch(
        rid, metrics=[Metric(k, v, ts, h["round"]) for h in hist for k, v in h.items() if k != "round"]
    )
    if status == "FINISHED":
        final = {**summarize(hist), "wall_time_s": seconds_per_round * len(accs)}
        client.log_batch(rid, metrics=[Metric(k, v, ts, len(accs)) for k, v in final.items()])
        path = tmp / f"{rid}" / "per_client.csv"
        path.parent.mkdir()
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["round", "client", "metric", "value"])
            for cid, r in participants:
                w.writerow([r, cid, "train_loss", 1.0])
            for cid, (r, v) in (clients or {}).items():
                w.writerow([r, cid, f"local_acc[{role}]", v])
        client.log_artifact(rid, str(path), "metrics")
        if stats is not None:
            (path.parent / "stats.json").write_text(json.dumps(stats))
            client.log_artifact(rid, str(path.parent / "stats.json"), "partition")
    client.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory, _store_template):
    """Two parents of one experiment (as two invocations of 'fedreg run' with different variants make), a
    run still RUNNING, a FAILED one, a re-run (the older of two runs of a method and seed), a single run."""
    tmp = tmp_path_factory.mktemp("store")
    shutil.copyfile(_store_template, tmp / "mlflow.db")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("toy", artifact_location=str(tmp / "artifacts"))
    tags = {"fedreg.role": "parent", "fedreg.spec": "toy", "fedreg.version": "0.1.0"}
    p1 = client.create_run(exp, run_name="toy", tags={**tags, "fedreg.variants": "alpha,beta"}).info.run_id
    p2 = client.create_run(exp, run_name="toy", tags={**tags, "fedreg.variants": "gamma"}).info.run_id
    ids = {}
    ids["beta.old"] = _child(
        client, exp, p1, "beta", 1, [0.1, 0.1, 0.1], 3.0, role="personal", clients={0: (1, 0.1)}, tmp=tmp
    )
    ids["alpha1"] = _child(
        client, exp, p1, "alpha", 1, [0.5, 0.6, 0.8], 1.0, clients={0: (1, 0.5), 2: (3, 0.9)}, tmp=tmp
    )
    ids["alpha2"] = _child(client, exp, p1, "alpha", 2, [0.6, 0.7, 0.9], 1.0, clients={1: (2, 0.7)}, tmp=tmp)
    ids["beta1"] = _child(
        client, exp, p1, "beta", 1, [0.3, 0.4, 0.5], 2.0, role="personal", clients={3: (3, 0.95)}, tmp=tmp
    )
    ids["gamma1"] = _child(client, exp, p2, "gamma", 1, [0.2, 0.3, 0.4], 4.0, clients={0: (2, 0.3)}, tmp=tmp)
    ids["gamma2.old"] = _child(client, exp, p2, "gamma", 2, [0.1], 4.0, status="FAILED")
    time.sleep(0.01)  # a later start
    ids["gamma2"] = _child(client, exp, p2, "gamma", 2, [0.2], 4.0, status="RUNNING")
    ids["beta2"] = _child(client, exp, p1, "beta", 2, [0.2, 0.3], 2.0, status="FAILED")
    client.set_tag(ids["beta2"], "fedreg.failure", "round 3: the data file   went missing " + "x" * 200)
    for p in (p1, p2):
        client.set_terminated(p, "FINISHED")
    single = client.create_run(exp, run_name="alone", tags={"fedreg.role": "single"}).info.run_id
    empty = client.create_experiment("empty")
    p3 = client.create_run(empty, run_name="toy", tags=tags).info.run_id
    _child(client, empty, p3, "alpha", 1, [0.5], 1.0, status="RUNNING")
    return {"uri": uri, "p1": p1, "p2": p2, "single": single, "ids": ids, "client": client}


def test_report_merges_parents_and_logs_to_each(toy_store, tmp_path, capsys):
    s = toy_store
    out = tmp_path / "rep"
    assert main(["report", s["p1"], s["p2"], "--tracking-uri", s["uri"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote report.md" in printed and "left out 2 incomplete run(s)" in printed
    md = (out / "report.md").read_text()
    table = md.split("## Results")[1].split("\n\n")[1]
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in table.splitlines()[2:]}
    assert list(lines) == ["alpha", "beta", "gamma"]  # the parents' variant order
    # alpha: final 0.8 and 0.9 -> 85.0 ± 7.1; last-10 means 0.6333 and 0.7333 -> 68.3 ± 7.1
    # worst client at last participation: seed 1 min(0.5, 0.9), seed 2 0.7 -> 60.0 ± 14.1
    assert (
        "| alpha | 2 (1, 2) | 85.0 ± 7.1 | 68.3 ± 7.1 | 78.3 ± 7.1 | 60.0 ± 14.1 | 5.00 ± 0.00 |"
        in lines["alpha"]
    )
    # beta: one finished seed (the FAILED seed 2 is left out, the older seed-1 run is superseded)
    assert "| beta | 1 (1) | 50.0 | 40.0 |" in lines["beta"]
    assert "| gamma | 1 (1) | 40.0 | 30.0 |" in lines["gamma"]
    incomplete = md.split("## Incomplete runs")[1]
    left_out = md.split("## Results")[1].split("\n## ")[0]  # beside the table: what it leaves out, and why
    assert "Not in this table, as they did not finish: beta seed 2 (round 3: the data file" in left_out
    assert "; gamma seed 2 (running, round 1). The section 'Incomplete runs' lists them." in left_out
    assert (
        "| gamma.seed2 | gamma | 2 | RUNNING | 1 | - |" in incomplete
        and "| beta.seed2 | beta | 2 | FAILED | 2 | round 3: the data file went missing xxx" in incomplete
    )
    assert "x" * 200 not in incomplete and "…" in incomplete  # a long reason is cut
    assert "beta.seed2 (FAILED, round 2; round 3: the data file went missing" in printed
    assert "superseded" in md and s["ids"]["beta.old"] in md
    # an unfinished run replaced by a later run of its method and seed is superseded, not incomplete
    assert f"gamma.seed2 (`{s['ids']['gamma2.old']}`, FAILED)" in md.split("superseded")[1]
    assert s["ids"]["gamma2.old"] not in incomplete
    assert "- the client's personal model (`personal`): beta" in md
    assert "- the client's trained copy of the global model (`local`): alpha, gamma" in md
    assert "2 of 4 clients per round" in md and "single round of a single seed decides nothing" in md
    assert "never" in md and "best-so-far" in md
    # matched budget: T = 3 s (alpha's total); gamma (4 s per round) had no round by then
    budget = md.split("Matched budget")[1]
    assert "T = 3 s" in budget and "| gamma | 12 | 0.0 | - | - | 30.0 |" in budget
    assert "| beta | 6 | 1.0 | 30.0 | 30.0 | 40.0 |" in budget
    # client level: values at the last participation, per run
    with (out / "clients.csv").open() as f:
        clients = {
            (r["method"], r["seed"], r["client"]): (r["last_round"], float(r["value"]))
            for r in csv.DictReader(f)
        }
    assert clients == {
        ("alpha", "1", "0"): ("1", 0.5),
        ("alpha", "1", "2"): ("3", 0.9),
        ("alpha", "2", "1"): ("2", 0.7),
        ("beta", "1", "3"): ("3", 0.95),
        ("gamma", "1", "0"): ("2", 0.3),
    }
    with (out / "summary.csv").open() as f:
        summary = {(r["method"], r["metric"]): r for r in csv.DictReader(f)}
    assert float(summary["alpha", "final_global_acc"]["mean"]) == pytest.approx(0.85)
    assert float(summary["alpha", "final_global_acc"]["std"]) == pytest.approx(math.sqrt(0.005))
    assert (
        summary["beta", "final_global_acc"]["std"] == "" and summary["beta", "final_global_acc"]["n"] == "1"
    )
    page = (out / "report.html").read_text()
    for name in PLOTS:
        assert (out / name).stat().st_size > 1000
        assert base64.b64encode((out / name).read_bytes()).decode() in page
    client = s["client"]
    for p in (s["p1"], s["p2"]):
        logged = {a.path for a in client.list_artifacts(p, "report")}
        assert {f"report/{n}" for n in ("report.md", "report.html", "summary.csv", *PLOTS)} <= logged


def test_report_of_an_experiment_and_time_methods(toy_store, tmp_path, monkeypatch):
    s = toy_store
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "report",
                "--experiment",
                "toy",
                "--tracking-uri",
                s["uri"],
                "--no-log",
                "--time-methods",
                "beta,gamma",
                "--no-progress",
            ]
        )
        == 0
    )
    out = tmp_path / "report-toy"
    md = (out / "report.md").read_text()
    assert "experiment: `toy`" in md and "| alpha | 2 (1, 2) |" in md
    budget = md.split("Matched budget")[1]
    assert "T = 6 s" in budget and "| alpha |" not in budget  # only the chosen methods, cut at beta's time
    assert "Methods shown (--time-methods): beta, gamma" in md


def test_report_of_the_paper_methods_has_worst_clients_windows_claims_and_protocols(
    toy_store, tmp_path, capsys
):
    """FedKPer and three other methods over two seeds, logged as runs from before and after data.local_test
    (one protocol either way), with partition statistics, participants and the old per-round
    local_acc_worst_client metric, which no output may show. (In the toy store: a new store costs seconds.)"""
    uri, client = toy_store["uri"], toy_store["client"]
    exp = client.create_experiment("paper", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(
        exp,
        run_name="paper",
        tags={
            "fedreg.role": "parent",
            "fedreg.spec": "toy",
            "fedreg.variants": "fedkper,kd-only,agg-only,fedavg",
        },
    ).info.run_id
    old = {
        "data.dataset.name": "bloodmnist",
        "data.local_test_fraction": "0.2",
        "model.name": "cnn",
        "federation.selection.name": "uniform",
    }
    new = {
        "data.dataset.name": "bloodmnist",
        "data.local_test.rule": "stratified",
        "data.local_test.fraction": "0.2",
        "model.name": "cnn",
        "federation.selection.name": "uniform",
    }
    stats = {
        "num_clients": 4,
        "clients": [{"client": c, "local_test": n} for c, n in enumerate([40, 5, 30, 25])],
    }
    base = {"fedkper": 0.80, "kd-only": 0.76, "agg-only": 0.70, "fedavg": 0.66}
    for seed, bump in ((1, 0.0), (2, 0.02)):
        for m, a in base.items():
            a += bump if m == "fedkper" else 0.0
            # client 1 (5 local test samples) is the worst; client 0's low value was an earlier participation
            clients = {0: (3, a + 0.1), 1: (2, a - 0.2), 2: (3, a + 0.15)}
            _child(
                client,
                exp,
                parent,
                m,
                seed,
                [a - 0.02, a, a + 0.02],
                1.0,
                clients=clients,
                tmp=tmp_path,
                dataset="bloodmnist",
                params=old if seed == 1 else new,
                stats=stats,
                participants=[(0, 1), (1, 2), (0, 3), (2, 3)],
                extra={"local_acc_worst_client": [1.0, 2.0, 3.0]},
            )
    client.set_terminated(parent, "FINISHED")
    assert (
        "last10_local_acc_worst_client"
        in client.search_runs([exp], "tags.fedreg.variant = 'fedavg'")[0].data.metrics
    )
    out = tmp_path / "rep"
    assert main(["report", parent, "--tracking-uri", uri, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "claims.csv" in printed
    results = md.split("## Results")[1].split("\n\n")[1]
    assert "worst-client local acc (at last participation) %" in results
    assert (
        "global acc, mean of the last 3 rounds (all) %" in results
        and "last-10" not in results.splitlines()[0]
    )
    # fedkper: worst client 1 at 0.6 (seed 1) and 0.62 (seed 2)
    assert "| fedkper | 2 (1, 2) | 83.0 ± 1.4 | 81.0 ± 1.4 | 91.0 ± 1.4 | 61.0 ± 1.4 |" in results
    worst = md.split("## Worst-client local accuracy")[1].split("\n## ")[0]
    assert (
        "| fedkper | 2 (1, 2) | 61.0 ± 1.4 | seed 1: client 1, 60.0% on 5 local test samples (few), round 2; "
        "seed 2: client 1, 62.0% on 5 local test samples (few), round 2 | 3/4, 3/4 | 71.0 ± 1.4 |"
    ) in worst
    assert "in 8 of 8 runs the worst client's local test holds fewer than 20 samples" in worst
    protocol = md.split("## Protocol")[1].split("\n## ")[0]
    assert (
        "| bloodmnist | dirichlet (alpha=0.1) | stratified (fraction=0.2) | cnn | uniform | ? | 3 rounds, "
        "2 of 4 clients per round | fedkper (1, 2); kd-only (1, 2); agg-only (1, 2); fedavg (1, 2) |"
    ) in protocol
    assert "Warning" not in md
    forgetting = md.split("## Forgetting")[1].split("\n## ")[0]
    assert "global NFR, all 3 rounds %" in forgetting and "global NFR, last 3 rounds (all) %" in forgetting
    claims = md.split("## The paper's claims, across seeds")[1].split("\n## ")[0]
    assert "### Global accuracy 9.8% above the next best method (bloodmnist)" in claims
    # the next best method is FedAvg, the one baseline (kd-only and agg-only are ablations): +14 and +16
    # points; t_{0.975,1} = 12.706, s = sqrt(2): +15.0 ± 12.7 -> [+2.3, +27.7]
    assert (
        "| fedkper − fedavg | best baseline on the seeds shared with FedKPer | points | "
        "1: +14.0 (rank 1 of 2), 2: +16.0 (rank 1 of 2) | "
        "+15.0 [+2.3, +27.7] | consistent with the claim: "
        "the interval [+2.3, +27.7] contains the claimed +9.8 |" in claims
    )
    # relative to FedAvg: 14/66 and 16/66 -> +21.2 % and +24.2 %
    assert "| % | 1: +21.2 (rank 1 of 2), 2: +24.2 (rank 1 of 2) | +22.7 [" in claims
    with (out / "claims.csv").open() as f:
        rows = list(csv.DictReader(f))
    first = rows[0]
    assert (first["method"], first["compared_with"], first["unit"], first["n"], first["status"]) == (
        "fedkper",
        "fedavg",
        "points",
        "2",
        "consistent",
    )
    assert float(first["ci95_low"]) == pytest.approx(15.0 - 12.706204736 * math.sqrt(2) / math.sqrt(2))
    assert rows[1]["unit"] == "%" and float(rows[1]["mean"]) == pytest.approx(100 * 15 / 66)
    with (out / "runs.csv").open() as f:
        runs = {(r["method"], r["seed"], r["metric"]): r["value"] for r in csv.DictReader(f)}
    assert (
        runs["fedavg", "1", "worst_client_id"] == "1"
        and runs["fedavg", "1", "worst_client_local_test_size"] == "5"
    )
    assert runs["fedavg", "2", "clients_covered"] == "3" and runs["fedavg", "2", "num_clients"] == "4"
    assert float(runs["fedavg", "1", "worst_client_local_acc"]) == pytest.approx(0.46)
    assert float(runs["fedavg", "1", "all_global_nfr"]) == pytest.approx(0.05)
    with (out / "clients.csv").open() as f:
        assert {r["client"]: r["local_test_size"] for r in csv.DictReader(f) if r["run_id"]} == {
            "0": "40",
            "1": "5",
            "2": "30",
        }
    for name in ("report.md", "report.html", "summary.csv", "runs.csv", "clients.csv", "claims.csv"):
        assert "local_acc_worst_client" not in (out / name).read_text(), name
    assert "report/claims.csv" in {a.path for a in client.list_artifacts(parent, "report")}


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "no MLflow run 'nope'"),
        (["{alpha1}"], "is a child run, not a parent; report on its parent: fedreg report {p1}"),
        (["{single}"], "has no child runs"),
        (["--experiment", "missing"], "no experiment 'missing'"),
        (
            ["--experiment", "empty"],
            "no finished child runs in experiment 'empty' yet (alpha.seed1: RUNNING, round 1)",
        ),
        (
            ["{p1}", "--time-methods", "zeta"],
            "--time-methods: no finished runs of zeta; the methods are: alpha, beta",
        ),
        (["{p1}", "--experiment", "toy"], "not both"),
        ([], "not both and not neither"),
    ],
)
def test_report_errors_name_the_problem_and_the_fix(toy_store, args, message, capsys):
    s = toy_store
    ids = {**s["ids"], "p1": s["p1"], "single": s["single"]}
    argv = ["report", *[a.format(**ids) for a in args], "--tracking-uri", s["uri"], "--no-log"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(**ids) in err and "Traceback" not in err


def test_report_refuses_a_store_that_is_not_there(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["report", "abc", "--tracking-uri", missing]) == 2
    assert "no MLflow tracking store at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()  # a report never creates a store
    assert main(["report", "abc", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "the server cannot be reached" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# The pipeline on real BloodMNIST: every variant of the paper spec, two seeds, then the report
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.slow
def test_paper_spec_then_report_on_real_bloodmnist(data_dir, tracking_uri, tmp_path, capsys):
    import yaml

    spec = REPO / "specs" / "paper" / "bloodmnist.yaml"
    variants = list(yaml.safe_load(spec.read_text())["variants"])
    assert len(variants) == 16  # the paper's 13 and three second readings
    # tiny scale: a tenth of the real data, 2 rounds (NFR and BwT need a previous round), 8 clients, batches
    # of 32, one thread, 2 child runs at once
    overrides = [
        "seeds=[1,2]",
        "data.subset=0.1",
        "federation.rounds=2",
        "training.local_epochs=1",
        "training.batch_size=32",
        "data.num_clients=8",
        "data.local_test.fraction=0.1",
        "federation.clients_per_round=2",
        "checkpoint.every=0",
        "execution.threads=1",
        f"tracking.uri={tracking_uri}",
        # the end-of-run head training of every client (10 epochs each, 16 clients) took most of the time
        "variants.fedper.method.params.final_head_epochs=1",
        "variants.fedrep.method.params.final_head_epochs=1",
        "variants.fedbabu.method.params.finetune_epochs=1",
    ]
    t0 = time.perf_counter()
    argv = ["run", str(spec), "--no-progress", "--jobs", "2"] + [x for o in overrides for x in ("--set", o)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    parent = re.search(r"parent run: ([0-9a-f]{32})", printed).group(1)
    client = MlflowClient(tracking_uri)
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert sorted((c.data.tags["fedreg.variant"], c.data.tags["fedreg.seed"]) for c in children) == sorted(
        (v, s) for v in variants for s in ("1", "2")
    )
    assert all(c.info.status == "FINISHED" for c in children)
    t_run = time.perf_counter() - t0

    out = tmp_path / "report"
    assert main(["report", parent, "--out", str(out), "--no-progress"]) == 0
    t_report = time.perf_counter() - t0 - t_run
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    table = md.split("## Results")[1].split("\n\n")[1]
    # 2 rounds: the 'last-10' columns say what they are (NFR, BwT and consistency have one round with a value)
    for header in (
        "global acc (final) %",
        "global acc, mean of the last 2 rounds (all) %",
        "local acc mean, mean of the last 2 rounds (all) %",
        "worst-client local acc (at last participation) %",
        "global NFR, mean of the last 1 round (all) %",
        "BwT, mean of the last 1 round (all) %",
        "global consistency, mean of the last 1 round (all) %",
        "end-of-run acc, all clients, mean %",
        "end-of-run acc, all clients, worst %",
        "wall time s",
    ):
        assert header in table.splitlines()[0] and header in page, header
    assert "last-10" not in table.splitlines()[0]
    headers = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == variants
    no_global = ("fedper", "fedrep", "local-only")  # their aggregated weights are not a model of the method
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert cells[1] == "2 (1, 2)", r
        for h, c in zip(headers[2:], cells[2:], strict=True):
            if cells[0] in no_global and ("global" in h or "BwT" in h):
                assert c == "-", (r, h)  # left out of the table and of every ranking
            else:
                assert re.fullmatch(r"-?\d+(\.\d+)? ± \d+(\.\d+)?", c), (r, h)  # every metric, 2 seeds
    assert "No global model: for fedper, fedrep, local-only" in md
    assert "End-of-run accuracy: after the last round, every client's own model" in md
    for v in variants:
        assert f"<td>{v}</td>" in page
    for note in (
        "never",
        "best-so-far",
        "single round of a single seed decides nothing",
        "fedreg.local_model_role",
        "at its last participation",
        "Matched budget",
        parent,
        tracking_uri,
        "generated:",
    ):
        assert note in md and (note in page or note.replace("`", "") in page), note
    assert "`personal`" in md and "`local`" in md
    # the worst client of every run, with its local test size from the run's partition statistics
    worst = md.split("## Worst-client local accuracy")[1].split("\n## ")[0]
    for v in variants:
        row = next(r for r in worst.splitlines() if r.startswith(f"| {v} |"))
        assert re.search(
            r"seed 1: client \d+, [\d.]+% on \d+ local test samples.*; seed 2: client \d+", row
        ), row
        assert re.search(r"\| \d+/8, \d+/8 \|", row), row  # covered clients of 8, per seed
    forgetting = md.split("## Forgetting")[1].split("\n## ")[0]
    assert "global NFR, its only round %" in forgetting and "global NFR, last 1 round (all) %" in forgetting
    assert "local_acc_worst_client" not in md and "local_acc_worst_client" not in page
    # one protocol for every method but MOON, whose official model adds a projection head (a model param),
    # and SCAFFOLD's plain-SGD reading (momentum 0): the report shows three protocols, with a warning naming
    # the model and the training; the claims judged over 2 seeds
    protocol = md.split("## Protocol")[1].split("\n## ")[0]
    rows = [r for r in protocol.splitlines() if r.startswith("| bloodmnist (subset=0.1) |")]
    assert len(rows) == 3 and "projection_dim=256" in rows[1] and rows[1].endswith("| moon (1, 2) |"), rows
    assert "projection_dim=0)" in rows[0] and "moon (1, 2)" not in rows[0], rows
    assert "; moon-fedntd (1, 2) |" in rows[0], rows  # the second reading of MOON: no projection head
    assert "momentum 0.9," in rows[0] and "momentum 0.0," in rows[2], rows
    assert rows[2].endswith("| scaffold-sgd (1, 2) |"), rows
    # SCAFFOLD's plain-SGD reading is the one variant whose optimizer differs: the header says so
    header = md.split("## Results")[0]
    assert "Warning: the runs differ in settings other than the method" in header
    momentum = next(x for x in header.splitlines() if x.startswith("- `training.optimizer.momentum`:"))
    assert momentum.startswith("- `training.optimizer.momentum`: 0.9 (fedkper, kd-only, "), momentum
    assert momentum.endswith(", moon-fedntd); 0.0 (scaffold-sgd)"), momentum
    assert "3 different protocols (they differ in: model, training)" in protocol
    # every run computed here, in worker processes of one thread: one environment, and no warning
    envs = md.split("## Environment")[1].split("\n## ")[0]
    rows = [r for r in envs.splitlines() if r.startswith("| torch ")]
    here = environment.summary({**environment.current(), "threads": "1"})
    assert len(rows) == 1 and rows[0].startswith(f"| {here} | fedkper (1, 2); "), rows
    assert "Warning" not in envs and "environments (see Environment)" not in header
    claims = md.split("## The paper's claims, across seeds")[1].split("\n## ")[0]
    assert "### Global accuracy 9.8% above the next best method (bloodmnist)" in claims
    with (out / "claims.csv").open() as f:
        judged = list(csv.DictReader(f))
    assert judged and all(r["n"] == "2" for r in judged)
    assert all(
        r["status"] in ("holds", "consistent", "not supported", "supported", "contradicted", "not shown")
        for r in judged
    )
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        assert f"![{name}]({name})" in md
        assert base64.b64encode(data).decode() in page, name
    assert page.count("data:image/png;base64,") == len(PLOTS)
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {
        f"report/{n}" for n in ("report.md", "report.html", "summary.csv", "claims.csv", *PLOTS)
    } <= logged
    print(f"13 variants x 2 seeds: run {t_run:.0f} s, report {t_report:.0f} s")


def test_a_method_without_a_finished_run_is_named_beside_the_results_table():
    """A method whose every run diverged has no row in the Results table; the paragraph under it names it,
    each run with the round its training loss went non-finite (the failure text is fedreg's own)."""
    failure = (
        "round 11: 0 of 2 clients succeeded, fewer than faults.min_clients=1. Failures: client 7: objective "
        "'scaffold' (plugin 'baselines', fedreg 0.1.0): loss raised NonFiniteLoss: loss is nan at step 24"
    )

    def failed(seed, tags):
        return RunData(
            f"r{seed}", "scaffold", seed, "FAILED", name=f"scaffold.seed{seed}", last_round=10, tags=tags
        )

    running = RunData("r9", "ditto", 1, "RUNNING", name="ditto.seed1", last_round=57)
    col = Collection(
        "sqlite://", [], [], [failed(1, {"fedreg.failure": failure}), failed(3, {}), running], [], ["fedavg"]
    )
    ((kind, text),) = not_in_table_blocks(col)
    assert kind == "p"
    assert text.startswith(
        "Not in this table, as they did not finish: scaffold seed 1 (diverged: non-finite training loss in "
        "round 11); scaffold seed 3 (failed, round 10); ditto seed 1 (running, round 57)."
    )
    assert "Without a finished run, none still running: scaffold." in text
    assert "No finished run yet, still running: ditto." in text
    assert not_in_table_blocks(Collection("sqlite://", [], [], [], [], ["fedavg"])) == []


def test_a_results_page_gets_the_report_between_its_markers(toy_store, tmp_path, capsys):
    s = toy_store
    page = tmp_path / "docs" / "results" / "toy.md"
    page.parent.mkdir(parents=True)
    mine = (
        "# Toy results\n\nWritten by hand.\n\n<!-- fedreg report: begin -->\nold report\n"
        "<!-- fedreg report: end -->\n\n## After\n"
    )
    page.write_text(mine)
    (page.parent / "toy").mkdir()
    (page.parent / "toy" / "old.png").write_bytes(b"x")  # a file an earlier report wrote
    argv = ["report", s["p1"], s["p2"], "--tracking-uri", s["uri"], "--no-log", "--no-progress"]
    for _ in range(2):  # a second report replaces the first, the hand-written parts stay
        assert main([*argv, "--out", str(tmp_path / "rep"), "--page", str(page)]) == 0
        text = page.read_text()
        assert text.startswith("# Toy results\n\nWritten by hand.\n\n<!-- fedreg report: begin -->\n")
        assert text.endswith("<!-- fedreg report: end -->\n\n## After\n")
        assert "old report" not in text and text.count("<!-- fedreg report: begin -->") == 1
    report_md = (tmp_path / "rep" / "report.md").read_text()
    assert report_md.startswith("# Report: toy") and "# Report" not in text  # the title is the page's
    assert "\n### Results\n" in text and "\n## Results\n" in report_md  # one level down
    assert "](toy/curves.png)" in text and (page.parent / "toy" / "curves.png").is_file()
    assert (page.parent / "toy" / "summary.csv").read_text() == (tmp_path / "rep" / "summary.csv").read_text()
    assert "not written by this report (delete them if stale): old.png" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "is not a file; create it"),
        ("# no markers\n", "0 begin and 0 end marker line(s)"),
        ("<!-- fedreg report: end -->\n<!-- fedreg report: begin -->\n", "begin first"),
    ],
)
def test_a_page_without_its_markers_is_refused_before_any_work(toy_store, tmp_path, capsys, content, message):
    page = tmp_path / "page.md"
    if content is not None:
        page.write_text(content)
    out = tmp_path / "rep"
    argv = ["report", toy_store["p1"], "--tracking-uri", toy_store["uri"], "--no-log", "--out", str(out)]
    assert main([*argv, "--page", str(page)]) == 2
    err = capsys.readouterr().err
    assert message in err and "<!-- fedreg report: begin -->" in err
    assert not out.exists()  # refused before reading a run
    assert content is None or page.read_text() == content  # the user's page is untouched
