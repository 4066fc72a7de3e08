"""End-to-end federations: real BloodMNIST, a real MLflow store, the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from fedreg import hookimpl
from fedreg.components import Objective
from fedreg.errors import PluginError
from fedreg.experiment import run_experiment
from fedreg.outputs import TIMING_KEYS, MetricNames
from fedreg.registry import build_registry, installed_figures
from fedreg.spec import resolve
from testhelpers import REPO, base_spec, child, make_medmnist_npz, write_spec

NAMES = MetricNames(installed_figures())

pytestmark = pytest.mark.slow


def artifacts(client, run_id, path=None):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


@pytest.mark.realdata
def test_fedavg_on_real_bloodmnist(data_dir, tracking_uri, registry):
    raw = base_spec()
    raw["data"]["subset"] = 0.25  # a quarter of the real splits: loading, logging, learning are the subject
    raw["metrics"] = ["global_accuracy", "local_accuracy", "global_on_local", "flips", "bwt"]
    (rs,) = resolve(raw, registry)
    res = run_experiment([rs], progress=False, echo=lambda *_: None)
    (r,) = res.results
    assert res.parent_run_id is None
    # 8 classes: chance is 0.125 and the majority class is under 0.21
    assert r.final["final_global_acc"] > 0.3, r.history

    client = MlflowClient(tracking_uri)
    run = client.get_run(r.run_id)
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["training.optimizer.lr"] == "0.05" and p["federation.aggregation.name"] == "fedavg"
    assert p["data.partition.params.alpha"] == "1.0" and p["metrics.4.name"] == "bwt"
    t = run.data.tags
    assert t["fedreg.objective"] == "cross_entropy" and t["fedreg.aggregation"] == "fedavg"
    assert t["fedreg.providers"].startswith("fedreg ") and "aggregation" in t["fedreg.providers"]
    assert t["fedreg.dataset.md5"] == "7053d0359d879ad8a5505303e11de1dc"
    hist = client.get_metric_history(r.run_id, "accuracy/global")
    assert [m.step for m in hist] == [1, 2, 3]
    for key in (
        "probabilities/global_loss",
        "accuracy/local_mean",
        "accuracy/local_worst",
        "global_on_local/acc_mean",
        "forgetting/nfr",
        "forgetting/bwt",
        "global acc final pct",  # the summaries, named for MLflow's runs table; 3 rounds: the mean of all 3
        "global acc all3 pct",
    ):
        assert key in run.data.metrics, key
    arts = set(artifacts(client, r.run_id))
    assert {
        "spec.yaml",
        "partition/stats.json",
        "partition/label_counts.csv",
        "partition/label_histogram.png",
        "metrics/per_client.csv",
        "metrics/history.json",
        "plots/curves.png",
        "model/global_weights.pt",
    } <= arts
    local = client.download_artifacts(r.run_id, "model/global_weights.pt")
    state = torch.load(local, weights_only=True)
    assert set(state) == {
        "conv1.0.weight",
        "conv1.0.bias",
        "conv2.0.weight",
        "conv2.0.bias",
        "fc1.1.weight",
        "fc1.1.bias",
        "fc.weight",
        "fc.bias",
    }


def test_same_spec_same_seed_identical_metrics(tmp_path, tracking_uri, registry):
    md5 = make_medmnist_npz(tmp_path, "organcmnist", n_train=400, n_test=120)
    raw = base_spec()
    raw["data"] = {
        "dataset": {"name": "organcmnist", "params": {"md5": md5}},
        "root": str(tmp_path),
        "num_clients": 5,
        "partition": {"name": "dirichlet", "params": {"alpha": 0.5, "min_samples": 5}},
    }
    raw["federation"]["rounds"] = 4
    raw["training"]["local_epochs"] = 3
    raw["metrics"] = ["global_accuracy", "local_accuracy", "flips"]
    raw["variants"] = {"a": {}, "b": {}}  # two identical variants in one invocation
    specs = resolve(raw, registry)
    one = run_experiment(specs, progress=False, echo=lambda *_: None)
    two = run_experiment(specs[:1], progress=False, echo=lambda *_: None)
    h = [
        [{k: v for k, v in x.items() if k not in TIMING_KEYS} for x in r.history]
        for r in one.results + two.results
    ]
    assert h[0] == h[1] == h[2]
    assert h[0][-1]["global_acc"] > 0.2  # 11 classes; the toy classes are learnable


class Exploding(Objective):
    name = "test_exploding"

    def loss(self, model, x, y, ctx):
        if ctx.round == 2:
            raise ValueError("bad batch")
        return torch.nn.functional.cross_entropy(model(x), y)


@hookimpl
def fedreg_register_objectives(register):
    register(Exploding)


def test_hook_raising_marks_run_failed_and_keeps_logs(tmp_path, tracking_uri):
    md5 = make_medmnist_npz(tmp_path, "organsmnist", n_train=200, n_test=50)
    reg = build_registry(extra_plugins=[("exploding_plugin", sys.modules[__name__])])
    raw = base_spec()
    raw["data"] = {
        "dataset": {"name": "organsmnist", "params": {"md5": md5}},
        "root": str(tmp_path),
        "num_clients": 3,
        "partition": "iid",
    }
    raw["training"]["objective"] = "test_exploding"
    (rs,) = resolve(raw, reg)
    with pytest.raises(
        PluginError,
        match=r"objective 'test_exploding' \(plugin 'exploding_plugin', [^)]*\): "
        r"loss raised ValueError: bad batch "
        r"\(round 2, client \d\)",
    ):
        run_experiment([rs], progress=False, echo=lambda *_: None)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy/global")] == [1]


def test_ctrl_c_marks_run_killed(tmp_path):
    md5 = make_medmnist_npz(tmp_path, "organamnist", n_train=400, n_test=50)
    raw = base_spec()
    raw["data"] = {
        "dataset": {"name": "organamnist", "params": {"md5": md5}},
        "root": str(tmp_path),
        "num_clients": 4,
        "partition": "iid",
    }
    raw["federation"]["rounds"] = 10_000
    spec = write_spec(tmp_path / "long.yaml", raw)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    client = MlflowClient(uri)
    # the child's SIGINT is at its default whatever this process inherited, and it is killed however the test
    # ends: a run of 10,000 rounds never outlives it
    with child(
        [sys.executable, "-m", "fedreg", "run", str(spec), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        deadline = time.time() + 120
        exp = None
        while time.time() < deadline and proc.poll() is None:
            time.sleep(1)
            exp = client.get_experiment_by_name("test") if (tmp_path / "mlflow.db").exists() else None
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and client.get_metric_history(runs[0].info.run_id, "accuracy/global"):
                break
        assert proc.poll() is None, proc.communicate()
        assert exp is not None, "no run was logged in 120 s"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "marked KILLED" in err
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "KILLED"


@pytest.mark.realdata
def test_fedkper_variants_under_one_parent_and_compare(data_dir, tracking_uri, registry, tmp_path):
    from fedreg.compare import columns, compare
    from fedreg.registry import installed_figures
    from fedreg.spec import load_spec

    specs = load_spec(
        REPO / "specs" / "fedkper-bloodmnist.yaml",
        registry,
        overrides=[
            "data.subset=0.2",  # a fifth of the real data: the variants' wiring is the subject, not accuracy
            "federation.rounds=3",
            "data.num_clients=6",
            "training.local_epochs=1",
            "training.batch_size=32",
            "data.partition.params.alpha=0.5",
        ],
    )
    assert [s.variant for s in specs] == ["fedkper", "kd-only", "agg-only", "fedavg"]
    res = run_experiment(specs, progress=False, echo=lambda *_: None)
    client = MlflowClient(tracking_uri)
    parent = client.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["fedreg.role"] == "parent"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{res.parent_run_id}'"
    )
    by_variant = {c.data.tags["fedreg.variant"]: c for c in children}
    assert set(by_variant) == {"fedkper", "kd-only", "agg-only", "fedavg"}
    expect = {
        "fedkper": ("adaptive_kd", "reliability_diversity"),
        "kd-only": ("adaptive_kd", "fedavg"),
        "agg-only": ("cross_entropy", "reliability_diversity"),
        "fedavg": ("cross_entropy", "fedavg"),
    }
    for v, (obj, agg) in expect.items():
        t = by_variant[v].data.tags
        assert (t["fedreg.objective"], t["fedreg.aggregation"]) == (obj, agg)
        m = NAMES.read_metrics(by_variant[v].data.metrics)
        for key in (
            "global_acc",
            "local_acc_mean",
            "local_acc_worst",
            "local_bacc_mean",
            "global_on_local_acc_mean",
            "global_nfr",
            "global_pfr",
            "global_consistency",
            "local_nfr",
            "bwt",
            "global_auc",  # from the class probabilities (the spec lists auc, ece, brier)
            "global_ece",
            "global_brier",
        ):
            assert key in m, (v, key)
        assert 0.5 < m["global_auc"] <= 1 and 0 <= m["global_ece"] <= 1 and 0 <= m["global_brier"] <= 2
    # every variant saw the same clients in every round (shared sampling stream)
    rows = {}
    for v, c in by_variant.items():
        path = client.download_artifacts(c.info.run_id, "metrics/per_client.csv")
        import csv

        with open(path) as f:
            rows[v] = sorted(
                {
                    (int(r["round"]), int(r["client"]))
                    for r in csv.DictReader(f)
                    if r["metric"] == "train_loss"
                }
            )
    assert rows["fedkper"] == rows["kd-only"] == rows["agg-only"] == rows["fedavg"]
    # the reliability-diversity aggregator's client reports are logged per client
    with open(client.download_artifacts(by_variant["fedkper"].info.run_id, "metrics/per_client.csv")) as f:
        assert "report.score" in f.read()

    printed = []
    assert compare(res.parent_run_id, echo=printed.append) == 0
    table = printed[0]
    assert table.splitlines()[0].split() == list(expect)  # the terminal table: one column per run
    cols = columns(installed_figures())
    assert [h for h, _ in cols][:4] == [  # the headline figures first, percentages in percent
        "global acc (final) %",
        "global acc (mean of last 10 rounds) %",
        "worst-client local acc (at last participation) %",
        "local acc mean (mean of last 10 rounds) %",
    ]
    logged = {k for c in by_variant.values() for k in NAMES.read_metrics(c.data.metrics)}
    for header, key in columns(installed_figures(), 3):  # the columns of what the metrics logged; 3 rounds
        shown = header if len(header) <= 52 else header[:51] + "~"  # a long label is cut to 52 characters
        assert (shown in table) == (key in logged), header
    assert "never best-so-far" in table and "'worst participant of the round'" in table
    arts = {a.path for a in client.list_artifacts(res.parent_run_id, "compare")}
    assert arts == {"compare/table.md", "compare/table.csv", "compare/curves.png", "compare/table.json"}
