"""Aggregation math as pure functions on state dicts, shared by aggregator plugins."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedreg.components import StateDict


def normalize_weights(weights: Sequence[float]) -> torch.Tensor:
    w = torch.as_tensor([float(x) for x in weights], dtype=torch.float64)
    total = float(w.sum())
    if not torch.isfinite(w).all() or total <= 0 or bool((w < 0).any()):
        raise ValueError(
            f"weights must be finite, non-negative and sum to a positive number, got {w.tolist()}"
        )
    return w / total


def weighted_average(states: Sequence[StateDict], weights: Sequence[float]) -> StateDict:
    """sum_k w_k * state_k / sum_k w_k for floating tensors; other tensors (counters) from the first state."""
    if not states:
        raise ValueError("no client states to aggregate")
    w = normalize_weights(weights)
    out: StateDict = {}
    for key, ref in states[0].items():
        if ref.is_floating_point():
            acc = torch.zeros_like(ref, dtype=torch.float64)
            for wk, s in zip(w, states, strict=True):
                acc.add_(s[key].to(torch.float64), alpha=float(wk))
            out[key] = acc.to(ref.dtype)
        else:
            out[key] = ref.clone()
    return out


#: how a server weights its clients' updates: by their training samples (FedAvg's n_k) or equally
WEIGHTINGS = ("samples", "uniform")


def client_weights(num_samples: Sequence[int], weighting: str) -> list[float]:
    """The weights of a round's client updates: ``"samples"`` gives each client its number of training
    samples n_k (McMahan et al.'s FedAvg), ``"uniform"`` gives every client 1 (the mean over the round's
    clients, as the official code of SCAFFOLD's, FedRep's, FedBABU's and APFL's references averages)."""
    if weighting == "samples":
        return [float(n) for n in num_samples]
    if weighting == "uniform":
        return [1.0] * len(num_samples)
    raise ValueError(f"unknown weighting {weighting!r}; use one of {list(WEIGHTINGS)}")
