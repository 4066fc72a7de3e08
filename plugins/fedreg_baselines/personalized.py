"""Personalised-FL baselines: Ditto, FedPer, FedRep, FedBABU, APFL and local-only training, as local
objectives (math in :mod:`fedreg_baselines.personal_math`). All pair with the ``fedavg`` aggregation.

Each client's own weights live in ``ctx.state`` as plain state dicts (cloned tensors), never as modules:
``ctx.model`` is one module reused by every client. Extra models are built with ``ctx.build_model()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from fedreg.components import NonFiniteLoss, Objective, Params, TrainOutput, clone_state
from fedreg.errors import ComponentFailure, FedregError
from fedreg.losses import cross_entropy
from fedreg_baselines.losses import proximal_loss
from fedreg_baselines.personal_math import (
    mix_states,
    mixed_parameters,
    select_state,
    split_keys,
)

# --- shared pieces ------------------------------------------------------------------------------------------


@contextmanager
def frozen(params: Iterable[nn.Parameter]):
    """Turn off ``requires_grad`` for ``params`` inside the block and restore each flag afterwards
    (``ctx.model`` is shared by every client, so a frozen flag must never outlive the client)."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def split_parameters(model: nn.Module, prefixes: Sequence[str], what: str) -> tuple[list, list]:
    """(parameters under ``prefixes``, the others); raises if either side is empty (nothing personal, or
    nothing shared)."""
    named = dict(model.named_parameters())
    head, body = split_keys(named, prefixes)
    if not head:
        raise FedregError(
            f"{what} {list(prefixes)} match no parameter of the model; its parameters are {sorted(named)}"
        )
    if not body:
        raise FedregError(
            f"{what} {list(prefixes)} match every parameter of the model, so nothing is shared "
            f"(use the 'local_only' objective for that)"
        )
    return [named[k] for k in head], [named[k] for k in body]


def restore_layers(model: nn.Module, stored: dict[str, torch.Tensor]) -> None:
    """Load a client's stored layers over the received global weights (the other keys keep their values)."""
    result = model.load_state_dict(stored, strict=False)
    if result.unexpected_keys:
        raise FedregError(f"stored personal layers {result.unexpected_keys} are not in the model")


class _PersonalObjective(Objective):
    """Cross-entropy objective whose local metrics use the personal model (a base, not registered)."""

    local_model_role = "personal"

    def loss(self, model, x, y, ctx):
        return cross_entropy(model(x), y)

    def model_from(self, ctx, state: dict[str, torch.Tensor]) -> nn.Module:
        m = ctx.build_model()
        m.load_state_dict(state)
        m.eval()
        return m


# --- Ditto --------------------------------------------------------------------------------------------------


class DittoParams(Params):
    # The paper selects lambda per dataset from a small grid (Li et al. 2021, Sec. 5 and App.); 0.1 lies
    # inside it and is the usual default of reimplementations. lambda = 0 makes v plain local training
    # continued across rounds; a large lambda pulls v onto the received global model.
    lam: float = Field(
        default=0.1, ge=0, description="lambda: weight of lam/2 ||v - w_global||^2 on the personal model v"
    )


class Ditto(_PersonalObjective):
    """Ditto: a global copy trained with cross-entropy (sent) and a personal model pulled toward the received
    global weights (Li et al., ICML 2021).

    Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through Personalization", ICML 2021.
    Each round the client trains the received global weights w with cross-entropy for ``ctx.epochs`` (this is
    what the server averages, so Ditto's global model is FedAvg's), then its personal model v (kept in
    ``ctx.state["personal"]``, initialised from the received global weights at first participation) for
    ``ctx.epochs`` on CE(v) + lam/2 ||v - w_received||^2. Local metrics evaluate v. The reported train loss
    is the global copy's.
    """

    name = "ditto"
    Params = DittoParams

    def train(self, ctx):
        out = super().train(ctx)  # the global copy: the base loop, cross-entropy
        v = ctx.build_model()
        v.load_state_dict(ctx.state.get("personal", ctx.global_state))
        self.run_epochs(ctx, v, v.parameters(), ctx.epochs, "personal_loss")
        ctx.state["personal"] = clone_state(v.state_dict())
        return out

    def personal_loss(self, model, x, y, ctx):
        return proximal_loss(model(x), y, model.named_parameters(), ctx.global_state, self.params.lam)

    def eval_model(self, ctx):
        return self.model_from(ctx, ctx.state["personal"])


# --- FedPer / FedRep ----------------------------------------------------------------------------------------


def _layers_field(description: str):
    return Field(default_factory=lambda: ["fc"], min_length=1, description=description)


class FedPerParams(Params):
    personal_layers: list[str] = _layers_field(
        "module-name prefixes of the personal layers (a key k matches p when k == p or k starts with 'p.'); "
        "'fc' is the classifier of the 'cnn' model"
    )


class FedPer(_PersonalObjective):
    """FedPer: shared base layers, personal head layers kept by each client (Arivazhagan et al., 2019).

    Arivazhagan, Aggarwal, Singh and Choudhary, "Federated Learning with Personalization Layers", arXiv
    1912.00818, 2019. ``setup`` loads the client's stored head (``ctx.state["head"]``) over the received
    weights; the whole model trains with cross-entropy; ``finish`` stores the trained head. The server
    averages every key (``fedavg``), so the global head is only an average no client uses after its first
    round. Local metrics evaluate the trained model with the client's own head.
    """

    name = "fedper"
    Params = FedPerParams

    def setup(self, ctx):
        split_parameters(ctx.model, self.params.personal_layers, "personal_layers")
        if "head" in ctx.state:
            restore_layers(ctx.model, ctx.state["head"])

    def finish(self, ctx):
        ctx.state["head"] = select_state(ctx.model.state_dict(), self.params.personal_layers)
        return {}


class FedRepParams(Params):
    personal_layers: list[str] = _layers_field(
        "module-name prefixes of the personal head (matched as in fedper)"
    )
    # FedRep's experiments train the head for 10 local epochs and the representation for 1 (Collins et al.
    # 2021, Sec. 5); the representation's epochs are training.local_epochs.
    head_epochs: int = Field(default=10, ge=0, description="epochs of head-only training before the body")


class FedRep(_PersonalObjective):
    """FedRep: shared representation, personal head; the head is trained first (body frozen), then the body
    (Collins et al., ICML 2021).

    Collins, Hassani, Mokhtari and Shakkottai, "Exploiting Shared Representations for Personalized Federated
    Learning", ICML 2021. The client restores its stored head, trains the head alone for ``head_epochs``,
    then the body alone for ``ctx.epochs``, and stores the head. The server averages every key
    (``fedavg``); only the body of the global model is meaningful. Local metrics evaluate the trained model
    with the client's own head. The reported train loss is the mean over both phases.
    """

    name = "fedrep"
    Params = FedRepParams

    def setup(self, ctx):
        if "head" in ctx.state:
            restore_layers(ctx.model, ctx.state["head"])

    def train(self, ctx):
        model = ctx.model
        model.train()
        head, body = split_parameters(model, self.params.personal_layers, "personal_layers")
        self.call("setup", ctx, ctx)
        total, steps = 0.0, 0
        for trained, fixed, epochs in ((head, body, self.params.head_epochs), (body, head, ctx.epochs)):
            with frozen(fixed):
                t, s = self.run_epochs(ctx, model, trained, epochs)
            total, steps = total + t, steps + s
        payload = self.call("finish", ctx, ctx) or {}
        return TrainOutput(loss=total / max(steps, 1), steps=steps, payload=payload)

    def finish(self, ctx):
        ctx.state["head"] = select_state(ctx.model.state_dict(), self.params.personal_layers)
        return {}


# --- FedBABU ------------------------------------------------------------------------------------------------


class FedBABUParams(Params):
    head_layers: list[str] = _layers_field(
        "module-name prefixes of the head, never trained during federation (matched as in fedper)"
    )
    # The paper evaluates personalisation after a few fine-tuning epochs; 1 keeps per-round evaluation cheap.
    finetune_epochs: int = Field(
        default=1, ge=0, description="epochs of whole-model fine-tuning for evaluation"
    )
    finetune_lr: float | None = Field(
        default=None, gt=0, description="fine-tuning learning rate; None: the round's learning rate"
    )


class FedBABU(_PersonalObjective):
    """FedBABU: the body is trained and shared with the head frozen at its initialisation; evaluation
    fine-tunes a copy (Oh et al., ICLR 2022).

    Oh, Kim and Yun, "FedBABU: Toward Enhanced Representation for Federated Image Classification", ICLR 2022.
    During local training the head receives no gradient and no step (not even weight decay), so every client
    returns it unchanged and the averaged global head stays at its random initialisation. ``eval_model``
    fine-tunes a copy of the trained model (whole network) on the client's training data for
    ``finetune_epochs``; the copy is discarded and never reaches the server.
    """

    name = "fedbabu"
    Params = FedBABUParams

    def train(self, ctx):
        head, _ = split_parameters(ctx.model, self.params.head_layers, "head_layers")
        with frozen(head):
            return super().train(ctx)

    def eval_model(self, ctx):
        m = ctx.build_model()
        m.load_state_dict(ctx.model.state_dict())
        lr = self.params.finetune_lr if self.params.finetune_lr is not None else ctx.lr
        self.run_epochs(ctx, m, m.parameters(), self.params.finetune_epochs, lr=lr)
        m.eval()
        return m


# --- APFL ---------------------------------------------------------------------------------------------------


class APFLParams(Params):
    # The paper runs fixed alpha in {0.25, 0.5, 0.75} as well as an adaptively learned alpha; this component
    # keeps alpha fixed.
    alpha: float = Field(
        default=0.25, ge=0, le=1, description="mixing weight of the personal model v in alpha*v + (1-alpha)*w"
    )


class APFL(_PersonalObjective):
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

    def train(self, ctx):
        hook, model = self.call, ctx.model
        model.train()
        hook("setup", ctx, ctx)
        opt_w = ctx.make_optimizer(model.parameters())
        opt_v = ctx.make_optimizer(list(self._v.values()))
        total, steps = 0.0, 0
        for _ in range(ctx.epochs):
            for x, y in ctx.batches():
                opt_w.zero_grad(set_to_none=True)
                opt_v.zero_grad(set_to_none=True)
                loss_w = hook("loss", ctx, model, x, y, ctx)
                loss_v = hook("mixed_loss", ctx, model, x, y, ctx)
                for method, loss in (("loss", loss_w), ("mixed_loss", loss_v)):
                    if not math.isfinite(float(loss.detach())):
                        raise ComponentFailure(
                            self,
                            method,
                            ctx.round,
                            ctx.client_id,
                            NonFiniteLoss(f"loss is {float(loss)} at step {steps}"),
                        )
                (loss_w + loss_v).backward()  # w's gradient comes from loss_w only (w is detached in the mix)
                opt_w.step()
                opt_v.step()
                total += float(loss_w.detach())
                steps += 1
        payload = hook("finish", ctx, ctx) or {}
        return TrainOutput(loss=total / max(steps, 1), steps=steps, payload=payload)

    def finish(self, ctx):
        ctx.state["personal"] = clone_state(self._v)
        self._v = None
        return {}

    def eval_model(self, ctx):
        return self.model_from(
            ctx, mix_states(ctx.state["personal"], ctx.model.state_dict(), self.params.alpha)
        )


# --- local only ---------------------------------------------------------------------------------------------


class LocalOnly(_PersonalObjective):
    """Local training only (no federation): each client trains its own model; the lower reference. The
    server's average of these models is meaningless.

    No paper: the standard "Local" baseline of personalised-FL comparisons. ``setup`` loads the client's own
    weights from ``ctx.state["weights"]`` (at its first participation it keeps the weights it received);
    training is cross-entropy; ``finish`` stores the trained weights. The runtime still sends them and the
    server still averages them: that global model is meaningless for this method (ignore global metrics).
    With partial participation, a client first selected after round 1 starts from that average, not from
    the initial weights.
    """

    name = "local_only"

    def setup(self, ctx):
        if "weights" in ctx.state:
            ctx.model.load_state_dict(ctx.state["weights"])

    def finish(self, ctx):
        ctx.state["weights"] = clone_state(ctx.model.state_dict())
        return {}


PERSONALIZED_OBJECTIVES = [Ditto, FedPer, FedRep, FedBABU, APFL, LocalOnly]

__all__ = ["Ditto", "FedPer", "FedRep", "FedBABU", "APFL", "LocalOnly", "PERSONALIZED_OBJECTIVES"]
