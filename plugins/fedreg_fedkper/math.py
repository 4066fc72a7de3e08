"""FedKPer's formulas as plain functions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedreg.losses import cross_entropy, sample_mean


def adaptive_beta(
    global_logits: torch.Tensor, y: torch.Tensor, lambda_max: float, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """beta = min(1 / (CE(g, y) + 1e-8), lambda_max), CE the batch mean over the real samples (``weight``:
    see :mod:`fedreg.losses`), without gradient."""
    ce_g = cross_entropy(global_logits.detach(), y, weight)
    return torch.clamp(1.0 / (ce_g + 1e-8), max=lambda_max).detach()


def distillation_kl(
    local_logits: torch.Tensor,
    global_logits: torch.Tensor,
    tau: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL( softmax(g/tau) || softmax(z/tau) ), mean over the real samples of the per-sample KL (the
    global model is the teacher)."""
    log_p_local = F.log_softmax(local_logits / tau, dim=1)
    log_p_global = F.log_softmax(global_logits.detach() / tau, dim=1)
    if weight is None:
        return F.kl_div(log_p_local, log_p_global, reduction="batchmean", log_target=True)
    per_sample = F.kl_div(log_p_local, log_p_global, reduction="none", log_target=True).sum(1)
    return sample_mean(per_sample, weight)


def adaptive_kd_loss(
    local_logits: torch.Tensor,
    global_logits: torch.Tensor,
    y: torch.Tensor,
    tau: float,
    lambda_max: float,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L = CE(z, y) + beta * tau^2 * KL(softmax(g/tau) || softmax(z/tau)), each term a mean over the real
    samples (``weight`` None: all of them; else a 0/1 padding mask). Pure and vmap-compatible. Returns
    (L, beta)."""
    beta = adaptive_beta(global_logits, y, lambda_max, weight)
    loss = cross_entropy(local_logits, y, weight) + beta * (tau**2) * distillation_kl(
        local_logits, global_logits, tau, weight
    )
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
