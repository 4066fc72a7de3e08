"""The ``flower`` execution backend (plugins/fedreg_flower): fedreg's components through Flower's
simulation runtime give the local backend's run, bit for bit; what travels in Flower records round-trips."""

from __future__ import annotations

import pytest
import torch

from fedreg.data import DataCache
from fedreg.outputs import RUN_TIMES, TIMING_KEYS
from fedreg.registry import get_registry
from fedreg.rounds import FederatedRun
from fedreg.spec import resolve
from fedreg.testing import NullTracker
from testhelpers import make_medmnist_npz

flwr = pytest.importorskip("flwr")  # the flower extra; without it these tests are skipped

METHODS = ["fedavg", "scaffold", "ditto", "fedkper"]


def spec(root, md5: str, method: str, backend: str) -> dict:
    return {
        "name": f"flower-{method}",
        "seed": 3,
        "data": {
            "dataset": {"name": "organcmnist", "params": {"md5": md5}},
            "root": str(root),
            "num_clients": 4,
            "partition": {"name": "dirichlet", "params": {"alpha": 0.5, "min_samples": 10}},
            "local_test": {"fraction": 0.2},
        },
        "model": {"name": "cnn", "params": {"hidden": 16}},
        "method": method,
        "training": {"local_epochs": 1, "batch_size": 16, "optimizer": {"lr": 0.05}},
        "federation": {"rounds": 3, "clients_per_round": 2},
        "metrics": [
            "global_accuracy",
            "local_accuracy",
            "global_on_local",
            "flips",
            "bwt",
            "personalization",
        ],
        "execution": {"backend": backend, "threads": 1, "cpus_per_client": 1},
        "checkpoint": {"every": 0},
    }


def federation(root, md5, method, backend):
    (rs,) = resolve(spec(root, md5, method, backend), get_registry())
    run = FederatedRun(rs, DataCache().get(rs), NullTracker(), run_id=f"eq-{method}", progress=False)
    return run, run.run()


def learning(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


@pytest.fixture(scope="module", autouse=True)
def one_simulation():
    """The module's runs share one simulation (as the runs of one invocation do); stopped at the end, so
    that the next module's local Ray starts afresh."""
    from fedreg_flower import simulation

    yield
    simulation.stop()


@pytest.fixture(autouse=True)
def same_arithmetic(one_thread):
    torch.set_flush_denormal(True)  # as fedreg's worker processes and the ClientApp do


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_simulation_equals_the_local_backend(tmp_path, method):
    md5 = make_medmnist_npz(tmp_path, "organcmnist", n_train=240, n_test=60)
    local_run, local = federation(tmp_path, md5, method, "local")
    flower_run, flower = federation(tmp_path, md5, method, "flower")
    # the same clients sampled in each round, each with the same train loss and report
    assert flower_run.per_client_rows == local_run.per_client_rows
    assert learning(flower.history) == learning(local.history)  # every per-round metric, exactly
    assert {k: v for k, v in flower.final.items() if k not in RUN_TIMES} == {
        k: v for k, v in local.final.items() if k not in RUN_TIMES
    }
    assert flower.global_state.keys() == local.global_state.keys()
    assert all(torch.equal(flower.global_state[k], v) for k, v in local.global_state.items())
    assert flower.client_states == {}  # the clients' states stayed on their nodes


# --- what travels in Flower records, without a federation ----------------------------------------------


def test_weights_travel_bit_for_bit_in_their_dtypes():
    from fedreg_flower import codec

    g = torch.Generator().manual_seed(0)
    state = {
        "conv.weight": torch.randn(4, 1, 3, 3, generator=g),
        "bn.running_mean": torch.randn(4, generator=g, dtype=torch.float64),
        "bn.num_batches_tracked": torch.tensor(7),
        "head.weight": torch.randn(3, 4, generator=g).to(torch.bfloat16),
    }
    back = codec.record_weights(codec.weights_record(state), like=state)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_data_round_trips_and_code_is_refused():
    from fedreg.components import ClientInfo, RunInfo, SiteSummary
    from fedreg.errors import PluginError
    from fedreg_flower import codec

    value = {
        "c": torch.arange(3.0),
        "kept_keys": ["head.weight"],
        "n": 3,
        "mu": 0.5,
        "t": (1, "x"),
        "z": None,
    }
    back = codec.unpack(codec.pack(value))
    assert back.keys() == value.keys() and torch.equal(back["c"], value["c"])
    assert {k: v for k, v in back.items() if k != "c"} == {k: v for k, v in value.items() if k != "c"}
    info = RunInfo((ClientInfo(0, 10, 2, (4, 6)), ClientInfo(1, 8, 2, (8, 0))), 2, 1, 5, 3)
    assert codec.dict_run_info(codec.unpack(codec.pack(codec.run_info_dict(info)))) == info
    summary = SiteSummary({"flips": {"nfr": 0.25, "pfr": 0.5}, "local_accuracy": {"acc": 1.0}, "bwt": {}})
    record = codec.numbers_record(summary)
    assert codec.record_numbers(record, ["bwt"]) == summary  # numbers only: a MetricRecord of floats
    # an object with code (here a class instance) is not loaded on the other side
    with pytest.raises(PluginError, match="holds objects other than tensors"):
        codec.unpack(codec.pack({"info": info}), "client state")


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_a_resumed_run_gets_its_clients_states_back_from_the_checkpoint(tmp_path):
    """Ditto's personal models live on the nodes; a checkpoint gathers them and a resumed run sends them back
    (here to nodes that never saw the resumed run's id, as after a SuperNode restart): the resumed run ends
    as an uninterrupted one does."""
    from fedreg import checkpoint

    md5 = make_medmnist_npz(tmp_path, "organcmnist", n_train=240, n_test=60)
    _, reference = federation(tmp_path, md5, "ditto", "local")
    (rs,) = resolve(spec(tmp_path, md5, "ditto", "flower") | {"checkpoint": {"every": 1}}, get_registry())
    fed, ck = DataCache().get(rs), tmp_path / "run.pt"

    def stop_after_round_2(r, scalars):
        if r == 2:
            raise Interrupt

    first = FederatedRun(
        rs, fed, NullTracker(), "before", progress=False, checkpoint_file=ck, on_round=stop_after_round_2
    )
    with pytest.raises(Interrupt):
        first.run()
    saved = checkpoint.load(ck)
    assert saved["round"] == 2 and saved["client_states"]  # gathered from the nodes
    trained = [s for s in saved["client_states"].values() if s["client"]]
    assert trained and all(set(s["client"]) == {"personal"} for s in trained)
    # in simulation the metrics' site state (flips: each client's last per-sample correctness) is kept too
    assert any(torch.is_tensor(s["site"].get("flips", {}).get("prev")) for s in trained)
    resumed = FederatedRun(
        rs, fed, NullTracker(), "after", progress=False, checkpoint_file=ck, resume=saved, logged_through=2
    )
    result = resumed.run()
    assert learning(result.history) == learning(reference.history)
    assert all(torch.equal(result.global_state[k], v) for k, v in reference.global_state.items())
