"""FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021): the ``feddyn``
objective (client) and the ``feddyn`` aggregation (server), which work only together; the linear term and the
server update as plain functions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from fedreg.aggregate import weighted_average
from fedreg.components import Aggregator, Objective, Params, StateDict
from fedreg.losses import cross_entropy
from fedreg_baselines._pairing import broadcast_value, pairing_problems
from fedreg_baselines.losses import proximal_term


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


def _float_params(state):
    return {k: v for k, v in state.items() if v.is_floating_point()}


class FedDyn(Objective):
    """FedDyn client: CE - <g_k, w> + alpha/2 ||w - w_global||^2 with the client's linear term g_k kept in its
    state (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021). alpha comes from the
    ``feddyn`` aggregation."""

    name = "feddyn"

    @classmethod
    def check_spec(cls, params, spec):
        return pairing_problems(spec, "feddyn", "feddyn")

    def setup(self, ctx):
        self._alpha = broadcast_value(ctx, "feddyn_alpha", "feddyn", "feddyn")
        names = [n for n, _ in ctx.model.named_parameters()]
        self._g = ctx.state.get("grad") or {n: torch.zeros_like(ctx.global_state[n]) for n in names}

    def loss(self, model, x, y, ctx):
        params = list(model.named_parameters())
        return (
            cross_entropy(model(x), y)
            - feddyn_linear_term(params, self._g)
            + self._alpha / 2 * proximal_term(params, ctx.global_state)
        )

    def finish(self, ctx):
        trained = dict(ctx.model.named_parameters())
        ctx.state["grad"] = {
            n: g - self._alpha * (trained[n].detach() - ctx.global_state[n]) for n, g in self._g.items()
        }
        return {}


class FedDynAggParams(Params):
    alpha: float = Field(default=0.01, gt=0, description="dynamic regularisation weight (paper: 0.01 to 0.1)")


class FedDynAggregator(Aggregator):
    """FedDyn server: h <- h - alpha/N sum (theta_k - theta), theta <- mean theta_k - h/alpha
    (Acar et al., ICLR 2021). Pair with the ``feddyn`` objective."""

    name = "feddyn"
    Params = FedDynAggParams

    def __init__(self, params=None):
        super().__init__(params)
        self.h: dict[str, torch.Tensor] | None = None
        self.num_clients = 0

    def start_run(self, run):
        self.num_clients = run.num_clients

    def broadcast(self, round, global_state):
        return {"feddyn_alpha": self.params.alpha}

    def aggregate(self, round, global_state, updates, failures):
        if self.h is None:
            self.h = {k: torch.zeros_like(v) for k, v in _float_params(global_state).items()}
        new, self.h = feddyn_server_update(
            self.h, global_state, [u.state for u in updates], self.params.alpha, self.num_clients
        )
        out = weighted_average([u.state for u in updates], [1.0] * len(updates))
        out.update(new)
        return out

    def state_dict(self):
        return {"h": self.h}

    def load_state_dict(self, state):
        self.h = state.get("h")
