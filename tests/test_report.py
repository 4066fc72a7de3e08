"""`fedreg report`: the statistics over seeds on hand-built inputs, the command on a hand-built MLflow store
(fast), and the whole pipeline on real BloodMNIST (every variant of the paper spec, two seeds)."""

from __future__ import annotations

import base64
import csv
import math
import re
import time

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from conftest import REPO
from fedreg.cli import main
from fedreg.report import (
    TABLE,
    RunData,
    Stat,
    aggregate,
    curve_over_seeds,
    last_at_participation,
    matched_budget,
    render_html,
    render_markdown,
    trailing_mean,
    within_budget,
)
from fedreg.runtime import summarize

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
    return RunData(run_id=f"{method}-{seed}", method=method, seed=seed, status="FINISHED", summary=summary or {},
                   tags={"fedreg.local_model_role": role}, curves=curves)


def test_aggregate_groups_by_method_in_the_given_order():
    runs = [rd("b", 1, {"final_global_acc": 0.6, "wall_time_s": 10.0}, role="personal"),
            rd("a", 2, {"final_global_acc": 0.7, "wall_time_s": 30.0}),
            rd("a", 1, {"final_global_acc": 0.5, "wall_time_s": 20.0}),
            rd("b", 2, {"final_global_acc": 0.8}, role="personal")]
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
    assert last_at_participation([{"round": 1, "client": 0, "metric": "train_loss", "value": 1.0}]) == ({}, None)


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
    fast = [rd("fast", s, global_acc=[(1, 0.5), (2, 0.7)], elapsed_s=[(1, 5.0), (2, 10.0 + s)]) for s in (1, 2)]
    # the slow method: 2 s per round, 10 rounds; accuracy 0.1 * round
    slow = [rd("slow", 1, global_acc=[(r, 0.1 * r) for r in range(1, 11)],
               elapsed_s=[(r, 2.0 * r) for r in range(1, 11)])]
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
    blocks = [("h", 1, "Report: x"), ("p", "a `code` <b> & b"), ("ul", ["one", "two"]),
              ("table", ["method", "v | w"], [["m1", "1.0 ± 0.1"]]), ("img", "p.png", "caption")]
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


def _child(client, exp, parent, method, seed, accs, seconds_per_round, role="local", status="FINISHED",
           clients=None, tmp=None):
    run = client.create_run(exp, run_name=f"{method}.seed{seed}", tags={
        "mlflow.parentRunId": parent, "fedreg.role": "child", "fedreg.variant": method, "fedreg.seed": str(seed),
        "fedreg.local_model_role": role, "fedreg.spec": "toy", "fedreg.dataset": "toyset",
        "fedreg.version": "0.1.0", "mlflow.source.git.commit": "abc123"})
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, v) for k, v in {
        "data.num_clients": "4", "data.partition.name": "dirichlet", "data.partition.params.alpha": "0.1",
        "federation.clients_per_round": "2", "federation.rounds": str(len(accs))}.items()])
    hist = [{"round": r, "global_acc": a, "local_acc_mean": a + 0.1, "local_acc_worst": a - 0.1,
             "global_nfr": 0.05, "bwt": -0.01, "global_consistency": 0.9, "elapsed_s": seconds_per_round * r}
            for r, a in enumerate(accs, 1)]
    ts = int(time.time() * 1000)
    client.log_batch(rid, metrics=[Metric(k, v, ts, h["round"]) for h in hist for k, v in h.items() if k != "round"])
    if status == "FINISHED":
        final = {**summarize(hist), "wall_time_s": seconds_per_round * len(accs)}
        client.log_batch(rid, metrics=[Metric(k, v, ts, len(accs)) for k, v in final.items()])
        path = tmp / f"{rid}" / "per_client.csv"
        path.parent.mkdir()
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["round", "client", "metric", "value"])
            for cid, (r, v) in (clients or {}).items():
                w.writerow([r, cid, f"local_acc[{role}]", v])
        client.log_artifact(rid, str(path), "metrics")
    client.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    """Two parents of one experiment (as two invocations of 'fedreg run' with different variants make), a
    run still RUNNING, a FAILED one, a re-run (the older of two runs of a method and seed), a single run."""
    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("toy", artifact_location=str(tmp / "artifacts"))
    tags = {"fedreg.role": "parent", "fedreg.spec": "toy", "fedreg.version": "0.1.0"}
    p1 = client.create_run(exp, run_name="toy", tags={**tags, "fedreg.variants": "alpha,beta"}).info.run_id
    p2 = client.create_run(exp, run_name="toy", tags={**tags, "fedreg.variants": "gamma"}).info.run_id
    ids = {}
    ids["beta.old"] = _child(client, exp, p1, "beta", 1, [0.1, 0.1, 0.1], 3.0, role="personal",
                             clients={0: (1, 0.1)}, tmp=tmp)
    ids["alpha1"] = _child(client, exp, p1, "alpha", 1, [0.5, 0.6, 0.8], 1.0, clients={0: (1, 0.5), 2: (3, 0.9)},
                           tmp=tmp)
    ids["alpha2"] = _child(client, exp, p1, "alpha", 2, [0.6, 0.7, 0.9], 1.0, clients={1: (2, 0.7)}, tmp=tmp)
    ids["beta1"] = _child(client, exp, p1, "beta", 1, [0.3, 0.4, 0.5], 2.0, role="personal",
                          clients={3: (3, 0.95)}, tmp=tmp)
    ids["gamma1"] = _child(client, exp, p2, "gamma", 1, [0.2, 0.3, 0.4], 4.0, clients={0: (2, 0.3)}, tmp=tmp)
    ids["gamma2"] = _child(client, exp, p2, "gamma", 2, [0.2], 4.0, status="RUNNING")
    ids["beta2"] = _child(client, exp, p1, "beta", 2, [0.2, 0.3], 2.0, status="FAILED")
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
    assert "| alpha | 2 (1, 2) | 85.0 ± 7.1 | 68.3 ± 7.1 | 78.3 ± 7.1 | 58.3 ± 7.1 | 5.00 ± 0.00 |" in lines["alpha"]
    # beta: one finished seed (the FAILED seed 2 is left out, the older seed-1 run is superseded)
    assert "| beta | 1 (1) | 50.0 | 40.0 |" in lines["beta"]
    assert "| gamma | 1 (1) | 40.0 | 30.0 |" in lines["gamma"]
    incomplete = md.split("## Incomplete runs")[1]
    assert "| gamma.seed2 | gamma | 2 | RUNNING | 1 |" in incomplete and "| beta.seed2 | beta | 2 | FAILED | 2 |" in incomplete
    assert "superseded" in md and s["ids"]["beta.old"] in md
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
        clients = {(r["method"], r["seed"], r["client"]): (r["last_round"], float(r["value"]))
                   for r in csv.DictReader(f)}
    assert clients == {("alpha", "1", "0"): ("1", 0.5), ("alpha", "1", "2"): ("3", 0.9),
                       ("alpha", "2", "1"): ("2", 0.7), ("beta", "1", "3"): ("3", 0.95),
                       ("gamma", "1", "0"): ("2", 0.3)}
    with (out / "summary.csv").open() as f:
        summary = {(r["method"], r["metric"]): r for r in csv.DictReader(f)}
    assert float(summary["alpha", "final_global_acc"]["mean"]) == pytest.approx(0.85)
    assert float(summary["alpha", "final_global_acc"]["std"]) == pytest.approx(math.sqrt(0.005))
    assert summary["beta", "final_global_acc"]["std"] == "" and summary["beta", "final_global_acc"]["n"] == "1"
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
    assert main(["report", "--experiment", "toy", "--tracking-uri", s["uri"], "--no-log",
                 "--time-methods", "beta,gamma", "--no-progress"]) == 0
    out = tmp_path / "report-toy"
    md = (out / "report.md").read_text()
    assert "experiment: `toy`" in md and "| alpha | 2 (1, 2) |" in md
    budget = md.split("Matched budget")[1]
    assert "T = 6 s" in budget and "| alpha |" not in budget  # only the chosen methods, cut at beta's time
    assert "Methods shown (--time-methods): beta, gamma" in md


@pytest.mark.parametrize("args, message", [
    (["nope"], "no MLflow run 'nope'"),
    (["{alpha1}"], "is a child run, not a parent; report on its parent: fedreg report {p1}"),
    (["{single}"], "has no child runs"),
    (["--experiment", "missing"], "no experiment 'missing'"),
    (["--experiment", "empty"], "no finished child runs in experiment 'empty' yet (alpha.seed1: RUNNING, round 1)"),
    (["{p1}", "--time-methods", "zeta"], "--time-methods: no finished runs of zeta; the methods are: alpha, beta"),
    (["{p1}", "--experiment", "toy"], "not both"),
    ([], "not both and not neither"),
])
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
    assert len(variants) == 13
    # tiny scale: 2 rounds (NFR and BwT need a previous round), 40 small clients, one thread
    overrides = ["seeds=[1,2]", "federation.rounds=2", "training.local_epochs=1", "data.num_clients=40",
                 "data.local_test_fraction=0.1", "federation.clients_per_round=2", "checkpoint.every=0",
                 "execution.threads=1", f"tracking.uri={tracking_uri}"]
    t0 = time.perf_counter()
    argv = ["run", str(spec), "--no-progress"] + [x for o in overrides for x in ("--set", o)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    parent = re.search(r"parent run: ([0-9a-f]{32})", printed).group(1)
    client = MlflowClient(tracking_uri)
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted((c.data.tags["fedreg.variant"], c.data.tags["fedreg.seed"]) for c in children) == \
        sorted((v, s) for v in variants for s in ("1", "2"))
    assert all(c.info.status == "FINISHED" for c in children)
    t_run = time.perf_counter() - t0

    out = tmp_path / "report"
    assert main(["report", parent, "--out", str(out), "--no-progress"]) == 0
    t_report = time.perf_counter() - t0 - t_run
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    table = md.split("## Results")[1].split("\n\n")[1]
    for header, _, _, _ in TABLE:
        assert header in table and header in page
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == variants
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert cells[1] == "2 (1, 2)", r
        assert all(re.fullmatch(r"-?\d+(\.\d+)? ± \d+(\.\d+)?", c) for c in cells[2:]), r  # every metric, 2 seeds
    for v in variants:
        assert f"<td>{v}</td>" in page
    for note in ("never", "best-so-far", "single round of a single seed decides nothing", "fedreg.local_model_role",
                 "at its last participation", "Matched budget", parent, tracking_uri, "generated:"):
        assert note in md and (note in page or note.replace("`", "") in page), note
    assert "`personal`" in md and "`local`" in md
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        assert f"![{name}]({name})" in md
        assert base64.b64encode(data).decode() in page, name
    assert page.count("data:image/png;base64,") == len(PLOTS)
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {f"report/{n}" for n in ("report.md", "report.html", "summary.csv", *PLOTS)} <= logged
    print(f"13 variants x 2 seeds: run {t_run:.0f} s, report {t_report:.0f} s")
