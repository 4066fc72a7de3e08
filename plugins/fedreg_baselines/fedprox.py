"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020): cross-entropy plus a
proximal term toward the received global weights (its loss, ``proximal_loss``, is in
:mod:`fedreg_baselines.losses`, shared with Ditto)."""

from __future__ import annotations

from pydantic import Field

from fedreg.components import Objective, Params
from fedreg_baselines.losses import proximal_loss


class FedProxParams(Params):
    mu: float = Field(default=0.01, ge=0, description="proximal weight (paper grid: 0.001 to 1)")


class FedProx(Objective):
    """FedProx: cross-entropy + mu/2 ||w - w_global||^2 (Li et al., "Federated Optimization in Heterogeneous
    Networks", MLSys 2020)."""

    name = "fedprox"
    api_version = 3  # its loss is a functional_loss alone (the local loop needs contract 3)
    Params = FedProxParams

    @classmethod
    def relative_cost(cls, params, spec):
        return 1.25  # the proximal term over every parameter each step (measured about 1.2x on medmnist_net)

    def functional_loss(self, forward, params, x, y, weight, fctx):  # mu = 0 is FedAvg exactly
        return proximal_loss(
            forward(params, x), y, params.items(), fctx.global_params, self.params.mu, weight
        )
