"""FedKPer's formulas on hand-computed tiny cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedreg_fedkper.math import (
    adaptive_beta,
    adaptive_kd_loss,
    distillation_kl,
    normalized_label_entropy,
    reliability_score,
    reliability_weights,
)


def test_beta_is_inverse_global_ce():
    g = torch.tensor([[0.0, 0.0]])  # uniform: CE = log 2
    y = torch.tensor([0])
    assert float(adaptive_beta(g, y, 10.0)) == pytest.approx(1 / (math.log(2) + 1e-8), rel=1e-6)


def test_beta_clamped_at_lambda_max():
    g = torch.tensor([[20.0, -20.0]])  # CE ~ 4e-18: 1/CE is huge
    y = torch.tensor([0])
    assert float(adaptive_beta(g, y, 10.0)) == pytest.approx(10.0)
    assert float(adaptive_beta(g, y, 3.5)) == pytest.approx(3.5)


def test_beta_carries_no_gradient():
    g = torch.tensor([[0.3, -0.2]], requires_grad=True)
    beta = adaptive_beta(g, torch.tensor([1]), 10.0)
    assert not beta.requires_grad


def test_kl_direction_teacher_is_global():
    z = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.0, 2.0]])
    p_g = F.softmax(g, 1)[0]
    p_z = F.softmax(z, 1)[0]
    expected = float((p_g * (p_g.log() - p_z.log())).sum())  # KL(p_g || p_z)
    reverse = float((p_z * (p_z.log() - p_g.log())).sum())
    got = float(distillation_kl(z, g, 1.0))
    assert got == pytest.approx(expected, rel=1e-6)
    assert abs(got - reverse) > 1e-3


def test_kl_batchmean_and_temperature():
    z = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    g = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    tau = 2.0
    p_g = F.softmax(g[0] / tau, 0)
    p_z = F.softmax(z[0] / tau, 0)
    row0 = float((p_g * (p_g.log() - p_z.log())).sum())
    assert float(distillation_kl(z, g, tau)) == pytest.approx(row0 / 2, rel=1e-6)  # row 1 has KL 0


def test_total_loss_formula():
    z = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]], requires_grad=True)
    g = torch.tensor([[0.2, 1.0, 0.0], [2.0, 0.0, 0.0]])
    y = torch.tensor([1, 0])
    tau, lam = 3.0, 10.0
    loss, beta = adaptive_kd_loss(z, g, y, tau, lam)
    ce_g = float(F.cross_entropy(g, y))
    exp_beta = min(1 / (ce_g + 1e-8), lam)
    kl = float(F.kl_div(F.log_softmax(z.detach() / tau, 1), F.softmax(g / tau, 1), reduction="batchmean"))
    assert float(beta) == pytest.approx(exp_beta, rel=1e-6)
    ce = float(F.cross_entropy(z.detach(), y))
    assert float(loss.detach()) == pytest.approx(ce + exp_beta * tau**2 * kl, rel=1e-6)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def _kd_batch(n=5, c=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=gen) * 2
    g = torch.randn(n, c, generator=gen) * 2
    y = torch.randint(0, c, (n,), generator=gen)
    return z, g, y


def test_weighted_kd_with_unit_weights_is_the_unweighted_loss():
    z, g, y = _kd_batch()
    w = torch.ones(len(y))
    for tau, lam in ((1.0, 10.0), (3.0, 0.5)):
        loss, beta = adaptive_kd_loss(z, g, y, tau, lam)
        wloss, wbeta = adaptive_kd_loss(z, g, y, tau, lam, w)
        assert float(wbeta) == pytest.approx(float(beta), rel=1e-6)
        assert float(wloss) == pytest.approx(float(loss), rel=1e-6)
    assert float(distillation_kl(z, g, 2.0, w)) == pytest.approx(float(distillation_kl(z, g, 2.0)), rel=1e-6)
    assert float(adaptive_beta(g, y, 10.0, w)) == pytest.approx(float(adaptive_beta(g, y, 10.0)), rel=1e-6)


def test_weighted_kd_padding_rows_change_nothing():
    z, g, y = _kd_batch(n=3)
    pz, pg, py = _kd_batch(n=4, seed=1)  # padding rows hold arbitrary values
    zz = torch.cat([z, pz * 10]).requires_grad_(True)
    w = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    wloss, wbeta = adaptive_kd_loss(zz, torch.cat([g, pg]), torch.cat([y, py]), 2.0, 10.0, w)
    zr = z.clone().requires_grad_(True)
    loss, beta = adaptive_kd_loss(zr, g, y, 2.0, 10.0)
    assert float(wbeta) == pytest.approx(float(beta), rel=1e-6)
    assert float(wloss.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    wloss.backward()
    loss.backward()
    assert torch.allclose(zz.grad[:3], zr.grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(zz.grad[3:], torch.zeros(4, 4))  # padding gets no gradient
    assert not wbeta.requires_grad


def test_weighted_beta_ignores_the_padding_and_is_clamped():
    g = torch.tensor([[0.0, 0.0], [-30.0, 30.0]])  # row 0: CE log 2; row 1 (padding): CE 60
    y = torch.tensor([0, 0])
    w = torch.tensor([1.0, 0.0])
    assert float(adaptive_beta(g, y, 10.0, w)) == pytest.approx(1 / (math.log(2) + 1e-8), rel=1e-6)
    assert float(adaptive_beta(g, y, 1.2, w)) == pytest.approx(1.2)


def test_entropy_normalisation():
    assert normalized_label_entropy([5, 5, 5, 5], 4) == pytest.approx(1.0)
    assert normalized_label_entropy([10, 10, 0, 0], 4) == pytest.approx(math.log(2) / math.log(4))
    assert normalized_label_entropy([7, 0, 0], 3) == 0.0  # one-class client
    assert normalized_label_entropy([0, 0], 2) == 0.0


def test_one_class_client_keeps_eps_weight():
    s = reliability_score(0.9, 0.0, eps=1e-6)
    assert s == pytest.approx(0.9e-6)
    w, fell_back = reliability_weights([s, reliability_score(0.5, 1.0)], [100, 100])
    assert not fell_back and w[0] == pytest.approx(0.9e-6 / (0.9e-6 + 0.5 * (1 + 1e-6)))


def test_negative_accuracy_clipped():
    assert reliability_score(-0.3, 0.8) == 0.0


def test_nan_score_falls_back_to_sample_counts():
    w, fell_back = reliability_weights([0.4, float("nan")], [30, 10])
    assert fell_back and w == pytest.approx([0.75, 0.25])
    w, fell_back = reliability_weights([0.0, 0.0], [1, 3])
    assert fell_back and w == pytest.approx([0.25, 0.75])


def test_weights_proportional_to_scores():
    w, fell_back = reliability_weights([0.2, 0.6], [1000, 1])
    assert not fell_back and w == pytest.approx([0.25, 0.75])
