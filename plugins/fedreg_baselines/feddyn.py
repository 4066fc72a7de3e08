"""FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021): the ``feddyn``
objective (client) and the ``feddyn`` aggregation (server), which work only together; the linear term, the
per-client alpha and the server update as plain functions. Read against the authors' code
(alpemreacar/FedDyn ``utils_methods.py`` ``train_FedDyn``, ``utils_general.py`` ``train_feddyn_mdl``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from fedreg.aggregate import weighted_average
from fedreg.components import Aggregator, Objective, Params, StateDict, clone_state
from fedreg.losses import cross_entropy
from fedreg_baselines._pairing import broadcast_value, pairing_problems


def feddyn_linear_term(named_params, grad_state: StateDict) -> torch.Tensor:
    """sum_k <g_k, w_k> for FedDyn's linear penalty."""
    total = None
    for name, p in named_params:
        t = (p * grad_state[name]).sum()
        total = t if total is None else total + t
    return total if total is not None else torch.zeros(())


def client_alpha(alpha: float, num_samples: int, mean_samples: float | None) -> float:
    """A client's alpha: ``alpha * mean_samples / num_samples`` (the authors' ``alpha_coef / weight_list[k]``
    with ``weight_list = n_k / mean n``: clients with more data are regularised less), or ``alpha`` itself
    when ``mean_samples`` is None (one alpha for all)."""
    if mean_samples is None:
        return alpha
    return alpha * mean_samples / max(num_samples, 1)


def feddyn_server_update(
    drift: StateDict, prev: StateDict, client_states: Sequence[StateDict], num_clients: int
) -> tuple[StateDict, StateDict]:
    """The authors' server: ``drift <- drift + (1/N) sum_{k in S} (theta_k - theta_prev)`` (the mean over
    all N clients of each one's accumulated change), ``theta = mean_{k in S} theta_k + drift``. With one
    alpha for all clients this is the paper's h form, h = -alpha * drift. Returns (new global, new drift)
    over the keys of ``drift`` (the floating parameters)."""
    new_drift = {}
    new = {}
    for k in drift:
        diff = sum(s[k] - prev[k] for s in client_states)
        new_drift[k] = drift[k] + diff / num_clients
        new[k] = sum(s[k] for s in client_states) / len(client_states) + new_drift[k]
    return new, new_drift


def _float_params(state):
    return {k: v for k, v in state.items() if v.is_floating_point()}


class FedDyn(Objective):
    """FedDyn client: CE - <g_k, w> + alpha_k/2 ||w - w_global||^2 with the client's linear term g_k kept in
    its state, gradients clipped as the authors' code (Acar et al., "Federated Learning Based on Dynamic
    Regularization", ICLR 2021). alpha, its per-client scaling and the clipping norm come from the
    ``feddyn`` aggregation's broadcast.

    As in ``train_feddyn_mdl``, the norm clip applies to the gradient of CE - <g_k, w> - alpha_k <w,
    w_global>, and alpha_k w (the authors put it into SGD's weight decay) is added after the clip."""

    name = "feddyn"

    @classmethod
    def check_spec(cls, params, spec):
        return pairing_problems(spec, "feddyn", "feddyn")

    def setup(self, ctx):
        b = broadcast_value(ctx, "feddyn", "feddyn", "feddyn")
        self._alpha = client_alpha(b["alpha"], ctx.num_samples, b["mean_samples"])
        self._clip = b["clip_norm"]
        names = [n for n, _ in ctx.model.named_parameters()]
        self._g = ctx.state.get("grad") or {n: torch.zeros_like(ctx.global_state[n]) for n in names}
        self._ref_sq = float(sum(ctx.global_state[n].pow(2).sum() for n in names))

    def loss(self, model, x, y, ctx):
        params = list(model.named_parameters())
        ce = cross_entropy(model(x), y)
        linear = feddyn_linear_term(params, self._g)
        cross = sum((p * ctx.global_state[n]).sum() for n, p in params)
        minimised = ce - linear - self._alpha * cross
        with torch.no_grad():
            sq = sum(p.pow(2).sum() for _, p in params)
            reported = ce - linear + self._alpha / 2 * (sq - 2 * cross + self._ref_sq)
        return minimised, reported.detach()

    def before_step(self, ctx):
        params = [p for p in ctx.model.parameters() if p.grad is not None]
        if self._clip is not None:
            torch.nn.utils.clip_grad_norm_(params, max_norm=self._clip)
        for p in params:
            p.grad.add_(p.detach(), alpha=self._alpha)

    def finish(self, ctx):
        trained = dict(ctx.model.named_parameters())
        ctx.state["grad"] = {
            n: g - self._alpha * (trained[n].detach() - ctx.global_state[n]) for n, g in self._g.items()
        }
        return {}


class FedDynAggParams(Params):
    # alpemreacar/FedDyn example_cifar_10.py: alpha_coef = 1e-2 (paper: 0.01 to 0.1)
    alpha: float = Field(default=0.01, gt=0, description="dynamic regularisation weight (paper: 0.01 to 0.1)")
    alpha_per_client: bool = Field(
        default=True,
        description="scale alpha per client by mean n / n_k, as the authors' code (false: one alpha for all)",
    )
    # utils_general.py: max_norm = 10, clip_grad_norm_ after backward in every local step
    clip_norm: float | None = Field(
        default=10.0, gt=0, description="clip each local gradient to this norm (None: no clipping)"
    )
    evaluated_model: Literal["all_clients", "participants", "server"] = Field(
        default="all_clients",
        description="the model reported as the global model: the mean of every client's latest weights "
        "(the authors' all_model, plotted in their CIFAR-10 example), the mean of the round's participants "
        "(their avg_model), or the server model the clients receive (mean + drift; never evaluated there)",
    )


class FedDynAggregator(Aggregator):
    """FedDyn server: drift <- drift + (1/N) sum (theta_k - theta), theta <- mean theta_k + drift; reports
    the mean of all clients' latest weights by default (Acar et al., ICLR 2021, as their code). Pair with
    the ``feddyn`` objective."""

    name = "feddyn"
    Params = FedDynAggParams

    def __init__(self, params=None):
        super().__init__(params)
        self.drift: dict[str, torch.Tensor] | None = None
        self.num_clients = 0
        self.mean_samples: float | None = None
        self.initial: StateDict | None = None  # every client's weights before it first trains
        self.latest: dict[int, StateDict] = {}  # each client's latest trained weights (all_clients)
        self.last_average: StateDict | None = None  # the last round's participants' mean

    def start_run(self, run):
        self.num_clients = run.num_clients
        sizes = [c.num_train for c in run.clients]
        self.mean_samples = sum(sizes) / len(sizes) if self.params.alpha_per_client and sizes else None

    def broadcast(self, round, global_state):
        if self.initial is None and self.params.evaluated_model == "all_clients":
            self.initial = clone_state(_float_params(global_state))
        p = self.params
        return {"feddyn": {"alpha": p.alpha, "mean_samples": self.mean_samples, "clip_norm": p.clip_norm}}

    def aggregate(self, round, global_state, updates, failures):
        if self.drift is None:
            self.drift = {k: torch.zeros_like(v) for k, v in _float_params(global_state).items()}
        states = [u.state for u in updates]
        new, self.drift = feddyn_server_update(self.drift, global_state, states, self.num_clients)
        out = weighted_average(states, [1.0] * len(updates))
        if self.params.evaluated_model == "participants":
            self.last_average = {k: out[k].clone() for k in new}
        elif self.params.evaluated_model == "all_clients":
            for u in updates:
                self.latest[u.client_id] = {k: u.state[k].detach().clone() for k in new}
        out.update(new)
        return out

    def evaluated_state(self, round, global_state):
        mode = self.params.evaluated_model
        if mode == "server":
            return None
        if mode == "participants":
            chosen = self.last_average
        else:
            assert self.initial is not None, "the all-clients model needs the initial weights (broadcast)"
            every = [self.latest.get(c, self.initial) for c in range(self.num_clients)]
            chosen = weighted_average(every, [1.0] * len(every))
        if chosen is None:
            return None
        return {k: chosen[k].to(v.dtype) if k in chosen else v for k, v in global_state.items()}

    def state_dict(self):
        return {
            "drift": self.drift,
            "initial": self.initial,
            "latest": self.latest,
            "last_average": self.last_average,
        }

    def load_state_dict(self, state):
        self.drift = state.get("drift")
        if self.drift is None and state.get("h") is not None:  # a checkpoint of the h form: drift = -h/alpha
            self.drift = {k: -v / self.params.alpha for k, v in state["h"].items()}
        self.initial = state.get("initial")
        self.latest = dict(state.get("latest") or {})
        self.last_average = state.get("last_average")
