"""Byzantine-robust aggregation: coordinate-wise median, coordinate-wise trimmed mean and (Multi-)Krum.

The math is in plain functions over lists of client state dicts; the components call them. Floating tensors
are aggregated; other tensors (counters such as ``num_batches_tracked``) are taken from the first state.

All three rules are unweighted, as in their papers: a client's sample count is its own claim, and a
Byzantine client could claim any count. They act on the client weights directly; each rule is
translation-equivariant (median and trimmed mean per coordinate, Krum through distances), so this is the
same as applying it to the updates ``w_k - w_global`` and adding the result to ``w_global``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from pydantic import Field

from fedreg.aggregate import weighted_average
from fedreg.components import Aggregator, Params, RunInfo, StateDict
from fedreg.errors import FedregError

# ---------------------------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------------------------


def _check_states(states: Sequence[StateDict]) -> None:
    if not states:
        raise ValueError("no client states to aggregate")


def _sorted_stack(states: Sequence[StateDict], key: str) -> torch.Tensor:
    """The clients' values of ``key`` stacked on a new first axis, in float64, sorted along it."""
    return torch.stack([s[key].detach().to(torch.float64) for s in states]).sort(dim=0).values


def coordinate_median(states: Sequence[StateDict]) -> StateDict:
    """Per coordinate, the median of the clients' values (the mean of the two middle values when the
    number of clients is even). Floating tensors only; others from the first state."""
    _check_states(states)
    n = len(states)
    out: StateDict = {}
    for key, ref in states[0].items():
        if not ref.is_floating_point():
            out[key] = ref.clone()
            continue
        srt = _sorted_stack(states, key)
        med = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
        out[key] = med.to(ref.dtype)
    return out


def trimmed_mean(states: Sequence[StateDict], beta: float) -> StateDict:
    """Per coordinate, drop the ``floor(beta * n)`` largest and the ``floor(beta * n)`` smallest of the
    ``n`` clients' values and average the rest. Floating tensors only; others from the first state."""
    _check_states(states)
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
        out[key] = _sorted_stack(states, key)[k : n - k].mean(dim=0).to(ref.dtype)
    return out


def pairwise_sq_distances(states: Sequence[StateDict]) -> torch.Tensor:
    """``(n, n)`` float64 matrix of squared Euclidean distances between the clients' floating parameters
    (all floating tensors flattened and concatenated), accumulated one tensor at a time."""
    _check_states(states)
    n = len(states)
    dist = torch.zeros(n, n, dtype=torch.float64)
    for key, ref in states[0].items():
        if not ref.is_floating_point():
            continue
        x = torch.stack([s[key].detach().reshape(-1).to(torch.float64) for s in states])
        for i in range(n):
            dist[i] += (x - x[i]).pow(2).sum(dim=1)
    return dist


def krum_scores(states: Sequence[StateDict], f: int) -> torch.Tensor:
    """Krum score of each client: the sum of squared distances to its ``n - f - 2`` nearest other clients."""
    n = len(states)
    _check_krum(n, f, 1)
    dist = pairwise_sq_distances(states)
    nearest = n - f - 2
    scores = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        others = torch.cat([dist[i, :i], dist[i, i + 1 :]])
        scores[i] = others.sort().values[:nearest].sum()
    return scores


def _check_krum(n: int, f: int, m: int) -> None:
    if f < 0 or m < 1:
        raise ValueError(f"krum needs f >= 0 and m >= 1, got f={f}, m={m}")
    if n < 2 * f + 3:
        raise ValueError(f"krum with f={f} needs at least 2f+3 = {2 * f + 3} client updates, got {n}")
    if m > n:
        raise ValueError(f"multi-krum cannot select m={m} of {n} client updates")


def krum_select(states: Sequence[StateDict], f: int, m: int = 1) -> list[int]:
    """Indices of the ``m`` clients with the lowest Krum scores, best first (ties: lower index first).
    ``m = 1`` is Krum; ``m > 1`` is the selection step of Multi-Krum. Needs ``n >= 2f + 3``."""
    _check_krum(len(states), f, m)
    scores = krum_scores(states, f).tolist()
    return sorted(range(len(states)), key=lambda i: (scores[i], i))[:m]


def multi_krum(states: Sequence[StateDict], f: int, m: int = 1) -> tuple[StateDict, list[int]]:
    """Unweighted average of the ``m`` clients :func:`krum_select` picks; returns (state, picked indices)."""
    chosen = krum_select(states, f, m)
    return weighted_average([states[i] for i in chosen], [1.0] * len(chosen)), chosen


# ---------------------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------------------


class CoordinateMedian(Aggregator):
    """Coordinate-wise median of client weights (Yin et al., ICML 2018).

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates", ICML 2018. Unweighted; with an even number of clients, the mean of the two middle values.
    """

    name = "median"

    def aggregate(self, round, global_state, updates, failures):
        return coordinate_median([u.state for u in updates])


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


def krum_problems(f: int, m: int, n: int, num_clients: int) -> list[str]:
    """Why Krum cannot run with f Byzantine clients, m averaged and n clients per round (empty if it can)."""
    out = []
    need = 2 * f + 3
    if n < need:
        lower = (
            f"lower f to {(n - 3) // 2} or less"
            if n >= 3
            else "no f works with fewer than 3 clients per round"
        )
        out.append(
            f"krum with f={f} needs at least 2f+3 = {need} clients per round (Blanchard et al.), but "
            f"federation.clients_per_round is {n}; raise federation.clients_per_round to {need} or more "
            f"(data.num_clients is {num_clients}), or {lower}"
        )
    if m > n:
        out.append(
            f"krum with m={m} averages more clients than are selected per round "
            f"(federation.clients_per_round is {n}); lower m to {n} or less"
        )
    return out


class KrumParams(Params):
    f: int = Field(
        default=1,
        ge=0,
        description="number of Byzantine clients per round assumed; Krum needs clients_per_round >= 2f + 3",
    )
    m: int = Field(
        default=1, ge=1, description="number of lowest-score clients averaged (1: Krum, more: Multi-Krum)"
    )


class Krum(Aggregator):
    """Krum / Multi-Krum: average of the m clients closest to their n-f-2 nearest neighbours (Blanchard et
    al., NeurIPS 2017).

    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent", NeurIPS 2017. A client's score is the sum of squared Euclidean distances (float64, over all
    floating tensors) to its ``n - f - 2`` nearest other clients; the ``m`` lowest scores are averaged
    unweighted. Needs ``n >= 2f + 3`` clients per round. ``last_selected`` holds the client ids picked in
    the latest round.
    """

    name = "krum"
    Params = KrumParams

    def __init__(self, params=None):
        super().__init__(params)
        self.last_selected: list[int] = []

    @classmethod
    def check_spec(cls, params, spec) -> list[str]:
        return krum_problems(params.f, params.m, spec.federation.clients_per_round, spec.data.num_clients)

    def start_run(self, run: RunInfo) -> None:
        problems = krum_problems(self.params.f, self.params.m, run.clients_per_round, run.num_clients)
        if problems:
            raise FedregError("; ".join(problems))

    def aggregate(self, round, global_state, updates, failures):
        state, chosen = multi_krum([u.state for u in updates], self.params.f, self.params.m)
        self.last_selected = [updates[i].client_id for i in chosen]
        return state
