"""Reductions for losses written once for every backend.

An objective's ``functional_loss`` gets a per-sample ``weight``: a float mask (1 a real sample, 0 padding)
on the ``vectorized`` backend, whose short batches are padded, and ``None`` in the local training loop,
where every sample of the batch is real. These helpers reduce per-sample terms either way; with
``weight=None`` they use torch's own mean reduction, so the local loop computes exactly what a loss written
with ``reduction="mean"`` computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-sample ``values`` over the real samples: ``values.mean()`` when ``weight`` is None,
    else ``sum_i w_i v_i / sum_i w_i`` (0 when every weight is 0). Pure and vmap-compatible."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy averaged over the real samples: ``F.cross_entropy(logits, y)`` when ``weight`` is None,
    else the ``weight``-weighted mean of the per-sample terms (padding rows, weight 0, change nothing)."""
    if weight is None:
        return F.cross_entropy(logits, y)
    return sample_mean(F.cross_entropy(logits, y, reduction="none"), weight)


__all__ = ["sample_mean", "cross_entropy"]
