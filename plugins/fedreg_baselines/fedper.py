"""FedPer (Arivazhagan, Aggarwal, Singh and Choudhary, "Federated Learning with Personalization Layers",
arXiv 1912.00818, 2019): shared base layers, a personal head kept by each client."""

from __future__ import annotations

from pydantic import Field

from fedreg.components import Params
from fedreg_baselines._personal import (
    KeptLayers,
    frozen,
    layers_field,
    restore_layers,
    split_parameters,
)
from fedreg_baselines.personal_math import select_state


class FedPerParams(Params):
    personal_layers: list[str] = layers_field(
        "module-name prefixes of the personal layers (a key k matches p when k == p or k starts with 'p.'); "
        "'fc' is the classifier of the 'cnn' model"
    )
    # lgcollins/FedRep main_fedrep.py (for --alg fedrep and fedper alike) ends with a round in which every
    # client trains its head alone on the final representation for max(10, local_ep - local_rep_ep) epochs,
    # and scores that head (LocalUpdate.train with last=True): 10 epochs at the protocol's 5 local epochs.
    final_head_epochs: int = Field(
        default=10,
        ge=0,
        description="end of the run: epochs each client trains its head alone on the final body before its "
        "end-of-run score (0: score the head as last trained)",
    )


class FedPer(KeptLayers):
    """FedPer: shared base layers, personal head layers kept by each client (Arivazhagan et al., 2019).

    Arivazhagan, Aggarwal, Singh and Choudhary, "Federated Learning with Personalization Layers", arXiv
    1912.00818, 2019; as lgcollins/FedRep runs it (``--alg fedper``). ``setup`` loads the client's stored
    head (``ctx.state["head"]``) over the received weights (at its first participation the client keeps
    the received head, the initial one); the whole model trains with cross-entropy; ``finish`` stores the
    trained head. Pairs with ``fedavg_shared``: the server averages the body only, so the global head stays
    at its initialisation and the global model is not a model of this method (``global_model_role =
    "none"``). Local metrics evaluate the trained body with the client's own head; at the end of the run
    every client first trains its head alone on the final body for ``final_head_epochs`` (the FedRep code's
    last round), then is scored.
    """

    name = "fedper"
    Params = FedPerParams
    global_model_role = "none"

    def layers(self) -> list[str]:
        return self.params.personal_layers

    def setup(self, ctx):
        split_parameters(ctx.model, self.layers(), "personal_layers")
        self.restore_head(ctx)

    def restore_head(self, ctx) -> None:
        if "head" in ctx.state:
            restore_layers(ctx.model, ctx.state["head"])

    def kept_keys(self, ctx):
        return list(select_state(ctx.model.state_dict(), self.layers()))

    def finish(self, ctx):
        ctx.state["head"] = select_state(ctx.model.state_dict(), self.layers())
        return super().finish(ctx)

    def eval_model(self, ctx):
        self.restore_head(ctx)  # after training a no-op; at the end of the run: the final body, own head
        if ctx.final and self.params.final_head_epochs:
            head, body = split_parameters(ctx.model, self.layers(), "personal_layers")
            with frozen(body):
                self.run_epochs(ctx, ctx.model, head, self.params.final_head_epochs)
        return ctx.model
