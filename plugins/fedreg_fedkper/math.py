"""FedKPer's formulas as plain functions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def adaptive_beta(global_logits: torch.Tensor, y: torch.Tensor, lambda_max: float) -> torch.Tensor:
    """beta = min(1 / (CE(g, y) + 1e-8), lambda_max), per batch, without gradient."""
    with torch.no_grad():
        ce_g = F.cross_entropy(global_logits.detach(), y)
        return torch.clamp(1.0 / (ce_g + 1e-8), max=lambda_max)


def distillation_kl(local_logits: torch.Tensor, global_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """KL( softmax(g/tau) || softmax(z/tau) ), batch-mean reduction (the global model is the teacher)."""
    log_p_local = F.log_softmax(local_logits / tau, dim=1)
    log_p_global = F.log_softmax(global_logits.detach() / tau, dim=1)
    return F.kl_div(log_p_local, log_p_global, reduction="batchmean", log_target=True)


def adaptive_kd_loss(
    local_logits: torch.Tensor, global_logits: torch.Tensor, y: torch.Tensor, tau: float, lambda_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """L = CE(z, y) + beta * tau^2 * KL(softmax(g/tau) || softmax(z/tau)); returns (L, beta)."""
    beta = adaptive_beta(global_logits, y, lambda_max)
    loss = F.cross_entropy(local_logits, y) + beta * (tau**2) * distillation_kl(
        local_logits, global_logits, tau
    )
    return loss, beta


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_i w_i v_i / sum_i w_i (0 when every weight is 0)."""
    return (values * weight).sum() / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny)


def weighted_adaptive_beta(
    global_logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, lambda_max: float
) -> torch.Tensor:
    """:func:`adaptive_beta` on the samples with weight 1 of a padded batch (padding rows have weight 0)."""
    ce_g = _weighted_mean(F.cross_entropy(global_logits.detach(), y, reduction="none"), weight)
    return torch.clamp(1.0 / (ce_g + 1e-8), max=lambda_max).detach()


def weighted_distillation_kl(
    local_logits: torch.Tensor, global_logits: torch.Tensor, weight: torch.Tensor, tau: float
) -> torch.Tensor:
    """:func:`distillation_kl` (batch mean of the per-sample KL) over the samples with weight 1."""
    log_p_local = F.log_softmax(local_logits / tau, dim=1)
    log_p_global = F.log_softmax(global_logits.detach() / tau, dim=1)
    per_sample = F.kl_div(log_p_local, log_p_global, reduction="none", log_target=True).sum(1)
    return _weighted_mean(per_sample, weight)


def weighted_adaptive_kd_loss(
    local_logits: torch.Tensor,
    global_logits: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    tau: float,
    lambda_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`adaptive_kd_loss` over the real samples of a padded batch (``weight`` 1 real, 0 padding): the
    CE, beta and KL are all means over the real samples. Pure and vmap-compatible. Returns (L, beta)."""
    beta = weighted_adaptive_beta(global_logits, y, weight, lambda_max)
    ce = _weighted_mean(F.cross_entropy(local_logits, y, reduction="none"), weight)
    loss = ce + beta * (tau**2) * weighted_distillation_kl(local_logits, global_logits, weight, tau)
    return loss, beta


def normalized_label_entropy(label_counts: Sequence[int] | np.ndarray, num_classes: int) -> float:
    """Entropy of a client's label distribution divided by log(C), clipped to [0, 1]."""
    counts = np.asarray(label_counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0 or num_classes < 2:
        return 0.0
    p = counts[counts > 0] / total
    h = float(-(p * np.log(p)).sum()) / math.log(num_classes)
    return float(min(max(h, 0.0), 1.0))


def reliability_score(accuracy: float, entropy: float, eps: float = 1e-6) -> float:
    """s_k = max(a_k, 0) * (eps + H_k)."""
    return max(accuracy, 0.0) * (eps + entropy)


def reliability_weights(scores: Sequence[float], num_samples: Sequence[int]) -> tuple[list[float], bool]:
    """Aggregation weights s_k / sum s; falls back to sample counts when any score is NaN (or when the
    scores sum to zero, where s_k / sum s is undefined). Returns (weights, fell_back)."""
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).any() or not np.isfinite(s).all() or s.sum() <= 0:
        n = np.asarray(num_samples, dtype=np.float64)
        return list(n / n.sum()), True
    return list(s / s.sum()), False
