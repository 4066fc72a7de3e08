"""Local training only (no federation): each client trains its own model, the lower reference of
personalised-FL comparisons."""

from __future__ import annotations

from fedreg.components import clone_state
from fedreg_baselines._personal import PersonalObjective


class LocalOnly(PersonalObjective):
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
