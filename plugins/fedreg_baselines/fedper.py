"""FedPer (Arivazhagan, Aggarwal, Singh and Choudhary, "Federated Learning with Personalization Layers",
arXiv 1912.00818, 2019): shared base layers, a personal head kept by each client."""

from __future__ import annotations

from fedreg.components import Params
from fedreg_baselines._personal import PersonalObjective, layers_field, restore_layers, split_parameters
from fedreg_baselines.personal_math import select_state


class FedPerParams(Params):
    personal_layers: list[str] = layers_field(
        "module-name prefixes of the personal layers (a key k matches p when k == p or k starts with 'p.'); "
        "'fc' is the classifier of the 'cnn' model"
    )


class FedPer(PersonalObjective):
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
