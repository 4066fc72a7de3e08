"""Robust aggregators (median, trimmed mean, Krum) and server optimizers (FedAvgM, FedAdam)."""

from __future__ import annotations

import io
import math
import sys

import pytest
import torch
from pydantic import ValidationError

import fedreg
from fedreg.components import ClientInfo, ClientUpdate, RunInfo
from fedreg.errors import FedregError, SpecError
from fedreg.testing import initial_accuracy, tiny_federation
from fedreg_baselines.fedadam import FedAdam, server_adam_step
from fedreg_baselines.fedavgm import FedAvgM, server_momentum_step
from fedreg_baselines.krum import Krum, krum_scores, krum_select, multi_krum
from fedreg_baselines.median import CoordinateMedian, coordinate_median
from fedreg_baselines.trimmed_mean import TrimmedMean, trimmed_mean

CLASSES = (CoordinateMedian, TrimmedMean, Krum, FedAvgM, FedAdam)


@fedreg.hookimpl
def fedreg_register_aggregators(register):
    for cls in CLASSES:
        register(cls)


PLUGINS = [("robust", sys.modules[__name__])]


pytestmark = pytest.mark.usefixtures("one_thread")


def run_info(clients_per_round: int, num_clients: int = 8) -> RunInfo:
    clients = tuple(ClientInfo(i, 10, 2, (5, 5)) for i in range(num_clients))
    return RunInfo(clients, num_classes=2, clients_per_round=clients_per_round, rounds=1, seed=0)


def states_of(rows, key="w"):
    return [
        {key: torch.tensor(r, dtype=torch.float32), "count": torch.tensor(i + 3)} for i, r in enumerate(rows)
    ]


# ---------------------------------------------------------------------------------------------------------
# Median and trimmed mean
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4])
def test_median_of_identical_updates_is_that_update(n):
    g = torch.Generator().manual_seed(0)
    state = {
        "a": torch.randn(7, 3, generator=g),
        "b": torch.randn(5, generator=g).double(),
        "h": torch.randn(4, generator=g).half(),
        "count": torch.tensor(11),
    }
    out = coordinate_median([{k: v.clone() for k, v in state.items()} for _ in range(n)])
    for k, v in state.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v), k


def test_median_on_hand_made_values():
    odd = coordinate_median(states_of([[1.0, 5.0, -2.0], [2.0, 0.0, 10.0], [9.0, 1.0, 0.0]]))
    assert odd["w"].tolist() == [2.0, 1.0, 0.0]
    assert odd["count"].item() == 3  # non-float tensors come from the first state
    even = coordinate_median(states_of([[1.0, 5.0], [2.0, 0.0], [9.0, 1.0], [4.0, -7.0]]))
    assert even["w"].tolist() == [3.0, 0.5]  # mean of the two middle values
    m2 = coordinate_median(
        [
            {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])},
            {"w": torch.tensor([[0.0, 8.0], [3.0, -4.0]])},
            {"w": torch.tensor([[5.0, 6.0], [3.0, 0.0]])},
        ]
    )
    assert m2["w"].tolist() == [[1.0, 6.0], [3.0, 0.0]]


def test_trimmed_mean_on_hand_made_values():
    rows = [[1.0, -50.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0]]
    out = trimmed_mean(states_of(rows), beta=0.2)  # floor(0.2 * 5) = 1 dropped at each end
    assert out["w"].tolist() == [3.0, 1.0]
    assert out["count"].item() == 3
    assert trimmed_mean(states_of(rows), beta=0.0)["w"].tolist() == pytest.approx([22.0, -8.8])
    # floor(0.39 * 5) = 1 too; floor(0.4 * 5) = 2 leaves the median
    assert trimmed_mean(states_of(rows), beta=0.39)["w"].tolist() == [3.0, 1.0]
    assert trimmed_mean(states_of(rows), beta=0.4)["w"].tolist() == [3.0, 1.0]


def test_trimmed_mean_rejects_beta_that_leaves_nothing():
    with pytest.raises(ValueError, match=r"0 <= beta < 0.5.*leaves none"):
        trimmed_mean(states_of([[1.0], [2.0]]), beta=0.5)
    with pytest.raises(ValueError, match="beta"):
        trimmed_mean(states_of([[1.0], [2.0]]), beta=float("nan"))
    with pytest.raises(ValidationError):
        TrimmedMean.Params(beta=0.5)
    with pytest.raises(ValidationError):
        TrimmedMean.Params(beta=-0.1)
    assert TrimmedMean().params.beta == 0.1


def test_trimmed_mean_warns_when_it_trims_nothing():
    with pytest.warns(UserWarning, match="trims nothing"):
        TrimmedMean().start_run(run_info(clients_per_round=5))  # floor(0.1 * 5) = 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrimmedMean().start_run(run_info(clients_per_round=10))
        TrimmedMean(TrimmedMean.Params(beta=0.0)).start_run(run_info(clients_per_round=5))


# ---------------------------------------------------------------------------------------------------------
# One scaled (Byzantine) update among honest ones
# ---------------------------------------------------------------------------------------------------------


def attacked_states(n_honest=5, scale=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    center = {"w": torch.randn(40, generator=g), "b": torch.randn(3, 2, generator=g)}
    honest = [
        {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in center.items()} for _ in range(n_honest)
    ]
    bad = {k: v * scale for k, v in honest[0].items()}
    return honest, honest + [bad]


def dist(a, b) -> float:
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a))


def test_robust_rules_stay_near_the_honest_mean_under_a_scaled_update():
    honest, states = attacked_states()
    honest_mean = {k: torch.stack([s[k] for s in honest]).mean(0) for k in honest[0]}
    plain = {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}
    err_plain = dist(plain, honest_mean)
    assert err_plain > 50  # the attacker drags the plain mean away (|center| ~ 7, times 99/6)
    err_median = dist(coordinate_median(states), honest_mean)
    err_trim = dist(trimmed_mean(states, beta=0.2), honest_mean)  # n=6: one dropped at each end
    krum_state, picked = multi_krum(states, f=1, m=1)
    err_krum = dist(krum_state, honest_mean)
    mkrum_state, mpicked = multi_krum(states, f=1, m=3)
    err_mkrum = dist(mkrum_state, honest_mean)
    # honest spread: 0.01 per coordinate over 46 coordinates, so about 0.07 from one client to the mean
    for err in (err_median, err_trim, err_krum, err_mkrum):
        assert err < 0.15
        assert err < 0.005 * err_plain
    assert 5 not in picked and 5 not in mpicked


def test_krum_select_picks_honest_clients():
    for seed in range(3):
        _, states = attacked_states(n_honest=6, seed=seed)
        # the attacker in the middle of the list, and a second one with a different scale
        states = states[:3] + [states[-1]] + states[3:-1] + [{k: -3 * v for k, v in states[0].items()}]
        bad = {3, 7}
        assert len(states) == 8
        chosen = krum_select(states, f=2, m=6)
        assert len(chosen) == 6 and not bad & set(chosen)
        scores = krum_scores(states, f=2)
        assert scores.dtype == torch.float64
        assert min(scores[b] for b in bad) > max(scores[i] for i in chosen)
        assert krum_select(states, f=2, m=1) == chosen[:1]


def test_krum_scores_by_hand():
    # four points on a line: 0, 1, 3, 10; n=4 < 2f+3 = 5 for f=1: refused
    states = [{"w": torch.tensor([x])} for x in (0.0, 1.0, 3.0, 10.0)]
    with pytest.raises(ValueError, match="2f\\+3 = 5"):
        krum_scores(states, f=1)
    # f=0: nearest n-f-2 = 2 others, squared distances
    assert krum_scores(states, f=0).tolist() == [1 + 9, 1 + 4, 4 + 9, 49 + 81]
    assert krum_select(states, f=0, m=2) == [1, 0]
    with pytest.raises(ValueError, match="m=5"):
        krum_select(states, f=0, m=5)


def test_krum_start_run_names_the_numbers_and_the_fix():
    with pytest.raises(FedregError) as exc:
        Krum().start_run(run_info(clients_per_round=4))
    msg = str(exc.value)
    assert "f=1" in msg and "2f+3 = 5" in msg and "clients_per_round is 4" in msg
    assert "raise federation.clients_per_round to 5" in msg and "lower f to 0" in msg
    with pytest.raises(FedregError, match="lower f to 1 or less"):
        Krum(Krum.Params(f=2)).start_run(run_info(clients_per_round=6))
    with pytest.raises(FedregError, match="fewer than 3 clients"):
        Krum(Krum.Params(f=0)).start_run(run_info(clients_per_round=2))
    with pytest.raises(FedregError, match="m=6"):
        Krum(Krum.Params(m=6)).start_run(run_info(clients_per_round=5))
    Krum().start_run(run_info(clients_per_round=5))
    Krum(Krum.Params(f=2, m=7)).start_run(run_info(clients_per_round=7))
    with pytest.raises(ValidationError):
        Krum.Params(f=-1)
    with pytest.raises(ValidationError):
        Krum.Params(m=0)


def test_krum_refuses_a_federation_with_too_few_clients_per_round():
    # caught when the spec is validated, before any data is loaded, at the component's path
    with pytest.raises(SpecError) as exc:
        tiny_federation({"federation.aggregation": "krum", "metrics": ["global_accuracy"]}, plugins=PLUGINS)
    (issue,) = exc.value.issues
    assert issue.path == "federation.aggregation"
    assert "clients_per_round is 2" in issue.message


def test_krum_component_records_selected_client_ids():
    _, states = attacked_states()
    updates = [ClientUpdate(client_id=10 + i, num_samples=5, state=s) for i, s in enumerate(states)]
    agg = Krum(Krum.Params(f=1, m=2))
    agg.start_run(run_info(clients_per_round=6))
    out = agg.aggregate(1, states[0], updates, [])
    assert len(agg.last_selected) == 2 and 15 not in agg.last_selected
    assert set(out) == set(states[0])


# ---------------------------------------------------------------------------------------------------------
# Server optimizers
# ---------------------------------------------------------------------------------------------------------


def test_server_momentum_step_by_hand():
    prev = {"w": torch.tensor([1.0, 2.0]), "count": torch.tensor(1)}
    avg = {"w": torch.tensor([0.5, 2.0]), "count": torch.tensor(4)}
    new, vel = server_momentum_step(prev, avg, {}, server_lr=1.0, momentum=0.9)
    assert vel["w"].tolist() == [0.5, 0.0] and vel["w"].dtype == torch.float64
    assert new["w"].tolist() == [0.5, 2.0] and new["w"].dtype == torch.float32
    assert new["count"].item() == 4 and "count" not in vel  # non-float from the average, no step
    new2, vel2 = server_momentum_step(
        new, {"w": torch.tensor([0.25, 2.0]), "count": torch.tensor(5)}, vel, server_lr=0.5, momentum=0.9
    )
    # v = 0.9 * 0.5 + 0.25 = 0.7 ; new = 0.5 - 0.5 * 0.7 = 0.15
    assert vel2["w"].tolist() == pytest.approx([0.7, 0.0])
    assert new2["w"].tolist() == pytest.approx([0.15, 2.0])
    assert vel["w"].tolist() == [0.5, 0.0]  # inputs are not modified


def test_server_adam_step_by_hand():
    lr, b1, b2, tau = 0.01, 0.9, 0.99, 1e-3
    prev = {"w": torch.tensor([1.0, -2.0]), "count": torch.tensor(0)}
    avg = {"w": torch.tensor([1.5, -2.0]), "count": torch.tensor(2)}
    # the paper's Algorithm 2: no bias correction, v from tau^2
    new, m, v = server_adam_step(prev, avg, {}, {}, lr, b1, b2, tau, v0=tau * tau)
    # d = [0.5, 0]; m = 0.1 d = [0.05, 0]; v = 0.99 tau^2 + 0.01 d^2 = [0.0025 + 9.9e-7, 9.9e-7]
    assert m["w"].tolist() == pytest.approx([0.05, 0.0])
    assert v["w"].tolist() == pytest.approx([0.00250099, 9.9e-7], rel=1e-12)
    w0 = 1.0 + 0.01 * 0.05 / (math.sqrt(0.00250099) + 0.001)  # = 1.0098039...
    assert new["w"].tolist() == pytest.approx([w0, -2.0], rel=1e-7)
    assert new["w"].dtype == torch.float32 and new["count"].item() == 2
    # second step: d = [w0 - ... ] from a new average
    avg2 = {"w": torch.tensor([1.0, -1.0]), "count": torch.tensor(3)}
    new2, m2, v2 = server_adam_step(new, avg2, m, v, lr, b1, b2, tau, v0=tau * tau)
    prev0 = float(new["w"][0])
    d = [1.0 - prev0, -1.0 - (-2.0)]
    m_exp = [0.9 * 0.05 + 0.1 * d[0], 0.1 * d[1]]
    v_exp = [0.99 * 0.00250099 + 0.01 * d[0] ** 2, 0.99 * 9.9e-7 + 0.01 * d[1] ** 2]
    assert m2["w"].tolist() == pytest.approx(m_exp, rel=1e-12)
    assert v2["w"].tolist() == pytest.approx(v_exp, rel=1e-12)
    w_exp = [
        prev0 + lr * m_exp[0] / (math.sqrt(v_exp[0]) + tau),
        -2.0 + lr * m_exp[1] / (math.sqrt(v_exp[1]) + tau),
    ]
    assert new2["w"].tolist() == pytest.approx(w_exp, rel=1e-6)


def toy_updates(round_seed: int, n: int = 3):
    g = torch.Generator().manual_seed(round_seed)
    return [
        ClientUpdate(
            client_id=i,
            num_samples=10 + i,
            state={
                "w": torch.randn(4, 3, generator=g),
                "b": torch.randn(3, generator=g),
                "count": torch.tensor(round_seed),
            },
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("cls", [FedAvgM, FedAdam])
def test_server_state_round_trip(cls):
    g0 = {"w": torch.zeros(4, 3), "b": torch.zeros(3), "count": torch.tensor(0)}
    agg = cls()
    assert agg.state_dict()["steps"] == 0
    state = g0
    for r in (1, 2):
        state = agg.aggregate(r, state, toy_updates(r), [])
    sd = agg.state_dict()
    assert sd["steps"] == 2
    for slot in cls.slots:
        assert set(sd[slot]) == {"w", "b"}  # tensors by parameter name, floating ones only
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    restored = cls()
    restored.load_state_dict(torch.load(buf))
    sd2 = restored.state_dict()
    assert sd2["steps"] == sd["steps"]
    for slot in cls.slots:
        for k in sd[slot]:
            assert torch.equal(sd[slot][k], sd2[slot][k]) and sd2[slot][k].dtype == sd[slot][k].dtype
    # the restored aggregator continues exactly like the original
    ups = toy_updates(3)
    a, b = agg.aggregate(3, state, ups, []), restored.aggregate(3, state, ups, [])
    for k in a:
        assert torch.equal(a[k], b[k])
    # state_dict returns copies, load_state_dict takes copies
    sd[cls.slots[0]]["w"].add_(1.0)
    assert not torch.equal(sd[cls.slots[0]]["w"], agg.state_dict()[cls.slots[0]]["w"])
    with pytest.raises(ValueError, match="unknown state keys"):
        cls().load_state_dict({"bogus": {}})
    empty = cls()
    empty.load_state_dict({})
    assert empty.state_dict() == {"steps": 0, **{s: {} for s in cls.slots}}


def test_server_optimizers_average_by_sample_counts():
    ups = [ClientUpdate(0, 1, {"w": torch.tensor([0.0])}), ClientUpdate(1, 3, {"w": torch.tensor([4.0])})]
    prev = {"w": torch.tensor([1.0])}
    out = FedAvgM(FedAvgM.Params(momentum=0.0)).aggregate(1, prev, ups, [])
    assert out["w"].tolist() == [3.0]  # (1*0 + 3*4) / 4
    p = FedAdam.Params()
    assert (p.server_lr, p.beta1, p.beta2, p.tau, p.bias_correction) == (1e-2, 0.9, 0.999, 1e-3, True)
    q = FedAvgM.Params()
    assert (q.server_lr, q.momentum) == (1.0, 0.9)


FAST = {"metrics": ["global_accuracy"], "model.params.hidden": 16}


def test_fedavgm_without_momentum_is_fedavg_exactly():
    over = {**FAST, "federation.rounds": 2}
    ref = tiny_federation(over, plugins=PLUGINS)
    got = tiny_federation(
        {
            **over,
            "federation.aggregation": {"name": "fedavgm", "params": {"momentum": 0.0, "server_lr": 1.0}},
        },
        plugins=PLUGINS,
    )
    assert ref.global_state is not None and set(ref.global_state) == set(got.global_state)
    for k, v in ref.global_state.items():
        assert torch.equal(v, got.global_state[k]), k
    # with momentum the second round differs
    mom = tiny_federation({**over, "federation.aggregation": "fedavgm"}, plugins=PLUGINS)
    assert any(not torch.equal(v, mom.global_state[k]) for k, v in ref.global_state.items())


# ---------------------------------------------------------------------------------------------------------
# Each method trains
# ---------------------------------------------------------------------------------------------------------

TRAIN = {
    **FAST,
    "data.num_clients": 6,
    "federation.clients_per_round": 5,
    "federation.rounds": 6,
    "training.optimizer.momentum": 0.0,
    "training.optimizer.lr": 0.1,
}


@pytest.fixture(scope="module")
def start_acc():
    # the initial model depends on seed and model only; initial_accuracy resolves with the installed plugins
    return initial_accuracy(TRAIN)


@pytest.mark.parametrize(
    "aggregation",
    [
        "median",
        {"name": "trimmed_mean", "params": {"beta": 0.2}},  # floor(0.2 * 5) = 1 trimmed at each end
        "krum",
        {"name": "krum", "params": {"m": 3}},
        "fedavgm",
        "fedadam",
    ],
    ids=["median", "trimmed_mean", "krum", "multi_krum", "fedavgm", "fedadam"],
)
def test_method_trains(aggregation, start_acc):
    res = tiny_federation({**TRAIN, "federation.aggregation": aggregation}, plugins=PLUGINS)
    final = res.final["final_global_acc"]
    assert final > start_acc + 0.2, (final, start_acc)


def test_components_describe_their_papers():
    papers = {
        "median": "Yin",
        "trimmed_mean": "Yin",
        "krum": "Blanchard",
        "fedavgm": "Hsu",
        "fedadam": "Reddi",
    }
    for cls in CLASSES:
        assert papers[cls.name] in cls.describe()
        assert "\n" not in cls.describe() and len(cls.describe()) < 130
        assert "aggregate" in cls.implemented_hooks()
    assert "start_run" in Krum.implemented_hooks()
    assert {"state_dict", "load_state_dict"} <= set(FedAdam.implemented_hooks())
