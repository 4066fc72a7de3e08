"""Global-FL baselines: exact method-level checks and small federations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedreg.testing import initial_accuracy, tiny_federation
from fedreg_baselines.feddyn import feddyn_server_update
from fedreg_baselines.fedntd import not_true_distillation, not_true_logits
from fedreg_baselines.moon import moon_contrastive
from fedreg_baselines.scaffold import scaffold_client_control, scaffold_server_control


def states_equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_fedprox_mu_zero_equals_fedavg_to_the_bit():
    a = tiny_federation({"federation.rounds": 2})
    b = tiny_federation(
        {"federation.rounds": 2, "training.objective": {"name": "fedprox", "params": {"mu": 0.0}}}
    )
    c = tiny_federation(
        {"federation.rounds": 2, "training.objective": {"name": "fedprox", "params": {"mu": 1.0}}}
    )
    assert states_equal(a.global_state, b.global_state)
    assert not states_equal(a.global_state, c.global_state)


def test_scaffold_first_round_equals_fedavg():
    """With no control variates yet, SCAFFOLD's first round is FedAvg with SCAFFOLD's uniform weights."""
    uniform = {"federation.aggregation": {"name": "fedavg", "params": {"weighting": "uniform"}}}
    a = tiny_federation({"federation.rounds": 1, **uniform})
    b = tiny_federation(
        {"federation.rounds": 1, "training.objective": "scaffold", "federation.aggregation": "scaffold"}
    )
    assert states_equal(a.global_state, b.global_state)
    a3 = tiny_federation({"federation.rounds": 3, **uniform})
    b3 = tiny_federation(
        {"federation.rounds": 3, "training.objective": "scaffold", "federation.aggregation": "scaffold"}
    )
    assert not states_equal(a3.global_state, b3.global_state)  # control variates act from round 2


@pytest.mark.parametrize("method", ["scaffold", "feddyn"])
def test_paired_objective_needs_its_aggregator(method):
    from fedreg.errors import SpecError

    with pytest.raises(SpecError) as ei:
        tiny_federation({"training.objective": method})
    (issue,) = ei.value.issues
    assert issue.path == "training.objective"
    assert f"needs the '{method}' aggregation" in issue.message


def test_scaffold_control_updates_hand_computed():
    c_i = {"w": torch.tensor([0.5])}
    c = {"w": torch.tensor([0.25])}
    x = {"w": torch.tensor([1.0])}
    y = {"w": torch.tensor([0.0])}
    new = scaffold_client_control(c_i, c, x, y, steps=4, lr=0.5)
    assert float(new["w"]) == pytest.approx(0.5 - 0.25 + 1.0 / (4 * 0.5))
    srv = scaffold_server_control(c, [{"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}], num_clients=8)
    assert float(srv["w"]) == pytest.approx(0.25 + 4.0 / 8)


def test_feddyn_server_update_hand_computed():
    """The authors' server: drift += (1/N) sum (theta_k - theta); theta = mean theta_k + drift."""
    drift = {"w": torch.tensor([0.5])}
    prev = {"w": torch.tensor([1.0])}
    new, d2 = feddyn_server_update(
        drift, prev, [{"w": torch.tensor([2.0])}, {"w": torch.tensor([4.0])}], num_clients=10
    )
    assert float(d2["w"]) == pytest.approx(0.5 + (1.0 + 3.0) / 10)
    assert float(new["w"]) == pytest.approx(3.0 + float(d2["w"]))


def test_not_true_logits_and_distillation():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert torch.equal(not_true_logits(logits, torch.tensor([1, 2])), torch.tensor([[1.0, 3.0], [4.0, 5.0]]))
    z = torch.tensor([[0.0, 9.0, 1.0]])
    g = torch.tensor([[2.0, -9.0, 0.0]])
    y = torch.tensor([1])
    p_g = F.softmax(torch.tensor([2.0, 0.0]), 0)
    p_z = F.softmax(torch.tensor([0.0, 1.0]), 0)
    expected = float((p_g * (p_g.log() - p_z.log())).sum())
    assert float(not_true_distillation(z, g, y, 1.0)) == pytest.approx(expected, rel=1e-6)


def test_moon_contrastive_prefers_global():
    z = torch.tensor([[1.0, 0.0]])
    near, far = torch.tensor([[1.0, 0.1]]), torch.tensor([[-1.0, 0.0]])
    assert float(moon_contrastive(z, near, far, 0.5)) < float(moon_contrastive(z, far, near, 0.5))
    same = moon_contrastive(z, near, near, 0.5)
    assert float(same) == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-6)


METHODS = {
    "fedprox": {"training.objective": "fedprox"},
    "scaffold": {"training.objective": "scaffold", "federation.aggregation": "scaffold"},
    "feddyn": {"training.objective": "feddyn", "federation.aggregation": "feddyn"},
    "moon": {"training.objective": "moon"},
    "fedntd": {"training.objective": "fedntd"},
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains(method):
    over = {**METHODS[method], "federation.rounds": 3}
    res = tiny_federation(over)
    assert res.final["final_global_acc"] > initial_accuracy(over) + 0.2, res.history


def test_client_state_only_for_clients_that_have_it():
    plain = tiny_federation({"federation.rounds": 2})
    assert plain.client_states == {}
    moon = tiny_federation({"training.objective": "moon", "federation.rounds": 2})
    sampled = {int(r["round"]) for r in moon.history}
    assert sampled == {1, 2} and 1 <= len(moon.client_states) <= 4
    for state in moon.client_states.values():
        assert set(state) == {"prev"} and all(isinstance(v, torch.Tensor) for v in state["prev"].values())
