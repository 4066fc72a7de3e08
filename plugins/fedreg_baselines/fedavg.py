"""FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017) as three components."""

from __future__ import annotations

from fedreg.aggregate import weighted_average
from fedreg.components import Aggregator, Objective, Selector
from fedreg.losses import cross_entropy


class CrossEntropy(Objective):
    """Plain cross-entropy on the client's labels."""

    name = "cross_entropy"
    default = True  # used where a spec names no component of this kind
    api_version = 3  # its loss is a functional_loss alone (the local loop needs contract 3)

    def functional_loss(self, forward, params, x, y, weight, fctx):
        return cross_entropy(forward(params, x), y, weight)


class FedAvg(Aggregator):
    """Average of client weights, weighted by client sample counts."""

    name = "fedavg"
    default = True  # used where a spec names no component of this kind

    def aggregate(self, round, global_state, updates, failures):
        return weighted_average([u.state for u in updates], [u.num_samples for u in updates])


class UniformSelection(Selector):
    """k clients uniformly at random without replacement, from the run's sampling stream."""

    name = "uniform"
    default = True  # used where a spec names no component of this kind

    def select(self, round, clients, k, rng):
        return sorted(int(c) for c in rng.choice(len(clients), size=k, replace=False))
