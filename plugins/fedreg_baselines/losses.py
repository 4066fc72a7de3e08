"""The proximal term as plain functions: FedProx's local loss, Ditto's personal loss (``proximal_loss``) and
part of FedDyn's loss (``proximal_term``). Each method's own math is in its module."""

from __future__ import annotations

import torch

from fedreg.components import StateDict
from fedreg.losses import cross_entropy


def proximal_term(named_params, ref: StateDict) -> torch.Tensor:
    """sum_k ||w_k - ref_k||^2 over the model's parameters (FedProx, Ditto, FedDyn)."""
    total = None
    for name, p in named_params:
        d = (p - ref[name].detach()).pow(2).sum()
        total = d if total is None else total + d
    return total if total is not None else torch.zeros(())


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
