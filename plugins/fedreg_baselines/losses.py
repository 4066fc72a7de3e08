"""Math of the global-FL baselines as plain functions (losses and control/state updates)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fedreg.components import StateDict
from fedreg.losses import cross_entropy


def proximal_term(named_params, ref: StateDict) -> torch.Tensor:
    """sum_k ||w_k - ref_k||^2 over the model's parameters (FedProx, Ditto)."""
    total = None
    for name, p in named_params:
        d = (p - ref[name].detach()).pow(2).sum()
        total = d if total is None else total + d
    return total


def proximal_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    named_params,
    ref: StateDict,
    mu: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """CE(logits, y) + mu/2 * ||w - ref||^2: FedProx's local objective (ref the received global weights)
    and Ditto's personal one (mu its lambda). mu = 0 is plain cross-entropy. ``weight``: see
    :mod:`fedreg.losses`."""
    loss = cross_entropy(logits, y, weight)
    if mu > 0:
        loss = loss + mu / 2 * proximal_term(named_params, ref)
    return loss


def not_true_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The logits of every class but the true one: (B, C) -> (B, C - 1), order kept."""
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep.scatter_(1, y.unsqueeze(1), False)
    return logits[keep].view(logits.shape[0], logits.shape[1] - 1)


def not_true_distillation(
    local_logits: torch.Tensor, global_logits: torch.Tensor, y: torch.Tensor, tau: float
) -> torch.Tensor:
    """FedNTD: tau^2 * KL(softmax(g~/tau) || softmax(z~/tau)) on not-true classes, batch mean."""
    z = not_true_logits(local_logits, y)
    g = not_true_logits(global_logits.detach(), y)
    return (tau**2) * F.kl_div(
        F.log_softmax(z / tau, 1), F.log_softmax(g / tau, 1), reduction="batchmean", log_target=True
    )


def moon_contrastive(
    z: torch.Tensor, z_global: torch.Tensor, z_prev: torch.Tensor, tau: float
) -> torch.Tensor:
    """MOON: -log( e^{sim(z,zg)/tau} / (e^{sim(z,zg)/tau} + e^{sim(z,zp)/tau}) ), mean over the batch."""
    pos = F.cosine_similarity(z, z_global.detach(), dim=1)
    neg = F.cosine_similarity(z, z_prev.detach(), dim=1)
    logits = torch.stack([pos, neg], dim=1) / tau
    return cross_entropy(logits, torch.zeros(len(z), dtype=torch.long))


def scaffold_client_control(
    c_i: StateDict, c: StateDict, x: StateDict, y: StateDict, steps: int, lr: float
) -> StateDict:
    """SCAFFOLD option II: c_i+ = c_i - c + (x - y_i) / (K * lr)."""
    scale = 1.0 / (max(steps, 1) * lr)
    return {k: c_i[k] - c[k] + (x[k] - y[k]) * scale for k in c_i}


def scaffold_server_control(c: StateDict, deltas: Sequence[StateDict], num_clients: int) -> StateDict:
    """c <- c + (1/N) * sum_{i in S} delta_c_i."""
    out = {k: v.clone() for k, v in c.items()}
    for d in deltas:
        for k in out:
            out[k].add_(d[k], alpha=1.0 / num_clients)
    return out


def feddyn_linear_term(named_params, grad_state: StateDict) -> torch.Tensor:
    """sum_k <g_k, w_k> for FedDyn's linear penalty."""
    total = None
    for name, p in named_params:
        t = (p * grad_state[name]).sum()
        total = t if total is None else total + t
    return total


def feddyn_server_update(
    h: StateDict, prev: StateDict, client_states: Sequence[StateDict], alpha: float, num_clients: int
) -> tuple[StateDict, StateDict]:
    """h <- h - (alpha/N) sum_{k in S} (theta_k - theta_prev); theta = mean_k theta_k - h / alpha.
    Returns (new global, new h) over the keys of ``h`` (the floating parameters)."""
    new_h = {}
    new = {}
    for k in h:
        diff = sum(s[k] - prev[k] for s in client_states)
        new_h[k] = h[k] - (alpha / num_clients) * diff
        new[k] = sum(s[k] for s in client_states) / len(client_states) - new_h[k] / alpha
    return new, new_h
