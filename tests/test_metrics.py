"""Metric definitions on constructed sequences of predictions."""

from __future__ import annotations

import math

import pytest
import torch

from fedreg.components import Predictions, RoundEvaluation
from fedreg_metrics.components import BackwardTransfer, Flips, GlobalOnLocalAccuracy, LocalAccuracy
from fedreg_metrics.formulas import backward_transfer, balanced_accuracy, flip_rates


def preds(labels, predicted):
    labels = torch.tensor(labels)
    return Predictions(labels, torch.tensor(predicted), torch.zeros(len(labels)))


def test_flip_rates_hand_computed():
    prev = [True, True, False, False, True]
    now = [True, False, True, False, False]
    r = flip_rates(prev, now)
    assert r["nfr"] == pytest.approx(2 / 5)
    assert r["pfr"] == pytest.approx(1 / 5)
    assert r["consistency"] == pytest.approx(2 / 5)
    with pytest.raises(ValueError):
        flip_rates([True], [True, False])


def test_backward_transfer_formula():
    assert backward_transfer({0: 0.5, 1: 0.9, 2: 0.1}, {0: 0.7, 1: 0.8}) == pytest.approx((-0.2 + 0.1) / 2)
    assert math.isnan(backward_transfer({0: 0.5}, {}))


def test_balanced_accuracy():
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == pytest.approx(0.5)


def test_flips_metric_over_rounds():
    m = Flips()
    y = [0, 1, 2, 3]
    r1 = m.update(
        RoundEvaluation(1, [0], 4, global_test=preds(y, [0, 1, 0, 0]), local={0: preds([0, 1], [0, 1])})
    )
    assert "global_nfr" not in r1.scalars  # no previous evaluation yet
    r2 = m.update(RoundEvaluation(2, [1], 4, global_test=preds(y, [0, 0, 2, 0]), local={1: preds([1], [1])}))
    assert r2.scalars["global_nfr"] == pytest.approx(1 / 4)
    assert r2.scalars["global_pfr"] == pytest.approx(1 / 4)
    assert r2.scalars["global_consistency"] == pytest.approx(2 / 4)
    assert "local_nfr" not in r2.scalars  # client 1 was never evaluated before
    # client 0 again: its local model is compared with its own previous local evaluation (round 1)
    r3 = m.update(
        RoundEvaluation(3, [0], 4, global_test=preds(y, [0, 0, 2, 0]), local={0: preds([0, 1], [1, 1])})
    )
    assert r3.scalars["local_nfr"] == pytest.approx(1 / 2)
    assert r3.scalars["local_consistency"] == pytest.approx(1 / 2)
    assert r3.scalars["global_nfr"] == 0.0
    # state round-trips
    m2 = Flips()
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.prev_global, m.prev_global)


def test_bwt_metric_sequence():
    m = BackwardTransfer()
    # round 1: clients 0 and 1 sampled; global-on-local accuracies 0.5 and 1.0
    r1 = m.update(
        RoundEvaluation(
            1, [0, 1], 2, global_on_local={0: preds([0, 0], [0, 1]), 1: preds([1], [1]), 2: preds([0], [1])}
        )
    )
    assert "bwt" not in r1.scalars
    # round 2: client 2 sampled; now client 0 at 1.0 (+0.5), client 1 at 0.0 (-1.0)
    r2 = m.update(
        RoundEvaluation(
            2, [2], 2, global_on_local={0: preds([0, 0], [0, 0]), 1: preds([1], [0]), 2: preds([0], [0])}
        )
    )
    assert r2.scalars["bwt"] == pytest.approx((0.5 - 1.0) / 2)
    # round 3: client 2 now counts too (last sampled in round 2 at 1.0)
    r3 = m.update(
        RoundEvaluation(
            3, [0], 2, global_on_local={0: preds([0, 0], [0, 0]), 1: preds([1], [0]), 2: preds([0], [1])}
        )
    )
    assert r3.scalars["bwt"] == pytest.approx((0.5 + -1.0 + -1.0) / 3)


def test_local_accuracy_mean_and_worst():
    ev = RoundEvaluation(1, [3, 5], 2, local={3: preds([0, 1, 1, 1], [0, 1, 1, 0]), 5: preds([0, 1], [1, 1])})
    r = LocalAccuracy().update(ev)
    assert r.scalars["local_acc_mean"] == pytest.approx((0.75 + 0.5) / 2)
    assert r.scalars["local_acc_worst"] == pytest.approx(0.5)
    assert (
        "local_acc_worst_client" not in r.scalars
    )  # an id, not a metric: its last-10 mean would mean nothing
    assert r.per_client[3]["local_acc[local]"] == pytest.approx(0.75)


def test_global_on_local_covers_all_clients():
    ev = RoundEvaluation(1, [0], 2, global_on_local={0: preds([0], [0]), 1: preds([1, 1], [0, 1])})
    r = GlobalOnLocalAccuracy().update(ev)
    assert r.scalars["global_on_local_acc_mean"] == pytest.approx(0.75)
    assert r.scalars["global_on_local_acc_worst"] == pytest.approx(0.5)
