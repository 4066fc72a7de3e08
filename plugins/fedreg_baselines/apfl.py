"""APFL (Deng, Kamani and Mahdavi, "Adaptive Personalized Federated Learning", arXiv 2003.13461, 2020): a
global copy and a personal model trained through their mixture, with an adaptive mixing weight; the mixing
and the mixing weight's step as plain functions."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field
from torch.func import functional_call

from fedreg.components import Params, StateDict, TrainOutput, clone_state
from fedreg.losses import cross_entropy
from fedreg_baselines._personal import PersonalObjective


def mix_states(v: Mapping[str, torch.Tensor], w: Mapping[str, torch.Tensor], alpha: float) -> StateDict:
    """APFL's mixed model: alpha * v + (1 - alpha) * w for every floating key of ``w`` that ``v`` has; every
    other key (buffers ``v`` lacks, integer counters) is taken from ``w``. alpha = 0 gives ``w`` exactly."""
    out: StateDict = {}
    for k, wk in w.items():
        wk = wk.detach()
        if k in v and wk.is_floating_point():
            out[k] = (alpha * v[k].detach() + (1.0 - alpha) * wk).to(wk.dtype)
        else:
            out[k] = wk.clone()
    return out


def mixed_parameters(
    v: Mapping[str, torch.Tensor], w: Mapping[str, torch.Tensor], alpha: float | torch.Tensor
) -> dict[str, torch.Tensor]:
    """APFL's mixed parameters alpha * v + (1 - alpha) * w with ``w`` detached, so a loss of the mixed model
    differentiates with respect to ``v`` (the update of v in Deng et al., Algorithm 1) and, when ``alpha``
    is a tensor that requires grad, with respect to alpha: d/d alpha = <v - w, grad f(mixed)>."""
    return {k: alpha * v[k] + (1.0 - alpha) * w[k].detach() for k in v}


def alpha_step(alpha: float, grad: float, lr: float) -> float:
    """APFL's adaptive mixing weight (Deng et al., Algorithm 1): alpha <- alpha - lr * grad, where grad is
    <v - w, grad f(alpha v + (1 - alpha) w)>, kept in [0, 1]."""
    return min(max(alpha - lr * grad, 0.0), 1.0)


class APFLParams(Params):
    # The paper runs fixed alpha in {0.25, 0.5, 0.75} as well as the adaptively learned alpha (its headline
    # method); 0.25 is the start of the adaptive alpha and the fixed value with adaptive_alpha: false.
    alpha: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="mixing weight of the personal model v in alpha*v + (1-alpha)*w: the initial value of "
        "each client's alpha (adaptive) or the fixed value",
    )
    adaptive_alpha: bool = Field(
        default=True, description="learn each client's alpha by gradient at every step (false: fixed alpha)"
    )
    # The authors' code (MLOPTPSU/FedTorch) steps alpha with the model's learning rate.
    alpha_lr: float | None = Field(
        default=None, gt=0, description="step size of alpha; None: the round's learning rate"
    )


class APFL(PersonalObjective):
    """APFL: a global copy w (sent) and a personal model v trained through the mixture alpha*v + (1-alpha)*w,
    with each client's alpha learned by gradient (Deng et al., 2020).

    Deng, Kamani and Mahdavi, "Adaptive Personalized Federated Learning", arXiv 2003.13461, 2020. At every
    step, on the same batch, w takes a cross-entropy step, v a step on the cross-entropy of the mixed model
    with w held fixed, and (``adaptive_alpha``) alpha a step on the same loss, alpha <- clip(alpha - eta *
    <v - w, grad f(mixed)>, 0, 1), all from the step's starting values, as in the paper's Algorithm 1. v and
    alpha are kept in ``ctx.state`` ("personal", "alpha"; initialised from the received weights and
    ``alpha``). Local metrics evaluate the mixed model with the client's alpha and w (the trained copy after
    training, the final global model at the end of the run). The reported train loss is w's.
    """

    name = "apfl"
    Params = APFLParams

    def setup(self, ctx):
        start = ctx.state.get("personal", ctx.global_state)
        self._v = {k: start[k].detach().clone().requires_grad_(True) for k, _ in ctx.model.named_parameters()}
        self._alpha = self.new_alpha(float(ctx.state.get("alpha", self.params.alpha)))
        self._alpha_lr = self.params.alpha_lr if self.params.alpha_lr is not None else ctx.lr

    def new_alpha(self, value: float) -> float | torch.Tensor:
        if not self.params.adaptive_alpha:
            return value
        return torch.tensor(value, requires_grad=True)

    def mixed_loss(self, model, x, y, ctx):
        mixed = mixed_parameters(self._v, dict(model.named_parameters()), self._alpha)
        return cross_entropy(functional_call(model, mixed, (x,)), y)

    def step_loss(self, model, x, y, ctx):
        """Both models' losses on one batch: w's cross-entropy plus the mixed model's, w detached in the mix,
        so one backward gives w the gradient of its own loss, v and alpha those of the mixture. Reported:
        w's."""
        loss_w = self.call("loss", ctx, model, x, y, ctx)
        loss_v = self.call("mixed_loss", ctx, model, x, y, ctx)
        return loss_w + loss_v, loss_w

    def before_step(self, ctx):
        a = self._alpha
        if isinstance(a, torch.Tensor):  # alpha's gradient is from the step's starting v, w and alpha
            grad = float(a.grad) if a.grad is not None else 0.0
            self._alpha = self.new_alpha(alpha_step(float(a.detach()), grad, self._alpha_lr))

    def train(self, ctx):
        ctx.model.train()
        self.call("setup", ctx, ctx)
        params = [*ctx.model.parameters(), *self._v.values()]  # SGD is per parameter: w and v step together
        total, steps = self.run_epochs(ctx, ctx.model, params, loss_method="step_loss")
        payload = self.call("finish", ctx, ctx) or {}
        return TrainOutput(loss=total / max(steps, 1), steps=steps, payload=payload)

    def finish(self, ctx):
        ctx.state["personal"] = clone_state(self._v)
        a = self._alpha
        ctx.state["alpha"] = float(a.detach()) if isinstance(a, torch.Tensor) else float(a)
        self._v = None
        return {}

    def eval_model(self, ctx):
        alpha = float(ctx.state.get("alpha", self.params.alpha))
        v = ctx.state.get("personal", ctx.global_state)
        return self.model_from(ctx, mix_states(v, ctx.model.state_dict(), alpha))
