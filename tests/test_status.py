"""``fedreg status`` on a real sweep in a real subprocess and a real MLflow store: while it runs (the
running child, the failed one and why, the finished one, the ones not started, the process that runs them),
and after the process was killed (the child left RUNNING in the store reads INTERRUPTED, and the printed
command continues the sweep)."""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from fedreg.cli import main
from testhelpers import child, run_child, small_medmnist_spec, write_spec


def status_of(capsys, parent: str) -> tuple[int, dict[str, str], str]:
    """(exit status, child name -> its line, the whole output) of ``fedreg status PARENT``."""
    code = main(["status", parent])
    out = capsys.readouterr().out
    lines = {m.group(1): line for line in out.splitlines() if (m := re.match(r"  (\S+\.seed\d+|\w+) ", line))}
    return code, lines, out


def test_status_while_a_sweep_runs_and_after_it_was_killed(tmp_path, tracking_uri, capsys):
    raw, _ = small_medmnist_spec(tmp_path, n_train=240, n_test=60)
    raw["execution"] = {"threads": 1}
    raw["checkpoint"] = {"dir": str(tmp_path / "ck"), "every": 1}
    raw["federation"]["rounds"] = 3
    raw["variants"] = {  # run one after another, in this order
        "ok": {},
        "diverges": {"training.optimizer.lr": 1.0e12, "faults.divergence": "stop"},
        "slow": {"federation.rounds": 100},
        "later": {},
    }
    spec = write_spec(tmp_path / "status.yaml", raw)
    cmd = [sys.executable, "-m", "fedreg", "run", str(spec), "--no-progress"]
    with child(cmd, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "ck").rglob("slow.pt")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the sweep ended before its slow child checkpointed"
            time.sleep(0.2)
        client = MlflowClient(tracking_uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        parent = next(r.info.run_id for r in runs if r.data.tags.get("fedreg.role") == "parent")

        code, lines, out = status_of(capsys, parent)
        assert code == 1, out  # a child failed
        assert f"being run by pid {proc.pid}" in out, out
        assert re.search(r"FINISHED\s+3/3\s+[\d,]+\s+global acc 0\.\d{4}", lines["ok"]), lines["ok"]
        assert "FAILED" in lines["diverges"]
        assert "diverged: non-finite training loss in round 1" in lines["diverges"]
        assert re.search(r"RUNNING\s+\d+/100 .* logged \d+s ago", lines["slow"]), lines["slow"]
        assert re.search(r"NOT STARTED\s+-\s+-$", lines["later"]), lines["later"]
        assert "1 finished, 1 running, 1 failed, 1 not started" in out
        assert "continue:" not in out  # it is running

        proc.send_signal(signal.SIGKILL)  # as a machine that stops: nothing of the process runs
        proc.wait(timeout=60)

    code, lines, out = status_of(capsys, parent)
    assert "being run by" not in out
    assert re.search(r"INTERRUPTED\s+\d+/100", lines["slow"]), lines["slow"]
    assert "1 finished, 1 interrupted, 1 failed, 1 not started" in out
    # the slow child's rounds to go, at its CPU per round
    assert re.search(r"CPU time \S+ so far, about (\d+m)?\d+s left", out), out
    command = re.search(r"continue: (fedreg resume \S+)", out).group(1)
    assert command == f"fedreg resume {parent}"  # the store is the default one ($MLFLOW_TRACKING_URI)
    # the printed command continues the sweep: the slow child from its checkpoint, then the later one
    resumed = run_child([sys.executable, "-m", *command.split(), "--no-progress"], 600, cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stderr  # the diverging child is retried and fails again
    code, lines, out = status_of(capsys, parent)
    assert re.search(r"FINISHED\s+100/100", lines["slow"]) and "FINISHED" in lines["later"], out
    assert "3 finished, 1 failed" in out


def test_status_of_a_single_run_and_of_a_child_id(tmp_path, tracking_uri, capsys):
    raw, _ = small_medmnist_spec(tmp_path, n_train=160, n_test=40)
    raw["checkpoint"] = {"dir": str(tmp_path / "ck"), "every": 1}
    raw["federation"]["rounds"] = 2
    assert main(["run", str(write_spec(tmp_path / "one.yaml", raw)), "--no-progress"]) == 0
    raw["variants"] = {"a": {}, "b": {"training.optimizer.lr": 0.02}}
    assert main(["run", str(write_spec(tmp_path / "two.yaml", raw)), "--no-progress"]) == 0
    capsys.readouterr()
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    single = next(
        r
        for r in runs
        if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("fedreg.role") != "parent"
    )
    kid = next(r for r in runs if r.info.run_name == "b")

    code, _, out = status_of(capsys, single.info.run_id)
    assert code == 0 and f"(run {single.info.run_id}" in out and ": a single run" in out, out
    assert re.search(rf"  {single.info.run_name}\s+FINISHED\s+2/2", out), out
    assert "1 finished;" in out and "continue:" not in out

    code, lines, out = status_of(capsys, kid.info.run_id)  # a child's id: its parent's children
    assert code == 0 and kid.data.tags["mlflow.parentRunId"] in out, out
    assert set(lines) >= {"a", "b"} and "2 finished;" in out, out


def test_status_and_compare_never_create_a_store(tmp_path, capsys):
    """Readers of a store: one that is not there is an error naming the fix, and no empty store is left."""
    uri = f"sqlite:///{tmp_path / 'no' / 'mlflow.db'}"
    for command in ("status", "compare"):
        assert main([command, "0123456789abcdef0123456789abcdef", "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert "no MLflow tracking store at" in err and "--tracking-uri" in err, err
        assert not (tmp_path / "no").exists()


def test_cpu_left_counts_each_unfinished_child_at_its_variants_rate():
    from types import SimpleNamespace

    from fedreg.status import Child, cpu_left

    def run(status):
        return SimpleNamespace(info=SimpleNamespace(status=status))

    children = [
        Child("a.seed1", run("FINISHED"), round=10, rounds=10, cpu_s=20.0),  # 2 s a round
        Child("a.seed2", run("RUNNING"), round=4, rounds=10, cpu_s=12.0),  # 3 s a round: 6 rounds to go
        Child("a.seed3"),  # not started: a's 10 rounds at a's mean rate, 2.5 s
        Child("b.seed1", run("FAILED"), round=3, rounds=20, cpu_s=30.0),  # failed: done; b's rate 10 s
        Child("b.seed2"),  # not started: b's 20 rounds at 10 s
    ]
    assert cpu_left(children) == 6 * 2.5 + 10 * 2.5 + 20 * 10.0
    assert cpu_left([Child("a.seed1")]) is None  # nothing logged yet: no estimate
    # a child stopped in its first rounds (mostly start-up CPU) gives no rate while others do
    early = Child("b.seed3", run("KILLED"), round=1, rounds=20, cpu_s=300.0)  # within 5% of its rounds
    assert cpu_left([*children, early]) == 6 * 2.5 + 10 * 2.5 + 20 * 10.0 + 19 * 10.0
    assert cpu_left([early]) == 19 * 300.0  # (the only measurement: used)
    # a variant not measured yet (c): without its expected work, the mean rate of all measured children;
    # with it (what `fedreg status SPEC` passes), the CPU per unit of work measured on the others x its work
    more = [*children, Child("c.seed1", rounds=10)]
    assert cpu_left(more) == 6 * 2.5 + 10 * 2.5 + 20 * 10.0 + 10 * (2 + 3 + 10) / 3
    work = {"a": 1.0, "b": 4.0, "c": 2.0}  # per-unit rates: a 2 and 3, b 2.5
    assert cpu_left(more, work) == pytest.approx(
        6 * 2.5 + 10 * 2.5 + 20 * 10.0 + 10 * 2.0 * (2 + 3 + 2.5) / 3
    )
