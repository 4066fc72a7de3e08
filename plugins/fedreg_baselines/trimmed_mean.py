"""Coordinate-wise trimmed mean (Yin et al., ICML 2018), a Byzantine-robust aggregation (see
:mod:`fedreg_baselines._robust`); the rule as a plain function."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from pydantic import Field

from fedreg.components import Aggregator, Params, RunInfo, StateDict
from fedreg_baselines._robust import check_states, sorted_stack


def trimmed_mean(states: Sequence[StateDict], beta: float) -> StateDict:
    """Per coordinate, drop the ``floor(beta * n)`` largest and the ``floor(beta * n)`` smallest of the
    ``n`` clients' values and average the rest. Floating tensors only; others from the first state."""
    check_states(states)
    n = len(states)
    if not 0 <= beta < 0.5:  # below 0.5, n - 2 floor(beta n) >= 1 for every n: something is left
        raise ValueError(
            f"trimmed_mean needs 0 <= beta < 0.5, got beta={beta}: it drops the floor(beta * n) "
            f"largest and smallest of the n={n} client values per coordinate, and beta >= 0.5 "
            f"leaves none (beta < 0 or NaN is meaningless); lower beta"
        )
    k = math.floor(beta * n)
    out: StateDict = {}
    for key, ref in states[0].items():
        if not ref.is_floating_point():
            out[key] = ref.clone()
            continue
        out[key] = sorted_stack(states, key)[k : n - k].mean(dim=0).to(ref.dtype)
    return out


class TrimmedMeanParams(Params):
    beta: float = Field(
        default=0.1,
        ge=0,
        lt=0.5,
        description="fraction of clients trimmed at each end, per coordinate: the "
        "floor(beta * n) largest and smallest values are dropped",
    )


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean of client weights (Yin et al., ICML 2018).

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates", ICML 2018. Unweighted. With ``floor(beta * clients_per_round) == 0`` nothing is trimmed and this
    is the plain mean (warned at the start of the run).
    """

    name = "trimmed_mean"
    Params = TrimmedMeanParams

    def start_run(self, run: RunInfo) -> None:
        beta, n = self.params.beta, run.clients_per_round
        if beta > 0 and math.floor(beta * n) == 0:
            warnings.warn(
                f"trimmed_mean with beta={beta} and {n} clients per round trims nothing "
                f"(floor(beta * n) = 0) and is the plain mean; raise beta to at least {1 / n:.3g} "
                f"or select more clients per round",
                stacklevel=2,
            )

    def aggregate(self, round, global_state, updates, failures):
        return trimmed_mean([u.state for u in updates], self.params.beta)
