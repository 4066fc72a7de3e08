"""Sweeps: child runs in worker processes and on Ray give the metrics they give alone or one after another;
a parameter grid names, tags and validates its child runs and the report plots the sensitivity; a failed or
killed child fails alone and is resumable; concurrent writers lose nothing in one SQLite store. Real CLI, real
MLflow store, real worker processes, a real local Ray."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import AbstractContextManager

import pytest
from mlflow.tracking import MlflowClient

from fedreg.cli import main
from fedreg.errors import FedregError
from fedreg.outputs import RUN_TIMES, TIMING_KEYS, TRAIN_LOSS, MetricNames
from fedreg.pools import check_cluster_store, local_store
from fedreg.progress import SweepProgress
from fedreg.registry import installed_figures
from fedreg.tracking import Tracker
from fedreg_report.runs import read_run, why_incomplete
from testhelpers import child, deadline, run_child, small_medmnist_spec, write_spec

NAMES = MetricNames(installed_figures())  # how keys are named in MLflow


@pytest.fixture
def env(tmp_path, tracking_uri):
    """A small MedMNIST-format file, a spec on it (one intra-op thread, checkpoints in tmp) and the store."""
    raw, _ = small_medmnist_spec(tmp_path, n_train=240, n_test=60)
    raw["execution"] = {"threads": 1}
    raw["checkpoint"] = {"dir": str(tmp_path / "ck"), "every": 1}
    raw["federation"]["rounds"] = 3
    raw["metrics"] = ["global_accuracy", "flips"]
    return tmp_path, raw, tracking_uri


def children(uri: str) -> dict[str, object]:
    """The child runs of the store's latest parent run, by run name."""
    client = MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], order_by=["attributes.start_time DESC"]
    )
    parent = next(r for r in runs if r.data.tags.get("fedreg.role") == "parent")
    return {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}


def metrics_of(uri: str, run) -> dict[str, list[tuple[int, float]]]:
    """Every metric history of a run except wall-clock timings."""
    client = MlflowClient(uri)
    out = {}
    for key in run.data.metrics:
        if NAMES.key_of(key) in (*TIMING_KEYS, *RUN_TIMES):
            continue
        out[key] = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
    return out


def same(a: dict, b: dict) -> bool:
    """Equal histories, NaN equal to NaN (bit for bit otherwise)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        if len(a[k]) != len(b[k]):
            return False
        for (s1, v1), (s2, v2) in zip(a[k], b[k], strict=True):
            if s1 != s2 or not (v1 == v2 or (math.isnan(v1) and math.isnan(v2))):
                return False
    return True


def sweep_spec(raw: dict) -> dict:
    raw = dict(raw)
    raw["seeds"] = [0, 1]
    raw["variants"] = {
        "fedavg": {},
        "fedprox": {"training.objective": {"name": "fedprox", "params": {"mu": 0.01}}},
    }
    return raw


def test_child_metrics_identical_alone_sequential_in_processes_and_on_ray(env, capsys, new_store):
    tmp, raw, _ = env
    spec = write_spec(tmp / "sweep.yaml", sweep_spec(raw))
    logged: dict[str, dict[str, dict]] = {}
    for how, extra in [
        ("sequential", []),
        ("processes", ["--jobs", "2"]),
        ("ray", ["--sweep", "ray", "--jobs", "2"]),
    ]:
        uri = new_store(tmp / f"{how}.db")
        assert main(["run", str(spec), "--no-progress", "--set", f"tracking.uri={uri}", *extra]) == 0, how
        kids = children(uri)
        assert sorted(kids) == ["fedavg.seed0", "fedavg.seed1", "fedprox.seed0", "fedprox.seed1"], how
        assert all(r.info.status == "FINISHED" for r in kids.values()), how
        logged[how] = {name: metrics_of(uri, r) for name, r in kids.items()}
        # what a sequential sweep writes: params, the resolved spec and the partition
        for r in kids.values():
            assert r.data.params["federation.rounds"] == "3"
            arts = {a.path for a in MlflowClient(uri).list_artifacts(r.info.run_id)}
            assert "spec.yaml" in arts, (how, arts)
    out = capsys.readouterr().out
    assert re.search(r"fedprox\.seed1: started \(pid \d+\)", out)  # worker processes
    assert "started (Ray task)" in out
    # one child alone
    uri = new_store(tmp / "alone.db")
    assert (
        main(["run", str(spec), "--no-progress", "--variant", "fedprox", "--set", f"tracking.uri={uri}"]) == 0
    )
    alone = {name: metrics_of(uri, r) for name, r in children(uri).items()}
    assert len(logged["sequential"]["fedavg.seed0"]) >= 5  # several metric keys compared
    for how in ("processes", "ray"):
        for name, hist in logged["sequential"].items():
            assert same(hist, logged[how][name]), (how, name)
    for name in ("fedprox.seed0", "fedprox.seed1"):
        assert same(alone[name], logged["sequential"][name]), name


def test_grid_2x2_two_seeds_names_tags_params_and_report_sensitivity(env, capsys):
    tmp, raw, uri = env
    raw["federation"]["rounds"] = 2
    raw["seeds"] = [0, 1]
    raw["grid"] = {"training.optimizer.lr": [0.01, 0.05], "training.local_epochs": [1, 2]}
    spec = write_spec(tmp / "grid.yaml", raw)
    assert main(["run", str(spec), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    kids = children(uri)
    expected = {f"t.lr={lr}.local_epochs={e}.seed{s}" for lr in (0.01, 0.05) for e in (1, 2) for s in (0, 1)}
    assert set(kids) == expected
    for name, r in kids.items():
        lr, epochs = re.match(r"t\.lr=([\d.]+)\.local_epochs=(\d)\.seed\d", name).groups()
        tags, params = r.data.tags, r.data.params
        assert json.loads(tags["fedreg.grid"]) == {
            "training.optimizer.lr": float(lr),
            "training.local_epochs": int(epochs),
        }
        assert tags["fedreg.grid.training.optimizer.lr"] == lr
        assert params["training.optimizer.lr"] == lr and params["training.local_epochs"] == epochs
        assert r.info.status == "FINISHED"
    # longest expected first: the two-epoch children start before the one-epoch ones
    started = re.findall(r"^(\S+): started", out, re.M)
    assert all("local_epochs=2" in s for s in started[:4]), started
    assert "sweep: 8/8 done" in out

    parent = next(iter(kids.values())).data.tags["mlflow.parentRunId"]
    assert main(["report", parent, "--out", str(tmp / "rep"), "--no-log"]) == 0
    md = (tmp / "rep" / "report.md").read_text()
    assert "## Sensitivity" in md and "`training.optimizer.lr`" in md and "`training.local_epochs`" in md
    for f in ("sensitivity_training.optimizer.lr.png", "sensitivity_training.local_epochs.png"):
        assert (tmp / "rep" / f).stat().st_size > 10_000
    rows = (tmp / "rep" / "sensitivity.csv").read_text().splitlines()
    assert rows[0] == "parameter,series,value,metric,mean,std,n"
    # per parameter: 2 series (the other parameter's values) x 2 values x figures, each over 2 seeds
    lr_rows = [r.split(",") for r in rows[1:] if r.startswith("training.optimizer.lr,")]
    assert {r[1] for r in lr_rows} == {"t local_epochs=1", "t local_epochs=2"}
    assert {r[2] for r in lr_rows} == {"0.01", "0.05"}
    assert all(r[-1] == "2" for r in lr_rows)
    # the table row's mean is the mean over the two seeds' final accuracies
    client = MlflowClient(uri)
    finals = [  # fractions (MLflow holds the summaries in percent, rounded to 2 decimals)
        NAMES.read_metrics(client.get_run(kids[f"t.lr=0.05.local_epochs=2.seed{s}"].info.run_id).data.metrics)
        for s in (0, 1)
    ]
    key = "final_global_acc"
    row = next(
        r for r in lr_rows if r[1] == "t local_epochs=2" and r[2] == "0.05" and r[3] == "final_global_acc"
    )
    assert float(row[4]) == pytest.approx((finals[0][key] + finals[1][key]) / 2, abs=1e-4)


def test_every_grid_point_is_validated_before_anything_runs(env, capsys):
    tmp, raw, uri = env
    raw["variants"] = {"a": {}, "b": {"training.local_epochs": 2}}
    raw["grid"] = {
        "variants": ["a", "zz"],
        "params": {"training.optimizer.lr": [0.01, -1.0], "training.batch_size": [16, 0]},
    }
    spec = write_spec(tmp / "bad.yaml", raw)
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "grid.variants.1: unknown variant 'zz'" in err
    assert "variants.a[lr=-1.0.batch_size=16].training.optimizer.lr" in err
    assert "variants.a[lr=0.01.batch_size=0].training.batch_size" in err
    assert "variants.a[lr=-1.0.batch_size=0].training.batch_size" in err
    assert "Traceback" not in err
    assert not (tmp / "ck").exists()
    assert not MlflowClient(uri).search_experiments(filter_string="name = 'test'")
    # paths a grid may not vary, and mappings as values
    raw["grid"] = {"seed": [1, 2], "training.optimizer": [{"lr": 1}]}
    write_spec(spec, raw)
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "a grid cannot vary 'seed'" in err and "grid values must be single values" in err


def test_a_failed_child_fails_alone(env, capsys):
    """A diverging child with faults.divergence: stop fails; the others finish; exit 1 lists it; sequential
    sweeps behave the same as parallel ones."""
    tmp, raw, uri = env
    raw["variants"] = {
        "ok": {},
        "diverges": {"training.optimizer.lr": 1.0e12, "faults.divergence": "stop"},
        "ok2": {"training.local_epochs": 2},
    }
    spec = write_spec(tmp / "fail.yaml", raw)
    for extra in ([], ["--jobs", "2"]):
        assert main(["run", str(spec), "--no-progress", *extra]) == 1, extra
        err = capsys.readouterr().err
        assert "1 of 3 child runs failed" in err and "  - diverges:" in err, err
        kids = children(uri)
        assert {n: r.info.status for n, r in kids.items()} == {
            "ok": "FINISHED",
            "diverges": "FAILED",
            "ok2": "FINISHED",
        }
        assert kids["diverges"].data.tags["fedreg.failure"]
        # the report names the cause of a diverged run
        diverged = read_run(MlflowClient(uri), kids["diverges"], details=False)
        assert why_incomplete(diverged) == "diverged: non-finite training loss in round 1"
        parent = MlflowClient(uri).get_run(kids["ok"].data.tags["mlflow.parentRunId"])
        assert parent.info.status == "FAILED"


def start_parallel_sweep(tmp, spec) -> AbstractContextManager[subprocess.Popen]:
    """``with start_parallel_sweep(tmp, spec) as proc:`` ``fedreg run SPEC --jobs 2 --no-progress`` in a
    subprocess, its output read line by line; when the block ends, the process and its workers are killed
    (:func:`testhelpers.child`)."""
    return child(
        [sys.executable, "-m", "fedreg", "run", str(spec), "--jobs", "2", "--no-progress"],
        cwd=tmp,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_a_killed_worker_ends_its_child_only_and_resume_jobs_continues_it(env):
    tmp, raw, uri = env
    raw["federation"]["rounds"] = 25
    raw["variants"] = {"a": {}, "b": {"training.optimizer.lr": 0.02}, "c": {"training.optimizer.lr": 0.03}}
    spec = write_spec(tmp / "kill.yaml", raw)
    lines = []
    with start_parallel_sweep(tmp, spec) as proc:
        pid = None
        while pid is None:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
            if m := re.match(r"b: started \(pid (\d+)\)", line):
                pid = int(m.group(1))
        ck = tmp / "ck"
        deadline = time.monotonic() + 240
        while not list(ck.rglob("b.pt")) and time.monotonic() < deadline:  # after its first checkpoint
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    out = "".join(lines) + out
    assert proc.returncode == 1, err
    assert "b: FAILED: its worker process" in out and "SIGKILL" in out
    assert "1 of 3 child runs failed" in err and "--jobs 2" in err
    kids = children(uri)
    assert {n: r.info.status for n, r in kids.items()} == {"a": "FINISHED", "b": "FAILED", "c": "FINISHED"}
    killed_id = kids["b"].info.run_id

    resumed = run_child(
        [sys.executable, "-m", "fedreg", "run", str(spec), "--resume", "--jobs", "2", "--no-progress"],
        600,
        cwd=tmp,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "a: finished before, kept as it is" in resumed.stdout
    assert f"b: resuming run {killed_id}" in resumed.stdout
    kids = children(uri)
    assert {n: r.info.status for n, r in kids.items()} == {"a": "FINISHED", "b": "FINISHED", "c": "FINISHED"}
    steps = [m.step for m in MlflowClient(uri).get_metric_history(killed_id, NAMES.name(TRAIN_LOSS))]
    assert sorted(steps) == list(range(1, 26))  # each step logged once


def _writer(uri: str, run_id: str, n: int, worker: int) -> None:
    tracker = Tracker(uri, "test", spool_dir=f"spool{worker}")
    for step in range(1, n + 1):
        tracker.log_metrics(run_id, {f"m{j}": step * 10 + j for j in range(8)}, step)
        if step % 25 == 0:
            tracker.set_tags(run_id, {f"tag{step}": str(worker)})
    tracker.log_params(run_id, {f"p{j}": str(worker) for j in range(50)})
    assert tracker.close() is None  # everything delivered


def test_four_concurrent_writers_lose_nothing_in_one_sqlite_store(tmp_path, tracking_uri):
    tracker = Tracker(tracking_uri, "test")  # the parent creates the store, as fedreg run does
    runs = [tracker.start_run(f"w{i}", {}) for i in range(4)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tracking_uri, r, 150, i)) for i, r in enumerate(runs)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(300)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    finally:  # no writer outlives the test, even one that hangs
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.kill()
                p.join()
    client = MlflowClient(tracking_uri)
    for i, r in enumerate(runs):
        run = client.get_run(r)
        assert len(run.data.params) == 50
        assert sum(k.startswith("tag") for k in run.data.tags) == 6
        for j in range(8):
            hist = client.get_metric_history(r, f"m{j}")
            assert sorted(m.step for m in hist) == list(range(1, 151)), (i, j)
            assert all(m.value == m.step * 10 + j for m in hist)


def test_a_multi_node_sweep_refuses_a_store_on_one_disk():
    for uri in ("sqlite:///mlflow.db", "mlruns", "file:///tmp/mlruns"):
        assert local_store(uri)
        check_cluster_store(uri, nodes=1, client_mode=False)  # one node shares its own disk
        with pytest.raises(FedregError, match="mlflow server") as exc:
            check_cluster_store(uri, nodes=3, client_mode=False)
        assert "tracking.uri" in str(exc.value)
        with pytest.raises(FedregError, match="Ray Client"):
            check_cluster_store(uri, nodes=1, client_mode=True)
    assert not local_store("http://head:5000")
    check_cluster_store("http://head:5000", nodes=3, client_mode=True)


def test_progress_lines_live_and_plain():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    live = Tty()
    p = SweepProgress(2, 200.0, stream=live)
    p.started(0, "a.seed0", 10, 100.0, 0, "pid 1")
    p.round(0, 1, {"global_acc": 0.5})
    text = live.getvalue()
    assert "a.seed0: round 1/10 global_acc=0.5000 ETA" in text and "sweep: 0/2 done, 1 running" in text
    p.ended(0, "FINISHED", "a.seed0: done")
    p.close()
    assert "a.seed0: done" in live.getvalue()

    printed = []
    plain = SweepProgress(2, 200.0, echo=printed.append, stream=io.StringIO(), every_s=0)
    plain.started(1, "b.seed1", 4, 100.0, 2, "Ray task")
    plain.round(1, 3, {})
    plain.ended(1, "FAILED", "b.seed1: FAILED: boom")
    assert printed[0] == "b.seed1: started (Ray task) after round 2"
    assert printed[1].startswith("b.seed1: round 3/4 ETA")
    assert "sweep: 1/2 done, 0 running, 1 failed" in printed[2]


def test_a_ray_sweep_on_two_nodes_refuses_a_sqlite_store_before_any_run(env):
    """A real two-node Ray cluster (two raylets on this machine): the sweep stops before any MLflow run."""
    from ray.cluster_utils import Cluster

    tmp, raw, uri = env
    raw["seeds"] = [0, 1]
    spec = write_spec(tmp / "cluster.yaml", raw)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        res = run_child(
            [sys.executable, "-m", "fedreg", "run", str(spec), "--sweep", "ray", "--no-progress"],
            300,
            cwd=tmp,
            env={**os.environ, "RAY_ADDRESS": cluster.address},
        )
    finally:
        cluster.shutdown()
    assert res.returncode == 2, res.stderr
    assert "run on 2 nodes, which cannot share it" in res.stderr and "mlflow server" in res.stderr
    assert "Traceback" not in res.stderr
    client = MlflowClient(uri)
    assert not any(client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_sigterm_during_a_parallel_sweep_ends_every_run_killed_and_the_hint_continues_it(env):
    """...with the children it had started first, although the one it had not is first in the spec."""
    tmp, raw, uri = env
    raw["federation"]["rounds"] = 25
    raw["training"]["local_epochs"] = 1
    two = {"training.local_epochs": 2}  # longer: these two start first
    raw["variants"] = {"s": {}, "a": two, "b": {**two, "training.optimizer.lr": 0.02}}
    spec = write_spec(tmp / "term.yaml", raw)
    pids = []
    with start_parallel_sweep(tmp, spec) as proc:
        while len(pids) < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if m := re.match(r"\w: started \(pid (\d+)\)", line):
                pids.append(int(m.group(1)))
        deadline = time.monotonic() + 240
        while len(list((tmp / "ck").rglob("*.pt"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 143, err
        assert "terminated (SIGTERM)" in err and "Traceback" not in err
        for pid in pids:  # no worker left behind (checked before the block's end kills the process group)
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    kids = children(uri)
    assert {n: r.info.status for n, r in kids.items()} == {"a": "KILLED", "b": "KILLED"}
    parent = MlflowClient(uri).get_run(kids["a"].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"
    hint = err.split("Continue with: ")[1].strip()  # as printed: one child at a time
    resumed = run_child([sys.executable, "-m", "fedreg", *hint.split()[1:], "--no-progress"], 600, cwd=tmp)
    assert resumed.returncode == 0, resumed.stderr
    assert {n: r.info.status for n, r in children(uri).items()} == dict.fromkeys("sab", "FINISHED")
    order = list(dict.fromkeys(re.findall(r"^([sab]): ", resumed.stdout, re.M)))  # first line of each
    assert order[2] == "s" and sorted(order[:2]) == ["a", "b"], resumed.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (ended, not yet reaped by init) is not alive
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_sigkilled_sweep_parent_leaves_no_worker_running_and_no_run_running(env):
    """SIGKILL of the parent (nothing of it runs: no handler, no cleanup): each worker notices at its next
    progress message that nobody reads, stops its child (KILLED, with why: orphaned, not failed) and ends the
    parent run KILLED; no traceback, no BrokenPipeError, no worker left."""
    tmp, raw, uri = env
    raw["federation"]["rounds"] = 200  # far from done when the parent dies
    raw["variants"] = {"a": {}, "b": {"training.optimizer.lr": 0.02}}
    spec = write_spec(tmp / "orphan.yaml", raw)
    pids = []
    with start_parallel_sweep(tmp, spec) as proc:
        with deadline(proc, 300):
            while len(pids) < 2:
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
                if m := re.match(r"\w: started \(pid (\d+)\)", line):
                    pids.append(int(m.group(1)))
        wait_until = time.monotonic() + 240
        while len(list((tmp / "ck").rglob("*.pt"))) < 2 and time.monotonic() < wait_until:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_until = time.monotonic() + 120
        while any(_alive(p) for p in pids) and time.monotonic() < wait_until:
            time.sleep(0.2)
        assert not [p for p in pids if _alive(p)], "a worker outlived its parent by two minutes"
        with deadline(proc, 60):  # the workers held the parent's stderr: all they wrote is there
            err = proc.stderr.read()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-3000:]
    kids = children(uri)
    assert {n: r.info.status for n, r in kids.items()} == {"a": "KILLED", "b": "KILLED"}
    for r in kids.values():
        assert "the sweep's parent process ended" in r.data.tags["fedreg.failure"]
        assert r.info.end_time is not None
    parent = MlflowClient(uri).get_run(kids["a"].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"
    assert "fedreg resume" in parent.data.tags["fedreg.failure"]


def test_expected_cost_weighs_each_method_by_its_objectives_relative_cost(env):
    """A sweep orders its children by expected work; a method's extra passes count: on one partition and one
    sampling stream, Ditto (two models trained) costs FedAvg's training twice and FedRep (head epochs that
    train the head alone) less than FedAvg, in the ratio its objective declares."""
    from fedreg.data import DataCache
    from fedreg.registry import build_registry
    from fedreg.spec.resolve import resolve
    from fedreg.sweep import expected_cost
    from fedreg_baselines.fedrep import FedRep

    tmp, raw, _ = env
    raw["model"] = "medmnist_net"
    raw["training"]["local_epochs"] = 5
    del raw["training"]["objective"], raw["federation"]["aggregation"]  # the variants' presets name them
    raw["variants"] = {name: {"method": name} for name in ("fedavg", "ditto", "fedrep")}
    specs = {rs.variant: rs for rs in resolve(raw, build_registry())}
    cache = DataCache()
    cost = {name: expected_cost(rs, cache.get(rs)) for name, rs in specs.items()}
    assert cost["ditto"] > cost["fedavg"] > cost["fedrep"]
    training = cost["ditto"] - cost["fedavg"]  # FedAvg's training (Ditto's is twice it); evaluations cancel
    rep = specs["fedrep"].components["objective"]
    factor = FedRep.relative_cost(rep.params, specs["fedrep"].spec)
    assert factor == pytest.approx((0.4 * 4 + 1) / 5)  # local_epochs 5, of which rep_epochs 1 train the body
    assert cost["fedavg"] - cost["fedrep"] == pytest.approx(training * (1 - factor))


def test_run_order_puts_started_children_first_most_work_left_first_then_longest_or_spec_order():
    from fedreg.sweep import run_order

    costs = [3.0, 1.0, 3.0, 5.0, 2.0]
    done = [0.0, 0.5, 0.1, 0.0, 1.0]  # child 4 finished: no work left
    # started: 2 (2.7 left), 1 (0.5 left), 4 (0 left); then new ones longest first, or in spec order
    assert run_order(costs, done, longest_first=True) == [2, 1, 4, 3, 0]
    assert run_order(costs, done, longest_first=False) == [2, 1, 4, 0, 3]
    assert run_order(costs, [0.0] * 5, longest_first=True) == [3, 0, 2, 4, 1]
    assert run_order(costs, [0.0] * 5, longest_first=False) == [0, 1, 2, 3, 4]
    assert run_order([2.0, 2.0, 1.0], [0.0] * 3, longest_first=True) == [0, 1, 2]  # ties: spec order


def test_a_worker_interrupted_during_its_set_up_reports_killed_without_a_traceback(monkeypatch, capsys):
    """SIGTERM to a sweep reaches a worker that is still loading its data: the child is KILLED (the parent
    ends its run), quietly, as an interruption during training is."""
    import pickle
    from types import SimpleNamespace

    from fedreg import pools
    from fedreg.signals import Terminated

    def loading(task, send):
        raise Terminated("SIGTERM")

    monkeypatch.setattr(pools, "work", loading)
    ours, theirs = mp.Pipe()
    pools._process_main(SimpleNamespace(index=3), theirs)
    kind, outcome = pickle.loads(ours.recv_bytes())
    assert kind == "done" and (outcome.index, outcome.status, outcome.reason) == (3, "KILLED", "interrupted")
    assert "Traceback" not in capsys.readouterr().err
