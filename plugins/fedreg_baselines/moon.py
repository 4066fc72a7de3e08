"""MOON (Li et al., "Model-Contrastive Federated Learning", CVPR 2021): cross-entropy plus a model-contrastive
loss on the representation (the input of the model's last linear layer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedreg.components import Objective, Params
from fedreg.errors import FedregError
from fedreg.losses import cross_entropy


def moon_contrastive(
    z: torch.Tensor, z_global: torch.Tensor, z_prev: torch.Tensor, tau: float
) -> torch.Tensor:
    """MOON: -log( e^{sim(z,zg)/tau} / (e^{sim(z,zg)/tau} + e^{sim(z,zp)/tau}) ), mean over the batch."""
    pos = F.cosine_similarity(z, z_global.detach(), dim=1)
    neg = F.cosine_similarity(z, z_prev.detach(), dim=1)
    logits = torch.stack([pos, neg], dim=1) / tau
    return cross_entropy(logits, torch.zeros(len(z), dtype=torch.long))


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

    @classmethod
    def relative_cost(cls, params, spec):
        return 5 / 3  # forward passes of the received and the previous model per batch

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
        assert z is not None and z_g is not None and z_p is not None, (
            "the forward hooks saw the representations"
        )
        return cross_entropy(logits, y) + self.params.mu * moon_contrastive(z, z_g, z_p, self.params.tau)

    def finish(self, ctx):
        for r in self._reps:
            r.remove()
        self._reps, self._prev, self._global = [], None, None
        ctx.state["prev"] = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        return {}
