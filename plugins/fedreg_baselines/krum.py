"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017), a Byzantine-robust aggregation (see
:mod:`fedreg_baselines._robust`); the scores and the selection as plain functions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from fedreg.aggregate import weighted_average
from fedreg.components import Aggregator, Params, RunInfo, StateDict
from fedreg.errors import FedregError
from fedreg_baselines._robust import check_states


def pairwise_sq_distances(states: Sequence[StateDict]) -> torch.Tensor:
    """``(n, n)`` float64 matrix of squared Euclidean distances between the clients' floating parameters
    (all floating tensors flattened and concatenated), accumulated one tensor at a time."""
    check_states(states)
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
