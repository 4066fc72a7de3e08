"""FedRep (Collins, Hassani, Mokhtari and Shakkottai, "Exploiting Shared Representations for Personalized
Federated Learning", ICML 2021): a shared representation and a personal head, trained one after the other."""

from __future__ import annotations

from pydantic import Field

from fedreg.components import TrainOutput
from fedreg_baselines._personal import frozen, split_parameters
from fedreg_baselines.fedper import FedPer, FedPerParams


class FedRepParams(FedPerParams):
    # FedRep's experiments train the head for 10 local epochs and the representation for 1 (Collins et al.
    # 2021, Sec. 5; lgcollins/FedRep's --local_ep default 10 and --local_rep_ep default 1); the
    # representation's epochs are training.local_epochs.
    head_epochs: int = Field(default=10, ge=0, description="epochs of head-only training before the body")


class FedRep(FedPer):
    """FedRep: shared representation, personal head; the head is trained first (body frozen), then the body
    (Collins et al., ICML 2021).

    Collins, Hassani, Mokhtari and Shakkottai, "Exploiting Shared Representations for Personalized Federated
    Learning", ICML 2021. The client restores its stored head (the initial head at its first participation),
    trains the head alone for ``head_epochs``, then the body alone for ``ctx.epochs``, and stores the head.
    Pairs with ``fedavg_shared``: the server averages the body only (``global_model_role = "none"``). Local
    metrics evaluate the body with the client's own head. The reported train loss is the mean over both
    phases.
    """

    name = "fedrep"
    Params = FedRepParams

    def train(self, ctx):
        model = ctx.model
        model.train()
        head, body = split_parameters(model, self.layers(), "personal_layers")
        self.call("setup", ctx, ctx)
        total, steps = 0.0, 0
        for trained, fixed, epochs in ((head, body, self.params.head_epochs), (body, head, ctx.epochs)):
            with frozen(fixed):
                t, s = self.run_epochs(ctx, model, trained, epochs)
            total, steps = total + t, steps + s
        payload = self.call("finish", ctx, ctx) or {}
        return TrainOutput(loss=total / max(steps, 1), steps=steps, payload=payload)
