"""Ditto (Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through Personalization",
ICML 2021): a global copy trained with cross-entropy and a personal model with a proximal term (its loss,
``proximal_loss``, is in :mod:`fedreg_baselines.losses`, shared with FedProx)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedreg.components import Params, clone_state
from fedreg_baselines._personal import PersonalObjective
from fedreg_baselines.losses import proximal_loss


class DittoParams(Params):
    # The authors' scripts (litian96/ditto run.sh, run_fashion_*_ditto_lam1.sh, run_vehicle_*_ditto_lam1.sh)
    # run lambda 1; main.py's --lam default 0 is plain local training. lambda = 0 makes v local training
    # continued across rounds; a large lambda pulls v onto the received global model.
    lam: float = Field(
        default=1.0, ge=0, description="lambda: weight of lam/2 ||v - w_global||^2 on the personal model v"
    )
    # litian96/ditto flearn/trainers_MTL/fedbase.py: every client's personal model is a copy of the
    # initial model, kept across rounds (never reset to the received global).
    personal_init: Literal["initial", "received"] = Field(
        default="initial",
        description="where a client's personal model starts at its first participation: the run's initial "
        "weights (the authors' code) or the global weights it receives then",
    )


class Ditto(PersonalObjective):
    """Ditto: a global copy trained with cross-entropy (sent) and a personal model pulled toward the received
    global weights (Li et al., ICML 2021).

    Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through Personalization", ICML 2021.
    Each round the client trains the received global weights w with cross-entropy for ``ctx.epochs`` (this is
    what the server averages, so Ditto's global model is FedAvg's), then its personal model v (kept in
    ``ctx.state["personal"]``; at first participation the run's initial weights, as in the authors' code, or
    the received ones with ``personal_init: received``) for ``ctx.epochs`` on CE(v) + lam/2
    ||v - w_received||^2. Local metrics evaluate v. The reported train loss is the global copy's.
    """

    name = "ditto"
    Params = DittoParams

    @classmethod
    def relative_cost(cls, params, spec):
        return 2.0  # the personal model trains as many epochs as the global one

    def personal_start(self, ctx):
        """The client's personal weights: stored, else where the run says personal models start."""
        if "personal" in ctx.state:
            return ctx.state["personal"]
        return ctx.initial_state() if self.params.personal_init == "initial" else ctx.global_state

    def train(self, ctx):
        out = super().train(ctx)  # the global copy: the base loop, cross-entropy
        v = ctx.build_model()
        v.load_state_dict(self.personal_start(ctx))
        self.run_epochs(ctx, v, v.parameters(), ctx.epochs, "personal_loss")
        ctx.state["personal"] = clone_state(v.state_dict())
        return out

    def personal_loss(self, model, x, y, ctx):
        return proximal_loss(model(x), y, model.named_parameters(), ctx.global_state, self.params.lam)

    def eval_model(self, ctx):
        # a client that never trained (end-of-run evaluation): the personal model it would start from
        return self.model_from(ctx, self.personal_start(ctx))
