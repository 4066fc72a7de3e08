"""Ditto (Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through Personalization",
ICML 2021): a global copy trained with cross-entropy and a personal model with a proximal term (its loss,
``proximal_loss``, is in :mod:`fedreg_baselines.losses`, shared with FedProx)."""

from __future__ import annotations

from pydantic import Field

from fedreg.components import Params, clone_state
from fedreg_baselines._personal import PersonalObjective
from fedreg_baselines.losses import proximal_loss


class DittoParams(Params):
    # The paper selects lambda per dataset from a small grid (Li et al. 2021, Sec. 5 and App.); 0.1 lies
    # inside it and is the usual default of reimplementations. lambda = 0 makes v plain local training
    # continued across rounds; a large lambda pulls v onto the received global model.
    lam: float = Field(
        default=0.1, ge=0, description="lambda: weight of lam/2 ||v - w_global||^2 on the personal model v"
    )


class Ditto(PersonalObjective):
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
        # a client that never trained (end-of-run evaluation) would start v from the weights it receives
        return self.model_from(ctx, ctx.state.get("personal", ctx.global_state))
