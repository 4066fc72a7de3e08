"""Client selection that reproduces code drawing from NumPy's legacy global generator, and a stateful
round-robin selection (an example of a selector whose state is checkpointed)."""

from __future__ import annotations

import numpy as np

from fedreg.components import Selector


def numpy_round_seeded_choice(round_index: int, num_clients: int, k: int) -> list[int]:
    """The clients that ``np.random.seed(round_index)`` followed by
    ``np.random.choice(num_clients, k, replace=False)`` draws, in the order drawn; NumPy's global generator
    is left untouched."""
    return [int(c) for c in np.random.RandomState(round_index).choice(num_clients, k, replace=False)]


class NumpySeededByRound(Selector):
    """k clients drawn as the FedKPer authors' server draws them: NumPy's legacy generator seeded with the
    0-based round index, so every seed and every method sees the same sequence of clients. The run's own
    sampling stream is not used."""

    name = "numpy_seeded_by_round"

    def select(self, round, clients, k, rng):
        return [clients[i].client_id for i in numpy_round_seeded_choice(round - 1, len(clients), k)]


class RoundRobin(Selector):
    """k clients per round in a fixed cycle over the client ids (0, 1, ..., then around again): every client
    takes part equally often. Where the cycle stands is the selector's state: it is checkpointed, and a
    resumed run continues the cycle. The run's sampling stream is not used."""

    name = "round_robin"

    def __init__(self, params=None):
        super().__init__(params)
        self.next = 0  # the id of the next client in the cycle

    def select(self, round, clients, k, rng):
        n = len(clients)
        chosen = [clients[(self.next + i) % n].client_id for i in range(k)]
        self.next = (self.next + k) % n
        return chosen

    def state_dict(self):
        return {"next": self.next}

    def load_state_dict(self, state):
        self.next = int(state.get("next", 0))


class SizeProportional(Selector):
    """k distinct clients drawn with probabilities proportional to their training samples, from the run's
    sampling stream: how Ditto's authors sample (litian96/ditto ``fedbase.select_clients``, ``sampling 2``),
    to be paired with a uniform average (``weighting: uniform``) for their exact scheme."""

    name = "size_proportional"

    def select(self, round, clients, k, rng):
        sizes = np.array([max(c.num_train, 0) for c in clients], dtype=np.float64)
        if sizes.sum() <= 0:
            sizes = np.ones(len(clients))
        chosen = rng.choice(len(clients), size=k, replace=False, p=sizes / sizes.sum())
        return sorted(clients[int(i)].client_id for i in chosen)
