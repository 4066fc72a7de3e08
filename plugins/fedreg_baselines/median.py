"""Coordinate-wise median (Yin et al., ICML 2018), a Byzantine-robust aggregation (see
:mod:`fedreg_baselines._robust`); the rule as a plain function."""

from __future__ import annotations

from collections.abc import Sequence

from fedreg.components import Aggregator, StateDict
from fedreg_baselines._robust import check_states, sorted_stack


def coordinate_median(states: Sequence[StateDict]) -> StateDict:
    """Per coordinate, the median of the clients' values (the mean of the two middle values when the
    number of clients is even). Floating tensors only; others from the first state."""
    check_states(states)
    n = len(states)
    out: StateDict = {}
    for key, ref in states[0].items():
        if not ref.is_floating_point():
            out[key] = ref.clone()
            continue
        srt = sorted_stack(states, key)
        med = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
        out[key] = med.to(ref.dtype)
    return out


class CoordinateMedian(Aggregator):
    """Coordinate-wise median of client weights (Yin et al., ICML 2018).

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates", ICML 2018. Unweighted; with an even number of clients, the mean of the two middle values.
    """

    name = "median"

    def aggregate(self, round, global_state, updates, failures):
        return coordinate_median([u.state for u in updates])
