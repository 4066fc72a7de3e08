"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
ICML 2020): the ``scaffold`` objective (client) and the ``scaffold`` aggregation (server), which work only
together; the control-variate updates as plain functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from fedreg.aggregate import weighted_average
from fedreg.components import Aggregator, Objective, Params, StateDict
from fedreg.errors import FedregError
from fedreg.losses import cross_entropy
from fedreg_baselines._pairing import broadcast_value, pairing_problems
from fedreg_baselines.fedavg import UniformWeightingParams, averaging_weights


def scaffold_client_control(
    c_i: StateDict, c: StateDict, x: StateDict, y: StateDict, steps: float, lr: float
) -> StateDict:
    """SCAFFOLD option II: c_i+ = c_i - c + (x - y_i) / (K * lr)."""
    scale = 1.0 / (max(steps, 1) * lr)
    return {k: c_i[k] - c[k] + (x[k] - y[k]) * scale for k in c_i}


def momentum_step_count(steps: int, momentum: float) -> float:
    """How many plain-SGD steps K local steps of SGD with heavy-ball momentum rho (buffer starting at zero)
    move the weights for a constant gradient: sum_{t=1..K} (1 - rho^t) / (1 - rho)
    = (K - rho (1 - rho^K) / (1 - rho)) / (1 - rho); K itself when rho = 0."""
    if momentum == 0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1.0 - rho**steps) / (1.0 - rho)) / (1.0 - rho)


def scaffold_server_control(c: StateDict, deltas: Sequence[StateDict], num_clients: int) -> StateDict:
    """c <- c + (1/N) * sum_{i in S} delta_c_i."""
    out = {k: v.clone() for k, v in c.items()}
    for d in deltas:
        for k in out:
            out[k].add_(d[k], alpha=1.0 / num_clients)
    return out


class ScaffoldParams(Params):
    divisor: Literal["momentum", "steps"] = Field(
        default="momentum",
        description="the K of option II's (x - y_i) / (K lr): 'momentum' counts the plain-SGD steps that K "
        "momentum steps from rest amount to (Lee-Gihun/FedNTD adaptive_divison, the FedKPer codebase's "
        "default); 'steps' is K, the local steps (NIID-Bench; the same when momentum is 0)",
    )


class Scaffold(Objective):
    """SCAFFOLD client: gradients corrected by (c - c_i), control variate c_i updated by option II
    (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020).

    Pair with the ``scaffold`` aggregation. Option II's (x - y_i) / (K lr) assumes plain SGD; with SGD
    momentum the K there is, by default, the number of plain steps the momentum steps amount to
    (``momentum_step_count``), so that c_i+ is the mean corrected gradient again."""

    name = "scaffold"
    Params = ScaffoldParams

    @classmethod
    def check_spec(cls, params, spec):
        return pairing_problems(spec, "scaffold", "scaffold")

    def setup(self, ctx):
        c = broadcast_value(ctx, "scaffold_c", "scaffold", "scaffold")
        c_i = ctx.state.get("c_i") or {k: torch.zeros_like(v) for k, v in c.items()}
        self._c, self._c_i = c, c_i
        self._corr = {k: c[k] - c_i[k] for k in c}
        self._active = any(bool(v.any()) for v in self._corr.values())
        self._params: dict[str, torch.Tensor] | None = dict(ctx.model.named_parameters())
        self._steps = 0

    def loss(self, model, x, y, ctx):
        return cross_entropy(model(x), y)

    def before_step(self, ctx):
        self._steps += 1
        if self._active:
            assert self._params is not None, "setup ran before the first step"
            for k, p in self._params.items():
                if p.grad is not None:
                    p.grad.add_(self._corr[k])

    def finish(self, ctx):
        y = {k: v.detach() for k, v in ctx.model.state_dict().items() if k in self._c}
        x = {k: ctx.global_state[k] for k in self._c}
        steps = (
            momentum_step_count(self._steps, ctx.momentum)
            if self.params.divisor == "momentum"
            else self._steps
        )
        new_c_i = scaffold_client_control(self._c_i, self._c, x, y, steps, ctx.lr)
        delta = {k: new_c_i[k] - self._c_i[k] for k in new_c_i}
        ctx.state["c_i"] = new_c_i
        self._params = None
        return {"scaffold_delta_c": delta}


class ScaffoldAggParams(UniformWeightingParams):
    global_lr: float = Field(default=1.0, gt=0, description="server step size eta_g")


class ScaffoldAggregator(Aggregator):
    """SCAFFOLD server: keeps the server control variate c; the clients' weights are averaged uniformly, as
    in the paper and FL-bench's implementation (``weighting: samples``: by sample counts, as NIID-Bench's)
    (Karimireddy et al., ICML 2020). Pair with the ``scaffold`` objective."""

    name = "scaffold"
    Params = ScaffoldAggParams

    def __init__(self, params=None):
        super().__init__(params)
        self.c: dict[str, torch.Tensor] | None = None
        self.num_clients = 0

    def start_run(self, run):
        self.num_clients = run.num_clients

    def broadcast(self, round, global_state):
        if self.c is None:
            self.c = {
                k: torch.zeros_like(v)
                for k, v in global_state.items()
                if k.endswith(("weight", "bias")) and v.is_floating_point()
            }
        return {"scaffold_c": self.c}

    def aggregate(self, round, global_state, updates, failures):
        avg = weighted_average([u.state for u in updates], averaging_weights(self.params, updates))
        if self.params.global_lr != 1.0:
            avg = {
                k: (global_state[k] + self.params.global_lr * (v - global_state[k]))
                if v.is_floating_point()
                else v
                for k, v in avg.items()
            }
        deltas = [u.payload["scaffold_delta_c"] for u in updates if "scaffold_delta_c" in u.payload]
        if len(deltas) != len(updates):
            raise FedregError(
                "the scaffold aggregation needs the scaffold objective (set training.objective: scaffold)"
            )
        assert self.c is not None, "broadcast ran before aggregate"
        self.c = scaffold_server_control(self.c, deltas, self.num_clients)
        return avg

    def state_dict(self):
        return {"c": self.c}

    def load_state_dict(self, state):
        self.c = state.get("c")
