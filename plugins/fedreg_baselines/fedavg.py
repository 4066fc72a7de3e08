"""FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017) as three components."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedreg.aggregate import client_weights, weighted_average
from fedreg.components import Aggregator, Objective, Params, Selector
from fedreg.losses import cross_entropy


class CrossEntropy(Objective):
    """Plain cross-entropy on the client's labels."""

    name = "cross_entropy"
    default = True  # used where a spec names no component of this kind
    api_version = 3  # its loss is a functional_loss alone (the local loop needs contract 3)

    def functional_loss(self, forward, params, x, y, weight, fctx):
        return cross_entropy(forward(params, x), y, weight)


def weighting_field(default: str):
    return Field(
        default=default,
        description="how the round's client updates are weighted: 'samples' (each client's number of "
        "training samples, FedAvg's n_k) or 'uniform' (the plain mean over the round's clients)",
    )


class WeightingParams(Params):
    """The ``weighting`` parameter of the averaging aggregators (default: by samples, as FedAvg)."""

    weighting: Literal["samples", "uniform"] = weighting_field("samples")


class UniformWeightingParams(WeightingParams):
    """``weighting`` defaulting to the plain mean, for the methods whose official code averages uniformly."""

    weighting: Literal["samples", "uniform"] = weighting_field("uniform")


def averaging_weights(params: WeightingParams, updates) -> list[float]:
    """The weights of ``updates`` under the aggregator's ``weighting``."""
    return client_weights([u.num_samples for u in updates], params.weighting)


class FedAvg(Aggregator):
    """Average of client weights, weighted by client sample counts (``weighting: uniform``: plain mean)."""

    name = "fedavg"
    default = True  # used where a spec names no component of this kind
    Params = WeightingParams

    def aggregate(self, round, global_state, updates, failures):
        return weighted_average([u.state for u in updates], averaging_weights(self.params, updates))


class UniformSelection(Selector):
    """k clients uniformly at random without replacement, from the run's sampling stream."""

    name = "uniform"
    default = True  # used where a spec names no component of this kind

    def select(self, round, clients, k, rng):
        return sorted(int(c) for c in rng.choice(len(clients), size=k, replace=False))
