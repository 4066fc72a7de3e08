"""``--max-time``: a sweep stops itself at a round's end once the limit has passed, every child it stopped
with a checkpoint of its last completed round (also between ``checkpoint.every`` rounds), none started
after; ``fedreg resume`` then finishes them with each step logged once and the same results as a run never
stopped. Real CLI, real MLflow store, real worker processes."""

from __future__ import annotations

import re
import sys

import pytest
from mlflow.tracking import MlflowClient

from fedreg import checkpoint
from fedreg.cli import main
from fedreg.outputs import TRAIN_LOSS, MetricNames
from fedreg.registry import installed_figures
from fedreg.timelimit import EXIT_TIME_LIMIT, parse_duration, past
from testhelpers import run_child, small_medmnist_spec, write_spec

NAMES = MetricNames(installed_figures())


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5400", 5400),
        ("90m", 5400),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("2d", 172800),
        ("45s", 45),
        ("1H 5M", 3900),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "1h30", "5x", "", "0", "-5", "h"])
def test_a_bad_duration_is_refused_with_the_forms_that_work(text, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "spec.yaml", "--max-time", text])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--max-time" in err and ("1h30m" in err or "more than 0" in err), err


@pytest.fixture
def env(tmp_path, tracking_uri):
    raw, _ = small_medmnist_spec(tmp_path, n_train=240, n_test=60)
    raw["execution"] = {"threads": 1}
    raw["checkpoint"] = {"dir": str(tmp_path / "ck"), "every": 7}
    raw["variants"] = {"a": {}, "b": {"training.optimizer.lr": 0.02}, "c": {"training.optimizer.lr": 0.03}}
    return tmp_path, raw, tracking_uri


def test_without_checkpoints_the_limit_is_refused_before_anything_runs(env, capsys):
    tmp, raw, uri = env
    raw["checkpoint"]["every"] = 0
    assert main(["run", str(write_spec(tmp / "s.yaml", raw)), "--max-time", "1h"]) == 2  # bad input
    err = capsys.readouterr().err
    assert "--max-time" in err and "checkpoint.every" in err
    assert MlflowClient(uri).get_experiment_by_name("test") is None


def runs_of(uri: str, experiment: str = "test") -> dict[str, object]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def losses(uri: str, run) -> list[tuple[int, float]]:
    history = MlflowClient(uri).get_metric_history(run.info.run_id, NAMES.name(TRAIN_LOSS))
    return sorted((m.step, m.value) for m in history)


def check_stopped(uri, tmp, err, rounds, expected_stopped, expected_unstarted, total):  # noqa: PLR0913
    """The stop as the message, the store and the checkpoints record it; the parent run's id."""
    assert "time limit reached (--max-time)" in err and "Traceback" not in err, err
    stopped = {name: int(r) for name, r in re.findall(r"(\w) after round (\d+)", err)}
    if expected_stopped is None:  # in real time: a, then perhaps b, stopped; the others not started
        expected_stopped = ["a", "b"][: len(stopped)] or ["a"]
        expected_unstarted = ", ".join(n for n in "abc" if n not in stopped)
    assert sorted(stopped) == expected_stopped, err
    assert f"not started: {expected_unstarted}." in err, err
    runs = runs_of(uri)
    parent = next(r for r in runs.values() if r.data.tags.get("fedreg.role") == "parent")
    assert parent.info.status == "KILLED"
    assert set(runs) == {"t", *stopped}  # the parent (named as the spec) and the children that started
    for name, r in stopped.items():
        assert 0 < r < total, err
        assert runs[name].info.status == "KILLED"
        assert [s for s, _ in losses(uri, runs[name])] == list(range(1, r + 1))  # every completed round
        ck = checkpoint.load(tmp / "ck" / "t" / parent.info.run_id / f"{name}.pt")
        assert ck["round"] == r and not ck["finished"]  # the stop's own checkpoint
    rounds.update(stopped)
    return parent.info.run_id


def check_finished(uri, total):
    runs = runs_of(uri)
    assert {n: r.info.status for n, r in runs.items()} == dict.fromkeys(["t", "a", "b", "c"], "FINISHED")
    for name in ("a", "b", "c"):
        assert [s for s, _ in losses(uri, runs[name])] == list(range(1, total + 1))  # each step logged once
    return runs


def check_finished_like_a_run_never_stopped(uri, tmp, raw, total):
    runs = check_finished(uri, total)
    raw.pop("variants")  # variant a alone, never stopped
    raw["checkpoint"] = {"dir": str(tmp / "ck2"), "every": 0}
    raw["tracking"]["experiment"] = "straight"
    assert main(["run", str(write_spec(tmp / "a.yaml", raw)), "--no-progress"]) == 0
    assert losses(uri, runs["a"]) == losses(uri, runs_of(uri, "straight")["t"])


def test_the_limit_stops_the_running_child_between_checkpoints_and_resume_finishes_like_never_stopped(
    env, capsys, monkeypatch
):
    """One child at a time, the limit reached after a's round 9 (checkpoints every 7): a stops there with
    a checkpoint of round 9, b and c do not start; the resume command it prints finishes all three."""
    tmp, raw, uri = env
    raw["federation"]["rounds"] = 12
    spec = write_spec(tmp / "s.yaml", raw)
    calls = []

    def past_after_round_9(deadline):  # the check at the end of each round: the limit passes in round 9
        calls.append(deadline)
        return len(calls) >= 9

    monkeypatch.setattr("fedreg.rounds.past", past_after_round_9)
    assert main(["run", str(spec), "--no-progress", "--max-time", "1h"]) == EXIT_TIME_LIMIT
    err = capsys.readouterr().err
    rounds: dict[str, int] = {}
    parent = check_stopped(uri, tmp, err, rounds, ["a"], "b, c", 12)
    assert rounds == {"a": 9} and all(d is not None for d in calls)
    monkeypatch.setattr("fedreg.rounds.past", past)  # (undo() would also undo the store's fixture)
    hint = err.split("Continue with: ")[1].split()
    assert hint[:3] == ["fedreg", "resume", parent]
    assert main([*hint[1:], "--no-progress"]) == 0
    check_finished_like_a_run_never_stopped(uri, tmp, raw, 12)


def test_a_parallel_sweep_stops_its_workers_children_at_the_limit_in_real_time(env):
    """Two at a time, a real limit of 10 seconds from the command's start: a (and b, when it started in
    time) stop at a round's end with a checkpoint, c does not start; the printed command (with --jobs 2)
    finishes all three."""
    tmp, raw, uri = env
    raw["federation"]["rounds"] = 60  # longer than the limit (0.2-0.5 s a round here)
    spec = write_spec(tmp / "s.yaml", raw)
    cmd = [
        sys.executable,
        "-m",
        "fedreg",
        "run",
        str(spec),
        "--no-progress",
        "--max-time",
        "8s",
        "--jobs",
        "2",
    ]
    stopped = run_child(cmd, 300, cwd=tmp)
    assert stopped.returncode == EXIT_TIME_LIMIT, stopped.stderr
    assert "time limit: stopped after round" in stopped.stdout  # the sweep's progress line
    rounds: dict[str, int] = {}
    check_stopped(uri, tmp, stopped.stderr, rounds, None, None, 60)
    hint = stopped.stderr.split("Continue with: ")[1].split()
    assert hint[-2:] == ["--jobs", "2"]
    resumed = run_child([sys.executable, "-m", "fedreg", *hint[1:], "--no-progress"], 600, cwd=tmp)
    assert resumed.returncode == 0, resumed.stderr
    for name, r in rounds.items():
        assert f"{name}: resuming run" in resumed.stdout and f"after round {r}" in resumed.stdout
    check_finished(uri, 60)  # (the same losses as never stopped: the test above)
