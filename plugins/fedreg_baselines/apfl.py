"""APFL (Deng, Kamani and Mahdavi, "Adaptive Personalized Federated Learning", arXiv 2003.13461, 2020): a
global copy and a personal model trained through their mixture, with an adaptive mixing weight; the mixing
and the mixing weight's step as plain functions.

Two readings, one parameter apart (``mixing``): the authors' code (MLOPTPSU/FedTorch,
``comms/trainings/federated/apfl.py``, ``comms/utils/eval.py`` ``inference_personal``,
``comms/utils/flow_utils.py`` ``alpha_update``) mixes the two models' *outputs*, alpha*v(x) +
(1-alpha)*w(x), steps w first and v on the mixture with the updated w; the paper's Algorithm 1 mixes their
*parameters* and steps both from the step's starting values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
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


def mixed_outputs(v_out: torch.Tensor, w_out: torch.Tensor, alpha: float) -> torch.Tensor:
    """The authors' personalised prediction: alpha * v(x) + (1 - alpha) * w(x) (FedTorch
    ``inference_personal``)."""
    return alpha * v_out + (1.0 - alpha) * w_out


def alpha_step(alpha: float, grad: float, lr: float) -> float:
    """APFL's adaptive mixing weight (Deng et al., Algorithm 1): alpha <- alpha - lr * grad, where grad is
    <v - w, grad f(alpha v + (1 - alpha) w)>, kept in [0, 1]."""
    return min(max(alpha - lr * grad, 0.0), 1.0)


def fedtorch_alpha_grad(
    v: Sequence[torch.Tensor],
    w: Sequence[torch.Tensor],
    v_grad: Sequence[torch.Tensor],
    w_grad: Sequence[torch.Tensor],
    alpha: float,
    reg: float,
) -> float:
    """The gradient FedTorch's ``alpha_update`` steps alpha with: sum over parameters of
    <v - w, alpha * grad_v + (1 - alpha) * grad_w> + reg * alpha, where grad_v and grad_w are the gradients
    of the mixed model's loss at the two models (grad_v including v's weight decay) and v, w their values
    after the step."""
    total = sum(
        float(((vk - wk) * (alpha * gv + (1.0 - alpha) * gw)).sum())
        for vk, wk, gv, gw in zip(v, w, v_grad, w_grad, strict=True)
    )
    return total + reg * alpha


class OutputMixture(nn.Module):
    """A module whose output is alpha * v(x) + (1 - alpha) * w(x): APFL's personalised model as the
    authors evaluate it."""

    def __init__(self, v: nn.Module, w: nn.Module, alpha: float):
        super().__init__()
        self.v, self.w, self.alpha = v, w, float(alpha)

    def forward(self, x):
        return mixed_outputs(self.v(x), self.w(x), self.alpha)


class APFLParams(Params):
    # FedTorch: --fed_personal_alpha 0.5 (fedtorch/parameters.py); the paper also runs fixed 0.25 / 0.75.
    alpha: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="mixing weight of the personal model v in alpha*v + (1-alpha)*w: the initial value of "
        "each client's alpha (adaptive) or the fixed value",
    )
    adaptive_alpha: bool = Field(
        default=True, description="learn each client's alpha by gradient (false: fixed alpha)"
    )
    # FedTorch steps alpha with the client's current learning rate.
    alpha_lr: float | None = Field(
        default=None, gt=0, description="step size of alpha; None: the round's learning rate"
    )
    mixing: Literal["outputs", "parameters"] = Field(
        default="outputs",
        description="'outputs': alpha*v(x) + (1-alpha)*w(x), w stepped before v (the authors' FedTorch "
        "code); 'parameters': the model alpha*v + (1-alpha)*w, w and v stepped together (the paper's "
        "Algorithm 1)",
    )
    alpha_update: Literal["per_round", "every_step"] = Field(
        default="per_round",
        description="when an adaptive alpha steps: once per round, on the first batch (FedTorch), or at "
        "every step (the paper's Algorithm 1)",
    )
    # FedTorch flow_utils.alpha_update adds 0.02 * alpha to alpha's gradient.
    alpha_reg: float = Field(default=0.02, ge=0, description="added to alpha's gradient as reg * alpha")
    personal_init: Literal["initial", "received"] = Field(
        default="initial",
        description="where a client's personal model starts: the run's initial weights (FedTorch copies the "
        "initial model once) or the global weights received at its first participation",
    )


class APFL(PersonalObjective):
    """APFL: a global copy w (sent) and a personal model v trained through their mixture, with each client's
    mixing weight alpha learned by gradient (Deng et al., 2020).

    Deng, Kamani and Mahdavi, "Adaptive Personalized Federated Learning", arXiv 2003.13461, 2020. By default
    as the authors' FedTorch code runs it (``mixing: outputs``): per batch w takes a cross-entropy step,
    then v a step on the cross-entropy of alpha*v(x) + (1-alpha)*w(x) with the updated w; once per round
    (first batch) an adaptive alpha steps by FedTorch's rule (``fedtorch_alpha_grad``). With ``mixing:
    parameters`` the mixture is the model alpha*v + (1-alpha)*w and w, v and alpha all step from the step's
    starting values (the paper's Algorithm 1). v and alpha are kept in ``ctx.state`` ("personal", "alpha");
    v starts from the run's initial weights (``personal_init``). Local metrics evaluate the mixture with the
    client's alpha and w (the trained copy after training, the final global model at the end of the run).
    The reported train loss is w's.
    """

    name = "apfl"
    Params = APFLParams

    @classmethod
    def relative_cost(cls, params, spec):
        return 2.0  # the personal and the global model both train on every batch

    # -- shared ------------------------------------------------------------------------------------------
    def personal_start(self, ctx) -> StateDict:
        if "personal" in ctx.state:
            return ctx.state["personal"]
        return ctx.initial_state() if self.params.personal_init == "initial" else ctx.global_state

    def setup(self, ctx):
        p = self.params
        start = self.personal_start(ctx)
        alpha = float(ctx.state.get("alpha", p.alpha))
        self._alpha_lr = p.alpha_lr if p.alpha_lr is not None else ctx.lr
        self._steps = 0
        self._pending = None
        # a float (output mixing, or a fixed alpha), a tensor with a gradient when learned in parameter mixing
        self._alpha: Any
        if p.mixing == "outputs":
            self._alpha = alpha
            self._vmodel = ctx.build_model()
            self._vmodel.load_state_dict(start)
            self._w_opt = ctx.make_optimizer(list(ctx.model.parameters()))
        else:
            names = [k for k, _ in ctx.model.named_parameters()]
            self._v: Any = {  # the personal parameters (parameter mixing), None once finished
                k: start[k].detach().clone().requires_grad_(True) for k in names
            }
            self._alpha = torch.tensor(alpha, requires_grad=True) if p.adaptive_alpha else alpha

    def alpha_due(self) -> bool:
        """Whether alpha steps at this step (the step counter counts the round's steps so far)."""
        return self.params.adaptive_alpha and (self.params.alpha_update == "every_step" or self._steps == 0)

    def train(self, ctx):
        ctx.model.train()
        self.call("setup", ctx, ctx)
        if self.params.mixing == "outputs":
            v = self._vmodel
            total, steps = self.run_epochs(ctx, v, v.parameters(), loss_method="sequential_loss")
        else:
            params = [*ctx.model.parameters(), *self._v.values()]  # SGD is per parameter: w, v step together
            total, steps = self.run_epochs(ctx, ctx.model, params, loss_method="step_loss")
        payload = self.call("finish", ctx, ctx) or {}
        return TrainOutput(loss=total / max(steps, 1), steps=steps, payload=payload)

    def finish(self, ctx):
        if self.params.mixing == "outputs":
            self.apply_pending_alpha(ctx)
            ctx.state["personal"] = clone_state(self._vmodel.state_dict())
            self._vmodel = self._w_opt = None
        else:
            ctx.state["personal"] = clone_state(self._v)
            self._v = None
        a = self._alpha
        ctx.state["alpha"] = float(a.detach()) if isinstance(a, torch.Tensor) else float(a)
        return {}

    def eval_model(self, ctx):
        alpha = float(ctx.state.get("alpha", self.params.alpha))
        v = self.personal_start(ctx)
        if self.params.mixing == "outputs":
            return OutputMixture(self.model_from(ctx, v), ctx.model, alpha).eval()
        return self.model_from(ctx, mix_states(v, ctx.model.state_dict(), alpha))

    # -- mixing: outputs (FedTorch) ------------------------------------------------------------------------
    def sequential_loss(self, v, x, y, ctx):
        """One batch as FedTorch trains it: w's cross-entropy step (here, with w's own optimizer), then the
        loss of the output mixture with the updated w, returned for v's step (and w's loss, reported). w's
        output keeps its graph only where alpha steps, whose rule reads w's gradient of the mixture."""
        self.apply_pending_alpha(ctx)
        w = ctx.model
        self._w_opt.zero_grad(set_to_none=True)
        loss_w = self.call("loss", ctx, w, x, y, ctx)
        if not torch.isfinite(loss_w.detach()):
            return loss_w, loss_w  # the loop stops this client as diverged
        loss_w.backward()
        self._w_opt.step()
        self._w_opt.zero_grad(set_to_none=True)  # w's gradient of the mixture alone, as FedTorch
        w_out = w(x)
        mixed = mixed_outputs(v(x), w_out if self.alpha_due() else w_out.detach(), self._alpha)
        return cross_entropy(mixed, y), loss_w

    def apply_pending_alpha(self, ctx) -> None:
        """FedTorch steps alpha right after v's step, with v and w after their steps and the gradients of
        the mixture; those gradients were kept before v's step (``before_step``)."""
        if self._pending is None:
            return
        v_grad, w_grad = self._pending
        self._pending = None
        w_params = list(ctx.model.parameters())
        v_params = list(self._vmodel.parameters())
        grad = fedtorch_alpha_grad(
            [p.detach() for p in v_params],
            [p.detach() for p in w_params],
            v_grad,
            w_grad,
            self._alpha,
            self.params.alpha_reg,
        )
        self._alpha = alpha_step(self._alpha, grad, self._alpha_lr)

    # -- mixing: parameters (the paper's Algorithm 1) ------------------------------------------------------
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

    # -- both ----------------------------------------------------------------------------------------------
    def before_step(self, ctx):
        due = self.alpha_due()
        self._steps += 1
        if not due:
            return
        if self.params.mixing == "outputs":
            # v's gradient as FedTorch's SGD leaves it after the step (weight decay added), and w's of the
            # mixture; alpha steps once v has stepped (apply_pending_alpha)
            wd = ctx.weight_decay
            v_grad = [
                (p.grad if p.grad is not None else torch.zeros_like(p)) + wd * p.detach()
                for p in self._vmodel.parameters()
            ]
            w_grad = [
                p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for p in ctx.model.parameters()
            ]
            self._pending = (v_grad, w_grad)
            return
        a = self._alpha
        if isinstance(a, torch.Tensor):  # alpha's gradient is from the step's starting v, w and alpha
            value = float(a.detach())
            grad = (float(a.grad) if a.grad is not None else 0.0) + self.params.alpha_reg * value
            self._alpha = torch.tensor(alpha_step(value, grad, self._alpha_lr), requires_grad=True)
