"""Local training only (no federation): each client trains its own model from the initial weights, the lower
reference of personalised-FL comparisons."""

from __future__ import annotations

from fedreg.components import clone_state
from fedreg_baselines._personal import KeptLayers


class LocalOnly(KeptLayers):
    """Local training only (no federation): each client trains its own model from the initial weights; the
    lower reference.

    No paper: the standard "Local" baseline of personalised-FL comparisons. Pairs with ``fedavg_shared``,
    to which the client names every entry as kept, so the global weights stay the initial ones: a client
    first selected in any round starts from the initial weights. ``setup`` loads the client's own weights
    from ``ctx.state["weights"]`` when it has them; training is cross-entropy; ``finish`` stores the trained
    weights. The global model is the initial model (``global_model_role = "none"``).
    """

    name = "local_only"
    global_model_role = "none"

    def setup(self, ctx):
        if "weights" in ctx.state:
            ctx.model.load_state_dict(ctx.state["weights"])

    def kept_keys(self, ctx):
        return list(ctx.model.state_dict())

    def finish(self, ctx):
        ctx.state["weights"] = clone_state(ctx.model.state_dict())
        return super().finish(ctx)

    def eval_model(self, ctx):
        self.setup(ctx)  # after training a no-op; at the end of the run: the client's own weights
        return ctx.model
