"""Global-FL baselines: FedProx, SCAFFOLD, FedDyn, MOON, FedNTD (math in :mod:`fedreg_baselines.losses`)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from fedreg.aggregate import weighted_average
from fedreg.components import Aggregator, Objective, Params
from fedreg.errors import FedregError
from fedreg.losses import cross_entropy
from fedreg_baselines.losses import (
    feddyn_linear_term,
    feddyn_server_update,
    moon_contrastive,
    not_true_distillation,
    proximal_loss,
    proximal_term,
    scaffold_client_control,
    scaffold_server_control,
)


def _float_params(state):
    return {k: v for k, v in state.items() if v.is_floating_point()}


def _pairing(spec, objective: str, aggregator: str) -> list[str]:
    """The objective and the aggregation of these methods work only together."""
    if spec.training.objective.name == objective and spec.federation.aggregation.name != aggregator:
        return [
            f"objective '{objective}' needs the '{aggregator}' aggregation (it sends the server state the "
            f"objective uses); set federation.aggregation: {aggregator}"
        ]
    return []


def _needs(ctx, key: str, objective: str, aggregator: str):
    if key not in ctx.broadcast:
        raise FedregError(
            f"objective '{objective}' needs the '{aggregator}' aggregation (set "
            f"federation.aggregation: {aggregator})"
        )
    return ctx.broadcast[key]


# --- FedProx ------------------------------------------------------------------------------------------------


class FedProxParams(Params):
    mu: float = Field(default=0.01, ge=0, description="proximal weight (paper grid: 0.001 to 1)")


class FedProx(Objective):
    """FedProx: cross-entropy + mu/2 ||w - w_global||^2 (Li et al., "Federated Optimization in Heterogeneous
    Networks", MLSys 2020)."""

    name = "fedprox"
    api_version = 3  # its loss is a functional_loss alone (the local loop needs contract 3)
    Params = FedProxParams

    def functional_loss(self, forward, params, x, y, weight, fctx):  # mu = 0 is FedAvg exactly
        return proximal_loss(
            forward(params, x), y, params.items(), fctx.global_params, self.params.mu, weight
        )


# --- SCAFFOLD -----------------------------------------------------------------------------------------------


class Scaffold(Objective):
    """SCAFFOLD client: gradients corrected by (c - c_i), control variate c_i updated by option II
    (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020).

    Pair with the ``scaffold`` aggregation. Option II's (x - y_i) / (K lr) assumes plain SGD; with SGD
    momentum beta the step size used there is the effective lr / (1 - beta)."""

    name = "scaffold"

    @classmethod
    def check_spec(cls, params, spec):
        return _pairing(spec, "scaffold", "scaffold")

    def setup(self, ctx):
        c = _needs(ctx, "scaffold_c", "scaffold", "scaffold")
        c_i = ctx.state.get("c_i") or {k: torch.zeros_like(v) for k, v in c.items()}
        self._c, self._c_i = c, c_i
        self._corr = {k: c[k] - c_i[k] for k in c}
        self._active = any(bool(v.any()) for v in self._corr.values())
        self._params = dict(ctx.model.named_parameters())
        self._steps = 0

    def loss(self, model, x, y, ctx):
        return cross_entropy(model(x), y)

    def before_step(self, ctx):
        self._steps += 1
        if self._active:
            for k, p in self._params.items():
                if p.grad is not None:
                    p.grad.add_(self._corr[k])

    def finish(self, ctx):
        y = {k: v.detach() for k, v in ctx.model.state_dict().items() if k in self._c}
        x = {k: ctx.global_state[k] for k in self._c}
        # option II assumes plain SGD; with momentum beta the effective step is lr / (1 - beta)
        new_c_i = scaffold_client_control(
            self._c_i, self._c, x, y, self._steps, ctx.lr / (1.0 - ctx.momentum)
        )
        delta = {k: new_c_i[k] - self._c_i[k] for k in new_c_i}
        ctx.state["c_i"] = new_c_i
        self._params = None
        return {"scaffold_delta_c": delta}


class ScaffoldAggParams(Params):
    global_lr: float = Field(default=1.0, gt=0, description="server step size eta_g")


class ScaffoldAggregator(Aggregator):
    """SCAFFOLD server: keeps the server control variate c; weights average by sample counts as FedAvg
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
        avg = weighted_average([u.state for u in updates], [u.num_samples for u in updates])
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
        self.c = scaffold_server_control(self.c, deltas, self.num_clients)
        return avg

    def state_dict(self):
        return {"c": self.c}

    def load_state_dict(self, state):
        self.c = state.get("c")


# --- FedDyn -------------------------------------------------------------------------------------------------


class FedDyn(Objective):
    """FedDyn client: CE - <g_k, w> + alpha/2 ||w - w_global||^2 with the client's linear term g_k kept in its
    state (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021). alpha comes from the
    ``feddyn`` aggregation."""

    name = "feddyn"

    @classmethod
    def check_spec(cls, params, spec):
        return _pairing(spec, "feddyn", "feddyn")

    def setup(self, ctx):
        self._alpha = _needs(ctx, "feddyn_alpha", "feddyn", "feddyn")
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


# --- MOON ---------------------------------------------------------------------------------------------------


def _last_linear(model: nn.Module) -> nn.Linear:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise FedregError(
            "MOON needs a model whose classifier is an nn.Linear (its input is the representation)"
        )
    return last


class _Representation:
    """Captures the input of a model's last linear layer (its representation) on every forward."""

    def __init__(self, model: nn.Module):
        self.value = None
        self.handle = _last_linear(model).register_forward_pre_hook(self._grab)

    def _grab(self, module, args):
        self.value = args[0]

    def remove(self):
        self.handle.remove()


class MoonParams(Params):
    mu: float = Field(default=1.0, ge=0, description="weight of the model-contrastive loss")
    tau: float = Field(default=0.5, gt=0, description="temperature")


class Moon(Objective):
    """MOON: CE + mu * model-contrastive loss pulling the representation toward the global model's and away
    from the client's previous local model's (Li et al., "Model-Contrastive Federated Learning",
    CVPR 2021)."""

    name = "moon"
    Params = MoonParams

    def setup(self, ctx):
        self._global = ctx.global_model()
        prev_state = ctx.state.get("prev")
        if prev_state is None:
            self._prev = self._global  # first participation: the received model is the previous one
        else:
            self._prev = ctx.build_model()
            self._prev.load_state_dict(prev_state)
            self._prev.eval()
        self._reps = [
            _Representation(m) for m in {id(m): m for m in (ctx.model, self._global, self._prev)}.values()
        ]

    def loss(self, model, x, y, ctx):
        rep_local = self._reps[0]
        logits = model(x)
        z = rep_local.value
        with torch.no_grad():
            self._global(x)
            z_g = self._reps[1].value
            if self._prev is self._global:
                z_p = z_g
            else:
                self._prev(x)
                z_p = self._reps[2].value
        return cross_entropy(logits, y) + self.params.mu * moon_contrastive(z, z_g, z_p, self.params.tau)

    def finish(self, ctx):
        for r in self._reps:
            r.remove()
        self._reps, self._prev, self._global = [], None, None
        ctx.state["prev"] = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        return {}


# --- FedNTD -------------------------------------------------------------------------------------------------


class FedNTDParams(Params):
    beta: float = Field(default=1.0, ge=0, description="weight of not-true distillation")
    tau: float = Field(default=1.0, gt=0, description="temperature")


class FedNTD(Objective):
    """FedNTD: CE + beta * not-true distillation from the frozen global model (Lee et al., "Preservation of
    the Global Knowledge by Not-True Distillation in Federated Learning", NeurIPS 2022)."""

    name = "fedntd"
    Params = FedNTDParams

    def setup(self, ctx):
        self._teacher = ctx.global_model()

    def loss(self, model, x, y, ctx):
        logits = model(x)
        with torch.no_grad():
            g = self._teacher(x)
        return cross_entropy(logits, y) + self.params.beta * not_true_distillation(
            logits, g, y, self.params.tau
        )

    def finish(self, ctx):
        self._teacher = None
        return {}
