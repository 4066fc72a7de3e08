"""APFL (Deng, Kamani and Mahdavi, "Adaptive Personalized Federated Learning", arXiv 2003.13461, 2020): a
global copy and a personal model trained through their mixture; the mixing as plain functions."""

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
    v: Mapping[str, torch.Tensor], w: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """APFL's mixed parameters alpha * v + (1 - alpha) * w with ``w`` detached, so a loss of the mixed model
    differentiates with respect to ``v`` only (the update of v in Deng et al., Algorithm 1)."""
    return {k: alpha * v[k] + (1.0 - alpha) * w[k].detach() for k in v}


class APFLParams(Params):
    # The paper runs fixed alpha in {0.25, 0.5, 0.75} as well as an adaptively learned alpha; this component
    # keeps alpha fixed.
    alpha: float = Field(
        default=0.25, ge=0, le=1, description="mixing weight of the personal model v in alpha*v + (1-alpha)*w"
    )


class APFL(PersonalObjective):
    """APFL: a global copy w (sent) and a personal model v trained through the mixture alpha*v + (1-alpha)*w
    (Deng et al., 2020).

    Deng, Kamani and Mahdavi, "Adaptive Personalized Federated Learning", arXiv 2003.13461, 2020. At every
    step, on the same batch, w takes a cross-entropy step and v a step on the cross-entropy of the mixed
    model with w held fixed (both from the step's starting values, as in the paper's Algorithm 1). v is kept
    in ``ctx.state["personal"]`` (initialised from the received weights). Local metrics evaluate the mixed
    model with the trained w. alpha is fixed (the paper's adaptive alpha is not implemented). The reported
    train loss is w's.
    """

    name = "apfl"
    Params = APFLParams

    def setup(self, ctx):
        start = ctx.state.get("personal", ctx.global_state)
        self._v = {k: start[k].detach().clone().requires_grad_(True) for k, _ in ctx.model.named_parameters()}

    def mixed_loss(self, model, x, y, ctx):
        mixed = mixed_parameters(self._v, dict(model.named_parameters()), self.params.alpha)
        return cross_entropy(functional_call(model, mixed, (x,)), y)

    def step_loss(self, model, x, y, ctx):
        """Both models' losses on one batch: w's cross-entropy plus the mixed model's, w detached in the mix,
        so one backward gives w the gradient of its own loss and v that of the mixture. Reported: w's."""
        loss_w = self.call("loss", ctx, model, x, y, ctx)
        loss_v = self.call("mixed_loss", ctx, model, x, y, ctx)
        return loss_w + loss_v, loss_w

    def train(self, ctx):
        ctx.model.train()
        self.call("setup", ctx, ctx)
        params = [*ctx.model.parameters(), *self._v.values()]  # SGD is per parameter: w and v step together
        total, steps = self.run_epochs(ctx, ctx.model, params, loss_method="step_loss")
        payload = self.call("finish", ctx, ctx) or {}
        return TrainOutput(loss=total / max(steps, 1), steps=steps, payload=payload)

    def finish(self, ctx):
        ctx.state["personal"] = clone_state(self._v)
        self._v = None
        return {}

    def eval_model(self, ctx):
        return self.model_from(
            ctx, mix_states(ctx.state["personal"], ctx.model.state_dict(), self.params.alpha)
        )
