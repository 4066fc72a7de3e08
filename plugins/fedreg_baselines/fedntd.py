"""FedNTD (Lee et al., "Preservation of the Global Knowledge by Not-True Distillation in Federated Learning",
NeurIPS 2022): cross-entropy plus distillation from the received global model on the not-true classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from fedreg.components import Objective, Params
from fedreg.losses import cross_entropy


def not_true_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The logits of every class but the true one: (B, C) -> (B, C - 1), order kept."""
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep.scatter_(1, y.unsqueeze(1), False)
    return logits[keep].view(logits.shape[0], logits.shape[1] - 1)


def not_true_distillation(
    local_logits: torch.Tensor, global_logits: torch.Tensor, y: torch.Tensor, tau: float
) -> torch.Tensor:
    """FedNTD: KL(softmax(g~/tau) || softmax(z~/tau)) on the not-true classes, batch mean, without the
    tau^2 factor of other distillation losses (as the authors' NTD_Loss, Lee-Gihun/FedNTD
    algorithms/fedntd/criterion.py)."""
    z = not_true_logits(local_logits, y)
    g = not_true_logits(global_logits.detach(), y)
    return F.kl_div(
        F.log_softmax(z / tau, 1), F.log_softmax(g / tau, 1), reduction="batchmean", log_target=True
    )


class FedNTDParams(Params):
    # Lee-Gihun/FedNTD config/fedntd.json: tau 1, beta 1 (NTD_Loss's own constructor defaults: tau 3, beta 1)
    beta: float = Field(default=1.0, ge=0, description="weight of not-true distillation")
    tau: float = Field(default=1.0, gt=0, description="temperature")


class FedNTD(Objective):
    """FedNTD: CE + beta * not-true distillation from the frozen global model (Lee et al., "Preservation of
    the Global Knowledge by Not-True Distillation in Federated Learning", NeurIPS 2022)."""

    name = "fedntd"
    Params = FedNTDParams

    @classmethod
    def relative_cost(cls, params, spec):
        return 4 / 3  # a forward pass of the received (teacher) model per batch

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
