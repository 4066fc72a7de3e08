"""``fedreg export`` / ``fedreg import``: a real sweep's runs moved to a new store keep every figure (the
report of the imported runs equals the report of the originals), importing again adds nothing, a run that
changed is replaced, runs still running are left out, and bad folders are refused with the fix."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
from mlflow.tracking import MlflowClient

from fedreg.cli import main
from fedreg.timelimit import EXIT_TIME_LIMIT, past
from fedreg.transfer import IMPORTED, VIEW_TAG_PREFIX, experiment_tags
from testhelpers import small_medmnist_spec, write_spec


def _parent(client: MlflowClient) -> str:
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return next(r.info.run_id for r in runs if r.data.tags.get("fedreg.role") == "parent")


def _children(client: MlflowClient, parent: str) -> dict[str, object]:
    exps = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_name: r for r in client.search_runs(exps, f"tags.mlflow.parentRunId = '{parent}'")}


def _report_tables(uri: str, parent: str, out) -> str:
    """The report's markdown from the Results table on (its header names run ids and the store)."""
    assert (
        main(["report", parent, "--tracking-uri", uri, "--out", str(out), "--no-progress", "--no-log"]) == 0
    )
    return (out / "report.md").read_text().split("## Results", 1)[1]


@pytest.fixture
def sweep(tmp_path, tracking_uri, one_thread):
    """A real two-variant, two-seed sweep in the test's store: (store uri, parent id)."""
    raw, _ = small_medmnist_spec(tmp_path, n_train=160, n_test=40)
    raw["metrics"] = ["global_accuracy", "local_accuracy", "flips", "bwt"]
    raw["seeds"] = [1, 2]
    raw.pop("seed")
    raw["variants"] = {"a": {}, "b": {"training.optimizer.lr": 0.01}}
    raw["checkpoint"] = {"dir": str(tmp_path / "ck"), "every": 0}
    assert main(["run", str(write_spec(tmp_path / "s.yaml", raw)), "--no-progress"]) == 0
    return tracking_uri, _parent(MlflowClient(tracking_uri))


def test_exported_runs_imported_into_a_new_store_give_the_same_report(sweep, tmp_path, new_store, capsys):
    uri, parent = sweep
    src = MlflowClient(uri)
    bundle = tmp_path / "bundle"
    assert main(["export", parent, "--out", str(bundle), "--tracking-uri", uri]) == 0
    assert "exported 5 runs" in capsys.readouterr().out
    manifest = json.loads((bundle / "manifest.json").read_text())
    kids = _children(src, parent)
    assert set(manifest["runs"]) == {parent, *(r.info.run_id for r in kids.values())}
    one = kids["a.seed2"]
    with open(bundle / one.info.run_id / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["key"] == "global_acc"]
    history = src.get_metric_history(one.info.run_id, "global_acc")
    assert [(int(r["step"]), float(r["value"])) for r in rows] == [(m.step, m.value) for m in history]
    assert (bundle / one.info.run_id / "artifacts" / "spec.yaml").is_file()

    dst_uri = new_store(tmp_path / "other.db")
    assert main(["import", str(bundle), "--tracking-uri", dst_uri]) == 0
    printed = capsys.readouterr().out
    assert "imported 5 runs" in printed
    dst = MlflowClient(dst_uri)
    new_parent = _parent(dst)
    assert new_parent != parent and f"{parent} -> {new_parent}" in printed
    new_kids = _children(dst, new_parent)
    src_exp = src.get_experiment(src.get_run(parent).info.experiment_id)
    dst_exp = dst.get_experiment(dst.get_run(new_parent).info.experiment_id)
    assert dst_exp.name == src_exp.name and "mlflow.experimentKind" in dst_exp.tags
    assert any(k.startswith(VIEW_TAG_PREFIX) for k in src_exp.tags)  # views saved for the source's parent
    assert dst_exp.tags == experiment_tags(src_exp.tags)  # carried over, but for those views
    assert sorted(new_kids) == sorted(kids) == ["a.seed1", "a.seed2", "b.seed1", "b.seed2"]
    for name, old in kids.items():
        new = new_kids[name]
        assert new.data.tags[IMPORTED] == old.info.run_id
        assert new.data.params == old.data.params
        assert new.data.metrics == old.data.metrics
        assert (new.info.status, new.info.start_time, new.info.end_time) == (
            old.info.status,
            old.info.start_time,
            old.info.end_time,
        )
        assert {a.path for a in dst.list_artifacts(new.info.run_id)} == {
            a.path for a in src.list_artifacts(old.info.run_id)
        }
    assert _report_tables(dst_uri, new_parent, tmp_path / "r2") == _report_tables(
        uri, parent, tmp_path / "r1"
    )

    # importing the same folder again adds nothing
    assert main(["import", str(bundle), "--tracking-uri", dst_uri]) == 0
    assert "imported 0 runs" in capsys.readouterr().out
    assert len(_children(dst, new_parent)) == 4

    # the imported runs exported back into the folder keep their first ids: the folder is unchanged, and a
    # third store that imports it holds each run once
    before = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert (
        main(["export", "--experiment", src_exp.name, "--out", str(bundle), "--tracking-uri", dst_uri]) == 0
    )
    after = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert sorted(after) == sorted(before)
    assert {k for k in before if k.name != "manifest.json" and before[k] != after[k]} == set()
    third = new_store(tmp_path / "third.db")
    assert main(["import", str(bundle), "--tracking-uri", third]) == 0
    assert "imported 5 runs" in capsys.readouterr().out
    assert sorted(_children(MlflowClient(third), _parent(MlflowClient(third)))) == sorted(kids)


def test_a_changed_run_is_replaced_and_running_ones_are_left_out(sweep, tmp_path, new_store, capsys):
    uri, parent = sweep
    src = MlflowClient(uri)
    bundle, dst_uri = tmp_path / "bundle", new_store(tmp_path / "other.db")
    assert main(["export", parent, "--out", str(bundle), "--tracking-uri", uri]) == 0
    assert main(["import", str(bundle), "--tracking-uri", dst_uri]) == 0
    capsys.readouterr()

    # a child ends later than it did (as a resumed run does), and a new child is still running
    changed = _children(src, parent)["b.seed1"]
    src.log_metric(changed.info.run_id, "global_acc", 0.5, step=99)
    src.set_terminated(changed.info.run_id, "FINISHED", end_time=changed.info.end_time + 1000)
    src.set_terminated(
        parent, "FINISHED", end_time=src.get_run(parent).info.end_time + 1000
    )  # the parent too
    running = src.create_run(
        changed.info.experiment_id, run_name="c.seed1", tags={"mlflow.parentRunId": parent}
    ).info.run_id
    argv = [
        "export",
        "--experiment",
        "test",
        "--out",
        str(bundle),
        "--tracking-uri",
        uri,
        "--exclude",
        "*.png",
    ]
    assert main(argv) == 0  # the whole experiment: the same parent
    out = capsys.readouterr().out
    assert "not exported, still running: c.seed1" in out
    assert not list(bundle.rglob("*.png")) and list(bundle.rglob("*.json"))
    left_out = json.loads((bundle / "manifest.json").read_text())["runs"][changed.info.run_id][
        "artifacts_left_out"
    ]
    assert left_out and all(p.endswith(".png") for p in left_out)
    assert not (bundle / running).exists()
    assert main(["import", str(bundle), "--tracking-uri", dst_uri]) == 0
    out = capsys.readouterr().out
    assert re.search(r"imported 2 runs .*\(3 imported before, unchanged\)", out), out
    dst = MlflowClient(dst_uri)
    kids = _children(dst, _parent(dst))
    # replaced, not doubled; the children imported before follow their replaced parent
    assert sorted(kids) == ["a.seed1", "a.seed2", "b.seed1", "b.seed2"]
    assert dst.get_metric_history(kids["b.seed1"].info.run_id, "global_acc")[-1].step == 99


def test_bad_folders_and_ids_are_refused_with_the_fix(sweep, tmp_path, capsys):
    uri, _ = sweep
    assert main(["export", "nosuchrun", "--out", str(tmp_path / "x"), "--tracking-uri", uri]) == 2
    assert "no MLflow run 'nosuchrun'" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    assert (
        main(["export", _parent(MlflowClient(uri)), "--out", str(tmp_path / "notes"), "--tracking-uri", uri])
        == 2
    )
    assert "holds files but no manifest.json" in capsys.readouterr().err
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine"  # nothing of the user's is touched
    assert main(["import", str(tmp_path / "notes"), "--tracking-uri", uri]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["export", "--experiment", "nope", "--out", str(tmp_path / "y"), "--tracking-uri", uri]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["export", "--out", str(tmp_path / "y"), "--tracking-uri", uri]) == 2
    assert "give run ids" in capsys.readouterr().err
    (tmp_path / "notes" / "manifest.json").write_text('{"format": "fedreg-runs", "version": 9, "runs": {}}')
    assert main(["import", str(tmp_path / "notes"), "--tracking-uri", uri]) == 2
    assert "format version 9" in capsys.readouterr().err


def test_skip_finished_runs_only_what_did_not_finish_anywhere_in_the_store(
    tmp_path, tracking_uri, new_store, one_thread, capsys
):
    """Half a sweep ran on one machine; its runs are imported on another, where `--skip-finished` runs the
    rest as a new parent run, and `fedreg resume` of that parent never runs the skipped children."""
    raw, _ = small_medmnist_spec(tmp_path, n_train=160, n_test=40)
    raw["seeds"] = [1, 2]
    raw.pop("seed")
    raw["variants"] = {"a": {}, "b": {"training.optimizer.lr": 1.0e12, "faults.divergence": "stop"}}
    raw["checkpoint"] = {"dir": str(tmp_path / "ck"), "every": 1}
    spec = str(write_spec(tmp_path / "s.yaml", raw))
    assert main(["run", spec, "--variant", "a", "--no-progress"]) == 0
    bundle, other = tmp_path / "bundle", new_store(tmp_path / "other.db")
    assert main(["export", "--experiment", "test", "--out", str(bundle)]) == 0
    assert main(["import", str(bundle), "--tracking-uri", other]) == 0
    capsys.readouterr()

    # `fedreg status SPEC` finds the imported runs: a finished, b not started, and says how to run the rest
    assert main(["status", spec, "--tracking-uri", other]) == 0
    out = capsys.readouterr().out
    assert "s.yaml): 4 planned runs, looked up in experiment 'test' of " in out, out
    for child, state in (("a.seed1", "FINISHED"), ("a.seed2", "FINISHED"), ("b.seed1", "NOT STARTED")):
        assert re.search(rf"^  {re.escape(child)} +{state} ", out, re.M), (child, out)
    assert "2 finished, 2 not started; CPU time " in out
    assert f"run the rest: fedreg run {spec} --skip-finished --set tracking.uri={other}" in out

    there = ["--set", f"tracking.uri={other}", "--no-progress"]
    assert main(["run", spec, "--skip-finished", *there]) == 1  # b diverges in both seeds
    out = capsys.readouterr().out
    assert re.search(r"a\.seed1: finished before in run \w+, skipped", out), out
    assert "a.seed2: finished before" in out and "b.seed1: finished before" not in out
    dst = MlflowClient(other)
    parents = [
        r
        for r in dst.search_runs([dst.get_experiment_by_name("test").experiment_id])
        if r.data.tags.get("fedreg.role") == "parent" and IMPORTED not in r.data.tags
    ]
    assert len(parents) == 1
    new_parent = parents[0].info.run_id
    assert sorted(_children(dst, new_parent)) == ["b.seed1", "b.seed2"]

    assert main(["resume", new_parent, "--tracking-uri", other, "--no-progress"]) == 1  # b fails again
    out = capsys.readouterr().out
    assert "a.seed" not in out, out  # the skipped children are not part of this invocation
    assert sorted(_children(dst, new_parent)) == ["b.seed1", "b.seed2"]

    assert main(["run", spec, "--variant", "a", "--skip-finished", *there]) == 0
    assert "nothing to run: all 2 runs of this spec finished before" in capsys.readouterr().out
    assert main(["run", spec, "--skip-finished", "--resume", *there]) == 2
    assert "fedreg resume PARENT_RUN_ID" in capsys.readouterr().err

    # the store as a Ctrl-C leaves it: b.seed1 KILLED; the status names the parent that continues it
    dst.set_terminated(_children(dst, new_parent)["b.seed1"].info.run_id, "KILLED")
    assert main(["status", spec, "--tracking-uri", other]) == 1  # b.seed2 failed
    out = capsys.readouterr().out
    assert re.search(r"^  b\.seed2 +FAILED .*diverged", out, re.M), out
    assert "2 finished, 1 killed, 1 failed" in out
    assert (
        f"or continue b.seed1 from their checkpoints: fedreg resume {new_parent} --tracking-uri {other} "
        "--skip-finished" in out
    )
    # on a machine without that invocation's checkpoints (runs imported), only 'run the rest' is offered
    shutil.rmtree(tmp_path / "ck")
    assert main(["status", spec, "--tracking-uri", other]) == 1
    out = capsys.readouterr().out
    assert "run the rest: fedreg run" in out and "or continue" not in out, out
    # a spec with run ids, or --set without a spec, is refused with the fix
    assert main(["status", spec, new_parent]) == 2
    assert "parent run ids or one run spec, not both" in capsys.readouterr().err
    assert main(["status", new_parent, "--set", "federation.rounds=3"]) == 2
    assert "--set goes with a run spec" in capsys.readouterr().err


def test_resume_skip_finished_leaves_out_children_that_finished_under_another_parent(
    tmp_path, tracking_uri, one_thread, capsys, monkeypatch
):
    """An invocation stopped by its time limit after a's round 2, b not started; b then finished under a
    parent of its own (`fedreg run --variant b --skip-finished`): `fedreg resume PARENT --skip-finished`
    continues a from its checkpoint and does not run b again."""
    raw, _ = small_medmnist_spec(tmp_path, n_train=160, n_test=40)
    raw["federation"]["rounds"] = 4
    raw["variants"] = {"a": {}, "b": {"training.optimizer.lr": 0.01}}
    raw["checkpoint"] = {"dir": str(tmp_path / "ck"), "every": 1}
    spec = str(write_spec(tmp_path / "s.yaml", raw))
    calls = []

    def past_after_round_2(deadline):
        calls.append(deadline)
        return len(calls) >= 2

    monkeypatch.setattr("fedreg.rounds.past", past_after_round_2)
    assert main(["run", spec, "--no-progress", "--max-time", "1h"]) == EXIT_TIME_LIMIT
    monkeypatch.setattr("fedreg.rounds.past", past)
    client = MlflowClient(tracking_uri)
    first = _parent(client)
    assert {n: r.info.status for n, r in _children(client, first).items()} == {"a": "KILLED"}

    assert main(["run", spec, "--variant", "b", "--skip-finished", "--no-progress"]) == 0
    b_runs = client.search_runs([client.get_experiment_by_name("test").experiment_id], "run_name = 'b'")
    assert [r.info.status for r in b_runs] == ["FINISHED"]
    capsys.readouterr()

    assert main(["resume", first, "--skip-finished", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"b: finished before in run {b_runs[0].info.run_id}, skipped (--skip-finished)" in out, out
    assert "a: resuming run" in out and "after round 2" in out, out
    kids = _children(client, first)
    assert {n: r.info.status for n, r in kids.items()} == {"a": "FINISHED"}
    assert len(client.search_runs([b_runs[0].info.experiment_id], "run_name = 'b'")) == 1  # not run again
    assert main(["resume", first, "--skip-finished", "--no-progress"]) == 2  # the invocation has finished
    assert "nothing to resume" in capsys.readouterr().err
