"""Resume never adopts the wrong run, through the real CLI and a real MLflow store: a folder is adopted only
when it records the same spec (also before its first checkpoint), one process at a time runs a folder (a
lock that a killed holder leaves to the next), no spec name writes outside checkpoint.dir, a resumed run
logs each step once, and SIGTERM ends a run like Ctrl-C with a resume command that works."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import fedreg.registry
from fedreg import checkpoint, environment, hookimpl
from fedreg.cli import main
from fedreg.errors import FedregError
from fedreg.locks import FolderLock
from fedreg.registry import build_registry
from fedreg_baselines.fedavg import CrossEntropy
from testhelpers import child, run_child, signal_handler, small_medmnist_spec, wait_for, write_spec

TESTS = Path(__file__).resolve().parent


class FailAt(CrossEntropy):
    """Cross-entropy that raises ``exc`` in the rounds listed in ``rounds`` (not part of the spec, so the
    same spec runs cleanly once they are cleared)."""

    name = "test_fail_at"
    rounds: set = set()
    exc: type[BaseException] = RuntimeError

    def loss(self, model, x, y, ctx):
        if ctx.round in self.rounds:
            raise self.exc(f"planned failure in round {ctx.round}")
        return super().loss(model, x, y, ctx)


@hookimpl
def fedreg_register_objectives(register):
    register(FailAt)


PLUGINS = [("resume_faults", sys.modules[__name__])]


@pytest.fixture(autouse=True)
def no_failures():
    FailAt.rounds, FailAt.exc = set(), RuntimeError
    yield
    FailAt.rounds, FailAt.exc = set(), RuntimeError


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A spec (5 rounds, a checkpoint every 2) on a small MedMNIST-format file; the MLflow store (a
    temporary sqlite file) comes from MLFLOW_TRACKING_URI, the checkpoints go to tmp/ck."""
    monkeypatch.chdir(tmp_path)
    raw, md5 = small_medmnist_spec(tmp_path, n_train=160, n_test=40)
    raw["training"]["objective"] = "test_fail_at"
    raw["federation"]["rounds"] = 5
    raw["tracking"] = {"experiment": "resume"}
    raw["checkpoint"] = {"every": 2, "dir": str(tmp_path / "ck")}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(fedreg.registry, "_DEFAULT", build_registry(extra_plugins=PLUGINS))
    return tmp_path, raw, uri


def runs(uri: str):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("resume")
    return c.search_runs([exp.experiment_id]) if exp else []


def only_run(uri: str):
    (run,) = runs(uri)
    return run


def checkpoint_files(tmp: Path) -> list[Path]:
    return sorted((tmp / "ck").rglob("*.pt"))


def assert_each_step_once(uri: str, run_id: str, rounds: int) -> None:
    """Every metric of the run holds each step at most once; those logged every round hold 1..rounds."""
    c = MlflowClient(uri)
    for key in c.get_run(run_id).data.metrics:
        steps = [m.step for m in c.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, sorted(steps))
    for key in ("training/loss", "accuracy/global", "training/lr", "training/clients_ok"):
        steps = [m.step for m in c.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(1, rounds + 1)), (key, sorted(steps))


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --- a folder is adopted only by the spec it records --------------------------------------------------------


def test_failed_before_first_checkpoint_changed_spec_refused_same_spec_adopted(env, capsys):
    tmp, raw, uri = env
    spec = write_spec(tmp / "spec.yaml", raw)
    FailAt.rounds = {1}  # fails before its first checkpoint: a folder with experiment.json, no run.pt
    code, _, err = cli(capsys, "run", str(spec), "--no-progress")
    assert code == 2, err
    run = only_run(uri)
    assert run.info.status == "FAILED"
    (meta,) = (tmp / "ck").rglob("experiment.json")
    assert json.loads(meta.read_text())["status"] == "RUNNING" and checkpoint_files(tmp) == []
    FailAt.rounds = set()

    other_root = tmp / "other"
    other_root.mkdir()
    shutil.copy(tmp / "organsmnist.npz", other_root)
    for change, diff in [
        (["--set", "training.optimizer.lr=0.5"], "training.optimizer.lr: 0.05 -> 0.5"),
        (["--set", f"data.root={other_root}"], f"data.root: {tmp} -> {other_root}"),
    ]:
        code, out, err = cli(capsys, "run", str(spec), "--resume", "--no-progress", *change)
        assert code == 2, err
        assert f"belongs to another spec: {diff}" in err, err
        assert f"fedreg resume {run.info.run_id}" in err and "run without --resume" in err
        assert err.startswith("error: ") and "Traceback" not in err
        # nothing adopted, nothing written
        assert [r.info.run_id for r in runs(uri)] == [run.info.run_id]
        assert only_run(uri).info.status == "FAILED" and checkpoint_files(tmp) == []

    # a folder written before identities were recorded: its spec as written is resolved again
    legacy = json.loads(meta.read_text())
    del legacy["identities"]
    meta.write_text(json.dumps(legacy))
    code, _, err = cli(
        capsys, "run", str(spec), "--resume", "--no-progress", "--set", "training.optimizer.lr=0.5"
    )
    assert code == 2 and "training.optimizer.lr: 0.05 -> 0.5" in err, err

    code, out, err = cli(capsys, "run", str(spec), "--resume", "--no-progress")  # the same spec
    assert code == 0, err
    assert f"resuming run {run.info.run_id} after round 0" in out
    run = only_run(uri)
    assert run.info.status == "FINISHED"
    assert_each_step_once(uri, run.info.run_id, 5)
    assert json.loads(meta.read_text())["status"] == "FINISHED"


def test_diverged_at_once_is_not_resumed_with_another_learning_rate(env, capsys):
    """The issue's case: ``training.optimizer.lr: 1e6`` fails before the first checkpoint; ``--resume``
    with another learning rate is refused, with the same one it is adopted (and fails again, in the same
    run)."""
    tmp, raw, uri = env
    raw["training"]["objective"] = "cross_entropy"
    raw["checkpoint"]["every"] = 5  # (it diverges within a few rounds) the only checkpoint is the last
    spec = write_spec(tmp / "spec.yaml", raw)
    code, _, err = cli(capsys, "run", str(spec), "--no-progress", "--set", "training.optimizer.lr=1e6")
    assert code == 2, err
    run_id = only_run(uri).info.run_id
    code, _, err = cli(capsys, "run", str(spec), "--resume", "--no-progress")
    assert code == 2 and "belongs to another spec: training.optimizer.lr: 1000000.0 -> 0.05" in err, err
    assert only_run(uri).info.status == "FAILED"
    code, out, err = cli(
        capsys, "run", str(spec), "--resume", "--no-progress", "--set", "training.optimizer.lr=1e6"
    )
    assert code == 2, err
    assert f"resuming run {run_id} after round 0" in out
    assert only_run(uri).info.status == "FAILED" and checkpoint_files(tmp) == []


# --- each step once -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cpu", ["carried", "unknown"])
def test_resumed_run_logs_each_step_once(env, capsys, cpu):
    """Stopped after round 3 with a checkpoint every 2 rounds: the resume re-runs round 3 from the round-2
    checkpoint but does not log it again. Resumed with ``fedreg resume RUN_ID`` alone: the folder is found
    from the run's tag, although checkpoint.dir is not the default. The run's CPU time goes on from the
    checkpoint's (here made 1000 s larger, so that a count restarted at zero would show); from a checkpoint
    without it (an older fedreg's) it is unknown: not logged, rather than too small."""
    tmp, raw, uri = env
    spec = write_spec(tmp / "spec.yaml", raw)
    FailAt.rounds = {4}
    code, _, err = cli(capsys, "run", str(spec), "--no-progress")
    assert code == 2, err
    run_id = only_run(uri).info.run_id
    c = MlflowClient(uri)
    assert sorted(m.step for m in c.get_metric_history(run_id, "training/loss")) == [1, 2, 3]
    (ck,) = checkpoint_files(tmp)
    state = checkpoint.load(ck)
    assert state["round"] == 2 and 0 < state["cpu_s"] < 300
    if cpu == "carried":
        state["cpu_s"] += 1000.0
    else:
        del state["cpu_s"]
    checkpoint.save(ck, state)
    FailAt.rounds = set()
    code, out, err = cli(capsys, "resume", run_id, "--no-progress")
    assert code == 0, err
    assert f"resuming run {run_id} after round 2" in out
    assert only_run(uri).info.status == "FINISHED"
    assert_each_step_once(uri, run_id, 5)
    used = sorted((m.step, m.value) for m in c.get_metric_history(run_id, "timing/cpu_s"))
    summary = c.get_run(run_id).data.metrics.get("cpu time s")
    before = [v for _, v in used[:3]]  # rounds 1-3, logged before the interruption
    assert [st for st, _ in used[:3]] == [1, 2, 3] and before == sorted(before) and before[-1] < 300
    if cpu == "carried":
        after = [v for _, v in used[3:]]
        assert [st for st, _ in used] == [1, 2, 3, 4, 5] and 1000 < after[0] < after[1] <= summary
    else:
        assert len(used) == 3 and summary is None


def test_interrupt_hint_names_a_store_that_is_not_the_default_and_works(env, capsys):
    """Ctrl-C in a run whose spec names its own tracking store: the hint adds ``--tracking-uri`` (without
    it the run cannot be found, and the refusal says what to pass); the printed command completes it."""
    tmp, raw, _ = env
    uri = f"sqlite:///{tmp / 'own.db'}"
    raw["tracking"]["uri"] = uri
    spec = write_spec(tmp / "spec.yaml", raw)
    FailAt.rounds, FailAt.exc = {2}, KeyboardInterrupt
    code, _, err = cli(capsys, "run", str(spec), "--no-progress")
    assert code == 130, err
    run_id = only_run(uri).info.run_id
    assert only_run(uri).info.status == "KILLED"
    hint = err.split("Continue with: ")[1].strip()
    assert hint == f"fedreg resume {run_id} --tracking-uri {uri}"
    FailAt.rounds = set()
    code, _, err = cli(capsys, "resume", run_id, "--no-progress")
    assert code == 2 and "pass --tracking-uri" in err and "Traceback" not in err, err
    code, out, err = cli(capsys, *hint.split()[1:], "--no-progress")
    assert code == 0, err
    assert f"resuming run {run_id} after round 0" in out  # killed in round 2, before the round-2 checkpoint
    assert only_run(uri).info.status == "FINISHED"
    assert_each_step_once(uri, run_id, 5)


def test_interrupt_between_a_runs_start_and_its_training_leaves_no_run_running(env, capsys, monkeypatch):
    """Ctrl-C while a new child run logs its partition (before its training and its checkpoint folder):
    the child and the parent end KILLED, none stays RUNNING."""
    import fedreg.experiment

    tmp, raw, uri = env
    raw["seeds"] = [1, 2]  # a parent run and child runs
    spec = write_spec(tmp / "spec.yaml", raw)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedreg.experiment, "log_partition", ctrl_c)
    code, _, err = cli(capsys, "run", str(spec), "--no-progress")
    assert code == 130, err
    assert "marked KILLED before their first checkpoint folder was made: run it again" in err, err
    assert sorted(r.info.status for r in runs(uri)) == ["KILLED", "KILLED"]


# --- one process per folder ---------------------------------------------------------------------------------


def plugin_cli(tmp: Path, *args: str) -> AbstractContextManager[subprocess.Popen]:
    """``with plugin_cli(tmp, *ARGS) as proc:`` ``fedreg ARGS`` in another process (see
    :func:`testhelpers.child`), with this module's test plugin registered."""
    script = tmp / "fedreg_with_test_plugin.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(TESTS)!r})
            import fedreg.registry
            import test_resume_safety as t
            fedreg.registry._DEFAULT = fedreg.registry.build_registry(extra_plugins=[("resume_faults", t)])
            from fedreg.cli import main
            sys.exit(main(sys.argv[1:]))
            """
        )
    )
    return child(
        [sys.executable, str(script), *args],
        cwd=tmp,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_two_resumes_at_once_one_refused_and_a_killed_holder_is_taken_over(env, capsys):
    tmp, raw, uri = env
    spec = write_spec(tmp / "spec.yaml", raw)
    FailAt.rounds, FailAt.exc = {3}, KeyboardInterrupt  # Ctrl-C in round 3
    code, _, err = cli(capsys, "run", str(spec), "--no-progress")
    assert code == 130, err
    run_id = only_run(uri).info.run_id
    assert f"Continue with: fedreg resume {run_id}\n" in err, err
    assert only_run(uri).info.status == "KILLED"
    FailAt.rounds = set()
    lock = FolderLock(tmp / "ck" / "t" / run_id)

    with plugin_cli(tmp, "resume", run_id, "--no-progress") as holder:
        wait_for(lambda: lock.holder().get("pid") == holder.pid or holder.poll() is not None, 120, "the lock")
        assert holder.poll() is None, holder.communicate()
        holder.send_signal(signal.SIGSTOP)  # keeps the lock while stopped
        for args in (["run", str(spec), "--resume"], ["resume", run_id]):
            code, _, err = cli(capsys, *args, "--no-progress")
            assert code == 2, err
            assert "being run by another fedreg process" in err and f"pid {holder.pid} on " in err, err
            assert "Traceback" not in err
        assert [r.info.run_id for r in runs(uri)] == [run_id]  # no run adopted or started
        holder.send_signal(signal.SIGKILL)  # dies holding the lock
        holder.wait(30)

    code, out, err = cli(capsys, "run", str(spec), "--resume", "--no-progress")
    assert code == 0, err  # the lock of the killed process is taken over
    assert f"resuming run {run_id}" in out
    assert lock.holder()["pid"] == os.getpid()
    assert only_run(uri).info.status == "FINISHED"
    assert_each_step_once(uri, run_id, 5)


# --- no name leaves checkpoint.dir --------------------------------------------------------------------------


def test_spec_name_cannot_write_outside_checkpoint_dir(env, capsys):
    tmp, raw, uri = env
    raw["name"] = "../../escape"
    raw["seeds"] = [1]  # the run's key is '<name>.seed1': its file name comes from the name too
    raw["federation"]["rounds"] = 1
    ck = tmp / "a" / "b" / "ck"
    raw["checkpoint"] = {"every": 1, "dir": str(ck)}
    spec = write_spec(tmp / "spec.yaml", raw)
    code, _, err = cli(capsys, "run", str(spec), "--no-progress")
    written = [p for p in tmp.rglob("*") if "escape" in p.name]
    assert not (tmp / "a" / "escape").exists()
    assert all(p.resolve().is_relative_to(ck.resolve()) for p in written), written
    if code == 0:  # (a spec check may refuse such a name instead: then nothing is written at all)
        assert [p.name for p in (ck).rglob("*.pt")] == [".._.._escape.seed1.pt"]
    else:
        assert code == 2 and written == [], err


@pytest.mark.parametrize("name", ["../../escape", "..", ".", "/etc", "a/../../b", "x\\..\\..\\y", ""])
def test_checkpoint_paths_stay_inside(tmp_path, name):
    root = tmp_path / "ck"
    for path in (checkpoint.spec_folder(root, name), checkpoint.inside(root, name, name + ".pt")):
        assert path.resolve().parent.is_relative_to(root.resolve()) and path.resolve() != root.resolve()


def test_a_link_out_of_checkpoint_dir_is_refused(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "spec").symlink_to(tmp_path)
    with pytest.raises(FedregError, match="outside checkpoint.dir"):
        checkpoint.spec_folder(tmp_path / "ck", "spec")


def test_resume_of_a_path_is_refused(env, capsys):
    code, _, err = cli(capsys, "resume", "../../etc", "--no-progress")
    assert code == 2 and "is not an MLflow run id" in err, err


# --- SIGTERM ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_marks_runs_killed_and_prints_a_resume_command_that_works(env):
    tmp, raw, uri = env
    raw["training"]["objective"] = "cross_entropy"
    raw["federation"]["rounds"] = 20
    raw["checkpoint"]["every"] = 1
    spec = write_spec(tmp / "spec.yaml", raw)

    def logged() -> int:
        try:
            rs = runs(uri)
            return len(MlflowClient(uri).get_metric_history(rs[0].info.run_id, "training/loss")) if rs else 0
        except Exception:  # noqa: BLE001 - being written
            return 0

    with child(  # SIGTERM at its default in the child, whatever this process inherited; killed at the end
        [sys.executable, "-m", "fedreg", "run", str(spec), "--no-progress"],
        cwd=tmp,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        # the store is created (and its tables migrated) by the run: touch it only once the run exists
        ready = lambda: list((tmp / "ck").rglob("experiment.json")) or proc.poll() is not None  # noqa: E731
        wait_for(ready, 240, "the run's checkpoint folder")
        wait_for(lambda: logged() >= 1 or proc.poll() is not None, 240, "round 1")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGSTOP)  # mid-run, whatever the machine's speed
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    run = only_run(uri)
    assert run.info.status == "KILLED"
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    hint = err.split("Continue with: ")[1].strip()
    assert hint == f"fedreg resume {run.info.run_id}"
    resumed = run_child([sys.executable, "-m", "fedreg", *hint.split()[1:], "--no-progress"], 300, cwd=tmp)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run {run.info.run_id}" in resumed.stdout
    assert [r.info.status for r in runs(uri)] == ["FINISHED"]
    assert_each_step_once(uri, run.info.run_id, 20)


def test_an_interrupt_during_a_tracking_write_waits_for_the_write_to_end():
    from fedreg.signals import interrupts_deferred

    done = []
    # Ctrl-C's handler as Python installs it at start-up, whatever this process inherited (a background job
    # starts with SIGINT ignored, and then Python installs none); the previous one again afterwards
    with signal_handler(signal.SIGINT, signal.default_int_handler):
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # the handler would have run here
                done.append("write")  # the write goes on to its end
        assert done == ["write"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_a_checkpoint_is_written_is_an_interruption(tmp_path, monkeypatch):
    """Ctrl-C that lands inside ``torch.save`` (a KeyboardInterrupt in the file's write) surfaces as the
    interruption, not as torch's ``unexpected pos`` error raised while it unwinds; the partial ``.tmp`` file
    is removed and the previous checkpoint is left whole."""
    import torch

    ck = tmp_path / "run.pt"
    checkpoint.save(ck, {"round": 1, "w": torch.ones(4)})
    before = ck.read_bytes()
    calls = {"n": 0}
    real_write = checkpoint._Recorder.write

    def interrupted_write(self, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_write(self, data)

    monkeypatch.setattr(checkpoint._Recorder, "write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(ck, {"round": 2, "w": torch.zeros(10_000)})
    assert calls["n"] >= 3
    assert ck.read_bytes() == before and checkpoint.load(ck)["round"] == 1
    assert not (tmp_path / "run.pt.tmp").exists()


def test_a_run_records_where_it_computed_and_a_resume_elsewhere_each_part(env, capsys, monkeypatch):
    """The run's tags name this machine's torch, processor, instruction set and threads, and its checkpoint
    keeps them; resumed where the instruction set differs (as on another machine), the tags hold the new
    environment and both parts with the rounds each computed (what ``fedreg report`` shows of the run)."""
    tmp, raw, uri = env
    raw["execution"] = {"threads": 1}
    spec = write_spec(tmp / "spec.yaml", raw)
    FailAt.rounds = {4}
    code, _, err = cli(capsys, "run", str(spec), "--no-progress")
    assert code == 2, err
    run = only_run(uri)
    here = environment.current()
    recorded = environment.of_tags(run.data.tags)
    assert recorded == {**here, "threads": "1"}, recorded  # the run's threads (execution.threads)
    assert environment.PARTS_TAG not in run.data.tags
    (ck,) = checkpoint_files(tmp)
    assert checkpoint.load(ck)["environments"] == [{"from_round": 1, "env": recorded}]
    elsewhere = {**recorded, "isa": "AVX2", "cpu": "another processor"}
    monkeypatch.setattr(environment, "current", lambda device="cpu": dict(elsewhere))
    FailAt.rounds = set()
    code, out, err = cli(capsys, "resume", run.info.run_id, "--no-progress")
    assert code == 0, err
    tags = only_run(uri).data.tags
    assert environment.of_tags(tags) == elsewhere
    assert tags[environment.PARTS_TAG] == (
        f"from round 1: {environment.summary(recorded)}; from round 3: {environment.summary(elsewhere)}"
    )
    assert "(AVX2), cpu, 1 thread" in tags[environment.PARTS_TAG]
