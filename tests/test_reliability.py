"""Reliability against real processes: SIGKILL then --resume, a tracking server that goes away, failing and
diverging clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from fedreg import hookimpl
from fedreg.errors import ComponentFailure, FedregError
from fedreg.outputs import RUN_TIMES, TIMING_KEYS, MetricNames
from fedreg.testing import tiny_federation
from fedreg_baselines.fedavg import CrossEntropy
from testhelpers import (
    base_spec,
    child,
    end_child,
    make_medmnist_npz,
    run_child,
    start_child,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.slow


def small_spec(tmp_path: Path, rounds: int, uri: str, ck: str = "ck") -> Path:
    md5 = make_medmnist_npz(tmp_path, "organcmnist", n_train=400, n_test=80)
    raw = base_spec()
    raw["data"] = {
        "dataset": {"name": "organcmnist", "params": {"md5": md5}},
        "root": str(tmp_path),
        "num_clients": 4,
        "partition": {"name": "dirichlet", "params": {"alpha": 0.5, "min_samples": 5}},
    }
    raw["federation"]["rounds"] = rounds
    raw["training"]["batch_size"] = 16
    raw["metrics"] = ["global_accuracy", "local_accuracy", "global_on_local", "flips", "bwt"]
    raw["tracking"] = {"uri": uri, "experiment": "rel"}
    raw["checkpoint"] = {"every": 1, "dir": str(tmp_path / ck)}
    return write_spec(tmp_path / f"spec-{ck}.yaml", raw)


def cli_proc(*args, cwd=None, **kw) -> AbstractContextManager[subprocess.Popen]:
    """``with cli_proc(*ARGS) as proc:`` ``fedreg ARGS`` in another process, killed when the block ends
    (:func:`testhelpers.child`)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return child(
        [sys.executable, "-m", "fedreg", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def steps_logged(uri: str, key: str = "accuracy/global") -> int:
    try:
        c = MlflowClient(uri)
        exp = c.get_experiment_by_name("rel")
        runs = c.search_runs([exp.experiment_id]) if exp else []
        return max((len({m.step for m in c.get_metric_history(r.info.run_id, key)}) for r in runs), default=0)
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return 0


def histories(uri: str) -> dict[str, dict[int, float]]:
    c = MlflowClient(uri)
    (run,) = c.search_runs([c.get_experiment_by_name("rel").experiment_id])
    out = {}
    for key in run.data.metrics:
        if MetricNames().key_of(key) in (*TIMING_KEYS, *RUN_TIMES):  # timing differs between runs
            continue
        out[key] = {
            m.step: m.value for m in c.get_metric_history(run.info.run_id, key)
        }  # last value per step
    return out


def test_sigkill_then_resume_gives_identical_metrics(tmp_path, new_store):
    rounds = 25  # enough that the kill lands mid-run even when tracking lags behind training
    ref_uri = new_store(tmp_path / "ref.db")
    with cli_proc("run", str(small_spec(tmp_path, rounds, ref_uri, "ck-ref")), "--no-progress") as ref:
        _, err = ref.communicate(timeout=300)
        assert ref.returncode == 0, err

    uri = new_store(tmp_path / "killed.db")
    spec = small_spec(tmp_path, rounds, uri, "ck")
    with cli_proc("run", str(spec), "--no-progress") as proc:
        wait_for(lambda: steps_logged(uri) >= 4 or proc.poll() is not None, 240, "round 4")
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    done_before = steps_logged(uri)
    assert 4 <= done_before < rounds

    with cli_proc("run", str(spec), "--resume", "--no-progress") as resumed:
        out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming run" in out

    c = MlflowClient(uri)
    (run,) = c.search_runs([c.get_experiment_by_name("rel").experiment_id])  # the same MLflow run continued
    assert run.info.status == "FINISHED"
    got, want = histories(uri), histories(ref_uri)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == want[key], key
    assert sorted(got["accuracy/global"]) == list(range(1, rounds + 1))


def test_resume_of_another_spec_is_refused(tmp_path, new_store):
    uri = new_store(tmp_path / "a.db")
    spec = small_spec(tmp_path, 30, uri)
    with cli_proc("run", str(spec), "--no-progress") as proc:
        wait_for(lambda: steps_logged(uri) >= 2 or proc.poll() is not None, 240, "round 2")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    out = run_child(
        [sys.executable, "-m", "fedreg", "run", str(spec), "--resume", "--set", "training.optimizer.lr=0.5"],
        300,
    )
    assert out.returncode == 2
    assert "belongs to another spec: training.optimizer.lr: 0.05 -> 0.5" in out.stderr
    assert "Traceback" not in out.stderr


# --- a real tracking server that goes away ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, folder: Path, port: int):
        self.folder, self.port, self.proc = folder, port, None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = start_child(  # in its own process group: the server's workers stop with it
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.folder / 'srv.db'}",
                "--artifacts-destination",
                str(self.folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            cwd=self.folder,
            # no MLflow job runner (its consumer processes; fedreg uses no MLflow jobs, as in fedreg ui)
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(self.healthy, 120, "mlflow server")
        except BaseException:
            end_child(self.proc)
            raise

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self):
        """SIGTERM to the server's process group, as an operator stops it; whatever is left is then killed."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
        finally:
            end_child(self.proc)
        wait_for(lambda: not self.healthy(), 30, "server down")


@pytest.fixture
def server(tmp_path, new_store):
    new_store(tmp_path / "srv.db")  # the server's store, empty (its schema made once per session)
    srv = MlflowServer(tmp_path, free_port())
    srv.start()
    yield srv
    srv.stop()


def checkpoint_round(folder: Path) -> int:
    """The round of the newest checkpoint under ``folder`` (0 if none can be read yet)."""
    files = list(folder.rglob("*.pt"))
    if not files:
        return 0
    try:
        return int(torch.load(files[0], weights_only=True)["round"])
    except Exception:  # noqa: BLE001 - being replaced right now
        return 0


def test_tracking_outage_training_continues_and_metrics_are_flushed(tmp_path, server):
    rounds = 40  # long enough to outlast the server's stop and restart
    spec = small_spec(tmp_path, rounds, server.uri)
    with cli_proc("run", str(spec), "--no-progress") as proc:
        wait_for(lambda: steps_logged(server.uri) >= 2 or proc.poll() is not None, 240, "round 2")
        server.stop()
        assert proc.poll() is None, "the run ended before the server went away"
        ck = tmp_path / "ck"
        down_at = checkpoint_round(ck)
        wait_for(
            lambda: checkpoint_round(ck) >= down_at + 2 or proc.poll() is not None,
            120,
            "training to go on while the server is down",
        )
        assert checkpoint_round(ck) >= down_at + 2
        server.start()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "the tracking server was unreachable" in out
    c = MlflowClient(server.uri)
    (run,) = c.search_runs([c.get_experiment_by_name("rel").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted({m.step for m in c.get_metric_history(run.info.run_id, "accuracy/global")}) == list(
        range(1, rounds + 1)
    )
    assert "global acc final pct" in run.data.metrics
    assert {a.path for a in c.list_artifacts(run.info.run_id)} >= {"metrics", "model", "partition", "plots"}


def test_undelivered_calls_are_spooled_and_replayed(tmp_path, server):
    rounds = 20
    spec = small_spec(tmp_path, rounds, server.uri)
    with cli_proc("run", str(spec), "--no-progress", cwd=tmp_path) as proc:
        wait_for(lambda: steps_logged(server.uri) >= 1 or proc.poll() is not None, 240, "round 1")
        server.stop()
        assert proc.poll() is None, "the run ended before the server went away"
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "could not be delivered" in out
    spool = out.split("fedreg replay ")[1].split()[0]
    server.start()
    rep = run_child([sys.executable, "-m", "fedreg", "replay", spool], 300, cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    c = MlflowClient(server.uri)
    (run,) = c.search_runs([c.get_experiment_by_name("rel").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted({m.step for m in c.get_metric_history(run.info.run_id, "accuracy/global")}) == list(
        range(1, rounds + 1)
    )
    assert "model" in {a.path for a in c.list_artifacts(run.info.run_id)}


# --- failing and diverging clients --------------------------------------------------------------------------


class Flaky(CrossEntropy):
    name = "test_flaky"
    victims: set = set()

    def loss(self, model, x, y, ctx):
        if ctx.client_id in self.victims:
            raise RuntimeError(f"disk on client {ctx.client_id} is gone")
        return super().loss(model, x, y, ctx)


class Exploder(CrossEntropy):
    name = "test_exploder"
    victims: set = set()

    def loss(self, model, x, y, ctx):
        loss = super().loss(model, x, y, ctx)
        return loss * float("inf") if ctx.client_id in self.victims else loss


@hookimpl
def fedreg_register_objectives(register):
    register(Flaky)
    register(Exploder)


PLUGINS = [("faults", sys.modules[__name__])]


@pytest.fixture(autouse=True)
def no_victims():
    Flaky.victims, Exploder.victims = set(), set()
    yield


def test_client_failure_stops_by_default():
    Flaky.victims = {0, 1, 2, 3}
    with pytest.raises(
        ComponentFailure,
        match=r"objective 'test_flaky' .*loss raised RuntimeError: disk on client "
        r"\d is gone \(round 1, client \d\)",
    ):
        tiny_federation({"training.objective": "test_flaky"}, plugins=PLUGINS)


def test_client_failure_skip_policy_logs_and_continues():
    Flaky.victims = {0}
    res = tiny_federation(
        {
            "training.objective": "test_flaky",
            "federation.rounds": 6,
            "faults": {"client_failure": "skip", "min_clients": 1},
        },
        plugins=PLUGINS,
    )
    failed = [h["clients_failed"] for h in res.history]
    assert sum(failed) >= 1 and all(h["clients_ok"] + h["clients_failed"] == 2 for h in res.history)
    assert 0 not in res.client_states  # a failed client's state is not committed


def test_too_few_successful_clients():
    Flaky.victims = {0, 1, 2, 3}
    with pytest.raises(
        FedregError, match=r"round 1: 0 of 2 clients succeeded, fewer than faults.min_clients=1"
    ):
        tiny_federation(
            {"training.objective": "test_flaky", "faults": {"client_failure": "skip"}}, plugins=PLUGINS
        )


def test_divergence_rejected_never_aggregated():
    Exploder.victims = {0, 1, 2, 3}
    with pytest.raises(FedregError, match="0 of 2 clients succeeded"):
        tiny_federation({"training.objective": "test_exploder"}, plugins=PLUGINS)
    Exploder.victims = {1}
    res = tiny_federation({"training.objective": "test_exploder", "federation.rounds": 5}, plugins=PLUGINS)
    assert all(torch.isfinite(v).all() for v in res.global_state.values())
    assert sum(h["clients_failed"] for h in res.history) >= 1


def test_divergence_stop_policy_names_client_round_component():
    Exploder.victims = {0, 1, 2, 3}
    with pytest.raises(
        FedregError, match=r"client \d diverged in round 1: objective 'test_exploder' .*loss is inf"
    ):
        tiny_federation(
            {"training.objective": "test_exploder", "faults": {"divergence": "stop"}}, plugins=PLUGINS
        )
