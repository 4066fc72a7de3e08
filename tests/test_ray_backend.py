"""The ``ray`` execution backend against a real local Ray (2 CPUs): same metrics as the local backend,
failures as data, user errors re-raised, worker counts and resources as the spec says."""

from __future__ import annotations

import os
import pickle
import sys

import pytest
import torch

from fedreg import hookimpl
from fedreg.backends.ray_backend import RayBackend, init_ray
from fedreg.clients import ClientRunner
from fedreg.errors import ComponentFailure, FedregError, PluginError
from fedreg.outputs import TIMING_KEYS
from fedreg.spec import ExecutionSpec
from fedreg.testing import _tiny_run, tiny_federation
from fedreg_baselines.fedavg import CrossEntropy

ray = pytest.importorskip("ray")  # the ray extra; without it these tests are skipped

pytestmark = pytest.mark.slow

DRIVER_PID = os.getpid()  # pickled with the test objectives: the value of the process running pytest


class Probe(CrossEntropy):
    """Cross-entropy that also records, in the client's state, which process trained it with how many
    threads (the state comes back from the worker with the result)."""

    name = "test_ray_probe"

    def finish(self, ctx):
        ctx.state["pid"] = os.getpid()
        ctx.state["threads"] = torch.get_num_threads()
        return super().finish(ctx)


class Faulty(Probe):
    """Round 2: client 0's loss raises. Round 3: client 1's worker process exits (never in the driver)."""

    name = "test_ray_faulty"

    def loss(self, model, x, y, ctx):
        if ctx.round == 2 and ctx.client_id == 0:
            raise RuntimeError("disk on client 0 is gone")
        if ctx.round == 3 and ctx.client_id == 1 and os.getpid() != DRIVER_PID:
            os._exit(3)
        return super().loss(model, x, y, ctx)


class BreaksContract(CrossEntropy):
    """A user error (FedregError) raised on the worker: it must reach the driver as itself."""

    name = "test_ray_user_error"

    def loss(self, model, x, y, ctx):
        raise PluginError(f"test_ray_user_error needs a broadcast key 'w' (client {ctx.client_id})")


@hookimpl
def fedreg_register_objectives(register):
    register(Probe)
    register(Faulty)
    register(BreaksContract)


PLUGINS = [("ray_test_plugins", sys.modules[__name__])]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module, 2 CPUs whatever the machine; the backend finds it and uses it. A Ray an
    earlier test left running in this process (a sweep with --sweep ray keeps its Ray until exit) is
    shut down first: this module's Ray has its own size."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    # the test objectives live in this module, which workers cannot import: ship them by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(autouse=True)
def same_arithmetic(one_thread):
    """The local reference runs on one thread and flushes denormals, as Ray workers with cpus_per_client: 1
    do (``fedreg run`` sets the flag once per process too)."""
    torch.set_flush_denormal(True)


def learning(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def test_component_failure_pickles():
    class Unpicklable(Exception):
        def __init__(self, a, b):  # Exception's pickling would call Unpicklable(msg): it does not fit
            super().__init__(f"{a}/{b}")

    comp = CrossEntropy()
    for original, expect in (
        (ValueError("bad batch"), ValueError("bad batch")),
        (Unpicklable(1, 2), RuntimeError("Unpicklable: 1/2")),
    ):
        exc = ComponentFailure(comp, "loss", 3, 7, original)
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is ComponentFailure and str(back) == str(exc)
        assert "loss raised" in str(back) and "(round 3, client 7)" in str(back)
        assert (back.method, back.round, back.client, back.detail) == ("loss", 3, 7, exc.detail)
        assert type(back.component) is CrossEntropy
        assert type(back.original) is type(expect) and str(back.original) == str(expect)
        assert back.__cause__ is back.original
    # a failure wrapping a failure
    nested = pickle.loads(pickle.dumps(ComponentFailure(comp, "train", 1, 0, exc)))
    assert isinstance(nested.original, ComponentFailure) and str(nested.original) == str(exc)


@pytest.mark.parametrize(
    "method",
    [
        {"training.objective": "test_ray_probe"},
        {"training.objective": "scaffold", "federation.aggregation": "scaffold"},
    ],
    ids=["fedavg", "scaffold"],
)
def test_same_metrics_as_local_backend(method):
    over = {**method, "federation.rounds": 3}  # 4 clients, 2 a round: some client trains twice
    local = tiny_federation(over, plugins=PLUGINS)
    remote = tiny_federation({**over, "execution": {"backend": "ray", "cpus_per_client": 1}}, plugins=PLUGINS)
    assert learning(remote.history) == learning(local.history)  # bit-identical floats
    assert all(torch.equal(remote.global_state[k], v) for k, v in local.global_state.items())
    assert remote.client_states.keys() == local.client_states.keys()
    for cid, state in local.client_states.items():
        if "c_i" in state:  # SCAFFOLD's control variates come back from the workers
            assert all(torch.equal(remote.client_states[cid]["c_i"][k], v) for k, v in state["c_i"].items())
        else:  # default: as many workers as CPUs (2), each on cpus_per_client threads
            assert state["pid"] == DRIVER_PID
            assert (
                remote.client_states[cid]["pid"] != DRIVER_PID and remote.client_states[cid]["threads"] == 1
            )
    if "pid" in next(iter(remote.client_states.values())):
        assert len({s["pid"] for s in remote.client_states.values()}) == 2


def test_failures_are_data_and_a_dead_worker_is_replaced():
    # every client every round; one worker holding both CPUs, so it trains on 2 threads
    over = {
        "training.objective": "test_ray_faulty",
        "federation.clients_per_round": 4,
        "faults": {"client_failure": "skip"},
        "execution": {"backend": "ray", "cpus_per_client": 2},
    }
    run = _tiny_run(over, PLUGINS, None, None)
    res = run.run()
    assert [(h["clients_ok"], h["clients_failed"]) for h in res.history] == [(4, 0), (3, 1), (3, 1)]
    (r2, r3) = run.failure_rows
    assert (r2["round"], r2["client"], r2["stage"]) == (2, 0, "loss")
    assert "loss raised RuntimeError: disk on client 0 is gone (round 2, client 0)" in r2["error"]
    assert (r3["round"], r3["client"], r3["stage"]) == (3, 1, "worker")
    assert r3["error"].startswith("worker for client 1 died: ") and r3["error"].endswith("(round 3)")
    assert {s["threads"] for s in res.client_states.values()} == {2}
    pids = {s["pid"] for s in res.client_states.values()}
    assert DRIVER_PID not in pids

    # under 'stop' the run ends with the component's own message, as on the local backend
    stop = {**over, "faults": {"client_failure": "stop"}}
    with pytest.raises(ComponentFailure) as local_exc:
        tiny_federation({**stop, "execution": {"backend": "local"}}, plugins=PLUGINS)
    with pytest.raises(ComponentFailure) as ray_exc:
        tiny_federation(stop, plugins=PLUGINS)
    assert str(ray_exc.value) == str(local_exc.value)
    assert str(ray_exc.value).startswith("objective 'test_ray_faulty' (plugin 'ray_test_plugins'")


def test_user_error_on_a_worker_is_raised_as_itself():
    with pytest.raises(PluginError) as exc:
        tiny_federation(
            {
                "training.objective": "test_ray_user_error",
                "federation.rounds": 1,
                "execution": {"backend": "ray", "workers": 1},
            },
            plugins=PLUGINS,
        )
    assert type(exc.value) is PluginError
    # the first client in job order, whichever worker finished first
    assert str(exc.value).startswith("test_ray_user_error needs a broadcast key 'w' (client ")


def test_worker_count_follows_resources():
    runner = ClientRunner(None, None, None)

    def count(clients_per_round=4, **ex):
        return RayBackend(ExecutionSpec(backend="ray", **ex), runner, clients_per_round).worker_count()

    assert count() == 2  # the cluster's 2 CPUs, one each
    assert count(clients_per_round=1) == 1  # never more than a round's clients
    assert count(cpus_per_client=2) == 1
    assert count(cpus_per_client=0.5) == 4
    assert count(workers=2, cpus_per_client=1) == 2
    with pytest.raises(
        FedregError,
        match=r"execution.workers=3 workers of 1 CPU each do not fit the Ray "
        r"cluster \(2 CPUs\)",
    ):
        count(workers=3)
    with pytest.raises(FedregError, match=r"a worker needs 4 CPU but the Ray cluster has 2 CPUs"):
        count(cpus_per_client=4)
    with pytest.raises(FedregError, match=r"needs 1 CPU and 1 GPU but the Ray cluster has 2 CPUs and 0 GPUs"):
        count(gpus_per_client=1)


def test_unreachable_cluster_is_a_plain_error(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    with pytest.raises(
        FedregError, match=r"could not join the Ray cluster at '127.0.0.1:1' .*ray start --head"
    ):
        init_ray("127.0.0.1:1")
