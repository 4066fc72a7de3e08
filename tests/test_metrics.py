"""Metric definitions on constructed sequences of predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedreg.components import Predictions, RoundEvaluation
from fedreg.evaluation import predict
from fedreg.site import SiteMetrics
from fedreg.testing import tiny_federation, update_metric
from fedreg_metrics.components import (
    BackwardTransfer,
    Flips,
    GlobalOnLocalAccuracy,
    LocalAccuracy,
)
from fedreg_metrics.formulas import (
    auc_ovr_macro,
    backward_transfer,
    balanced_accuracy,
    binary_auc,
    brier_score,
    expected_calibration_error,
    flip_rates,
)
from fedreg_metrics.probabilities import GlobalAUC, GlobalBrier, GlobalECE


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
    site = SiteMetrics([m])  # each client's previous local correctness, kept where its predictions are
    y = [0, 1, 2, 3]
    r1 = update_metric(
        m,
        RoundEvaluation(1, [0], 4, global_test=preds(y, [0, 1, 0, 0]), local={0: preds([0, 1], [0, 1])}),
        site,
    )
    assert "global_nfr" not in r1.scalars  # no previous evaluation yet
    r2 = update_metric(
        m, RoundEvaluation(2, [1], 4, global_test=preds(y, [0, 0, 2, 0]), local={1: preds([1], [1])}), site
    )
    assert r2.scalars["global_nfr"] == pytest.approx(1 / 4)
    assert r2.scalars["global_pfr"] == pytest.approx(1 / 4)
    assert r2.scalars["global_consistency"] == pytest.approx(2 / 4)
    assert "local_nfr" not in r2.scalars  # client 1 was never evaluated before
    # client 0 again: its local model is compared with its own previous local evaluation (round 1)
    r3 = update_metric(
        m,
        RoundEvaluation(3, [0], 4, global_test=preds(y, [0, 0, 2, 0]), local={0: preds([0, 1], [1, 1])}),
        site,
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
    site = SiteMetrics([m])
    # round 1: clients 0 and 1 sampled; global-on-local accuracies 0.5 and 1.0
    r1 = update_metric(
        m,
        RoundEvaluation(
            1, [0, 1], 2, global_on_local={0: preds([0, 0], [0, 1]), 1: preds([1], [1]), 2: preds([0], [1])}
        ),
        site,
    )
    assert "bwt" not in r1.scalars
    # round 2: client 2 sampled; now client 0 at 1.0 (+0.5), client 1 at 0.0 (-1.0)
    r2 = update_metric(
        m,
        RoundEvaluation(
            2, [2], 2, global_on_local={0: preds([0, 0], [0, 0]), 1: preds([1], [0]), 2: preds([0], [0])}
        ),
        site,
    )
    assert r2.scalars["bwt"] == pytest.approx((0.5 - 1.0) / 2)
    # round 3: client 2 now counts too (last sampled in round 2 at 1.0)
    r3 = update_metric(
        m,
        RoundEvaluation(
            3, [0], 2, global_on_local={0: preds([0, 0], [0, 0]), 1: preds([1], [0]), 2: preds([0], [1])}
        ),
        site,
    )
    assert r3.scalars["bwt"] == pytest.approx((0.5 + -1.0 + -1.0) / 3)


def test_local_accuracy_mean_and_worst():
    ev = RoundEvaluation(1, [3, 5], 2, local={3: preds([0, 1, 1, 1], [0, 1, 1, 0]), 5: preds([0, 1], [1, 1])})
    r = update_metric(LocalAccuracy(), ev)
    assert r.scalars["local_acc_mean"] == pytest.approx((0.75 + 0.5) / 2)
    assert r.scalars["local_acc_worst"] == pytest.approx(0.5)
    assert (
        "local_acc_worst_client" not in r.scalars
    )  # an id, not a metric: its last-10 mean would mean nothing
    assert r.per_client[3]["local_acc[local]"] == pytest.approx(0.75)


def test_global_on_local_covers_all_clients():
    ev = RoundEvaluation(1, [0], 2, global_on_local={0: preds([0], [0]), 1: preds([1, 1], [0, 1])})
    r = update_metric(GlobalOnLocalAccuracy(), ev)
    assert r.scalars["global_on_local_acc_mean"] == pytest.approx(0.75)
    assert r.scalars["global_on_local_acc_worst"] == pytest.approx(0.5)


# -- metrics of the class probabilities (AUC, ECE, Brier) --------------------------------------------------

AUC_LABELS = [0, 0, 1, 1, 2]
AUC_PROBS = [[0.7, 0.2, 0.1], [0.4, 0.55, 0.05], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6], [0.1, 0.3, 0.6]]


def pairwise_auc(positive, scores) -> float:
    """The AUC by definition: over every (positive, negative) pair, 1 if the positive scores higher, 1/2 on
    a tie."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg) / (len(pos) * len(neg))


def test_auc_hand_computed():
    # class 0: both positives (.7, .4) above every negative: 1; class 1: .6 beats 3, .2 ties one .2: 3.5/6;
    # class 2: .6 beats .1, .05, .1 and ties .6: 3.5/4
    auc, used = auc_ovr_macro(AUC_LABELS, AUC_PROBS)
    assert used == [0, 1, 2]
    assert auc == pytest.approx((1 + 7 / 12 + 7 / 8) / 3)
    assert binary_auc([True, False], [0.3, 0.3]) == 0.5
    assert math.isnan(binary_auc([True, True], [0.1, 0.2]))


def test_auc_skips_classes_absent_from_the_labels():
    probs = [row + [0.0] for row in AUC_PROBS]  # a fourth class no sample has
    auc, used = auc_ovr_macro(AUC_LABELS, probs)
    assert used == [0, 1, 2] and auc == pytest.approx((1 + 7 / 12 + 7 / 8) / 3)
    auc, used = auc_ovr_macro([1, 1], [[0.2, 0.8], [0.6, 0.4]])  # one class only: nothing to separate
    assert used == [] and math.isnan(auc)


def test_auc_matches_the_pairwise_count():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, c = int(rng.integers(5, 40)), int(rng.integers(2, 5))
        labels = rng.integers(0, c, size=n)
        probs = rng.integers(0, 6, size=(n, c)) / 5  # coarse values: many ties
        auc, used = auc_ovr_macro(labels, probs)
        want = [pairwise_auc(labels == k, probs[:, k]) for k in range(c) if 0 < (labels == k).sum() < n]
        assert len(used) == len(want)
        assert auc == pytest.approx(np.mean(want)) if want else math.isnan(auc)


def test_ece_hand_computed():
    # confidences .9 (right), .81 (wrong), .7 (right), .55 (wrong): four different bins of 15
    probs = [[0.9, 0.1], [0.81, 0.19], [0.3, 0.7], [0.45, 0.55]]
    assert expected_calibration_error([0, 1, 1, 0], probs) == pytest.approx((0.1 + 0.81 + 0.3 + 0.55) / 4)
    # .9 (right) and .88 (wrong) share the bin (13/15, 14/15]: |1/2 - .89|
    assert expected_calibration_error([0, 1], [[0.9, 0.1], [0.88, 0.12]]) == pytest.approx(0.39)
    # with 2 bins, .55 and .7 (both right) share (1/2, 1]: |1 - .625|
    assert expected_calibration_error([0, 0], [[0.55, 0.45], [0.7, 0.3]], bins=2) == pytest.approx(0.375)
    assert math.isnan(expected_calibration_error([], np.zeros((0, 3))))


def test_brier_hand_computed():
    assert brier_score([0, 0], [[0.9, 0.1], [0.3, 0.7]]) == pytest.approx((0.02 + 0.98) / 2)
    assert brier_score([2], [[0.5, 0.3, 0.2]]) == pytest.approx(0.25 + 0.09 + 0.64)
    assert brier_score([1], [[0.0, 1.0]]) == 0.0
    with pytest.raises(ValueError, match="do not match"):
        brier_score([0, 1], [[1.0, 0.0]])


def test_predict_gives_softmax_probabilities():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    p = predict(model, x, y, batch_size=3)
    assert p.probs is not None and p.probs.shape == (10, 3) and p.probs.dtype == torch.float32
    assert torch.allclose(p.probs.sum(1), torch.ones(10))
    assert torch.equal(p.probs.argmax(1), p.preds)
    assert torch.allclose(-p.probs[torch.arange(10), y].log(), p.loss, atol=1e-5)
    assert torch.allclose(p.subset(slice(2, 5)).probs, p.probs[2:5])
    empty = predict(model, x[:0], y[:0])
    assert empty.probs is not None and empty.probs.shape == (0, 0)


def test_probability_metrics_in_a_run(one_thread):
    res = tiny_federation({"metrics": ["global_accuracy", "auc", "ece", "brier"], "federation.rounds": 2})
    final = res.final
    assert 0.5 < final["final_global_auc"] <= 1.0 and final["final_global_auc_classes"] >= 2
    assert 0.0 <= final["final_global_ece"] <= 1.0 and 0.0 <= final["final_global_brier"] <= 2.0
    assert res.history[-1]["global_brier"] == final["final_global_brier"]  # logged each evaluated round


def test_probability_metrics_declare_their_figures():
    figs = {f.key: f for cls in (GlobalAUC, GlobalECE, GlobalBrier) for f in cls.figures}
    assert figs["global_auc"].higher_is_better
    assert not figs["global_ece"].higher_is_better and not figs["global_brier"].higher_is_better
    ev = RoundEvaluation(1, [0], 2, global_test=preds([0, 1], [0, 1]))  # built by hand: no probabilities
    with pytest.raises(ValueError, match="probs"):
        GlobalECE().update(ev)
