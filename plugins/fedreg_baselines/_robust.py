"""What the Byzantine-robust aggregations share: coordinate-wise median (:mod:`fedreg_baselines.median`),
coordinate-wise trimmed mean (:mod:`fedreg_baselines.trimmed_mean`) and (Multi-)Krum
(:mod:`fedreg_baselines.krum`).

The math is in plain functions over lists of client state dicts; the components call them. Floating tensors
are aggregated; other tensors (counters such as ``num_batches_tracked``) are taken from the first state.

All three rules are unweighted, as in their papers: a client's sample count is its own claim, and a
Byzantine client could claim any count. They act on the client weights directly; each rule is
translation-equivariant (median and trimmed mean per coordinate, Krum through distances), so this is the
same as applying it to the updates ``w_k - w_global`` and adding the result to ``w_global``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedreg.components import StateDict


def check_states(states: Sequence[StateDict]) -> None:
    if not states:
        raise ValueError("no client states to aggregate")


def sorted_stack(states: Sequence[StateDict], key: str) -> torch.Tensor:
    """The clients' values of ``key`` stacked on a new first axis, in float64, sorted along it."""
    return torch.stack([s[key].detach().to(torch.float64) for s in states]).sort(dim=0).values
